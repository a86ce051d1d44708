"""MA-CLIP's options, defined once and checked without torch: names, defaults, accepted values.

:class:`~pyiqa_maclip.arch.MACLIP` takes its defaults from :data:`OPTION_DEFAULTS` and checks
each value with the functions here; the command line calls :func:`check_options` on the same
table before it loads torch, so a mistaken name or value costs a fraction of a second.
Numbers, counts and flags may be given as text (``'0.3'``, ``'256'``, ``'True'``), as pyiqa's
scripts pass them; every rejection is a :class:`~pyiqa_maclip.errors.UserError` naming the value
and the form expected.
"""
from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

from .errors import UserError
from .names import PRECISIONS

__all__ = ['DEFAULT_PROMPTS', 'OPTION_DEFAULTS', 'OPTION_RANGES', 'PYIQA_WRAPPER_OPTIONS', 'real_option',
           'count_option', 'flag_option', 'prompt_pairs', 'parse_precision', 'model_type_option', 'unknown_option',
           'check_options']

#: The five antonym prompt pairs of the official code, positive first.
DEFAULT_PROMPTS: tuple[tuple[str, str], ...] = (
    ('Good image', 'bad image'),
    ('Sharp image', 'blurry image'),
    ('sharp edges', 'blurry edges'),
    ('High resolution image', 'low resolution image'),
    ('Noise-free image', 'noisy image'),
)

#: Every option of ``MACLIP(...)`` (and of ``create_metric('maclip', ...)``) with its default.
OPTION_DEFAULTS: dict[str, object] = {
    'backbone': 'RN50',
    'prompts': DEFAULT_PROMPTS,
    'box_lam': 0.5,
    'base_cos': 1.0,
    'base_norm': 0.6,
    'alpha': 1.0,
    'patch_size': 224,
    'stride': 128,
    'pos_embedding': False,
    'chunk_size': 16,
    'half': False,
    'precision': 'fp32',
    'model_type': 'maclip',
}

#: Accepted ranges of the real-valued options. Within them every score of a finite image is
#: finite in float32: Box-Cox of |f| / std(|f|) (at most about sqrt(D)) stays below 1e30 for
#: |box_lam| <= 10, and the fusion logits stay far from float32's 3.4e38.
OPTION_RANGES = {
    'box_lam': (-10.0, 10.0),
    'base_cos': (-1e6, 1e6),
    'base_norm': (-1e6, 1e6),
    'alpha': (-1e6, 1e6),
}

#: Options pyiqa's ``create_metric`` takes for every metric besides its arch's (the keyword
#: parameters of ``pyiqa.models.inference_model.InferenceModel`` 0.1.16; a test compares them).
PYIQA_WRAPPER_OPTIONS = ('as_loss', 'loss_weight', 'loss_reduction', 'seed', 'check_input_range')


def _from_text(value, parse):
    """``parse(value)`` for text (pyiqa's scripts pass option values as text), else ``value``; None if unparseable."""
    if not isinstance(value, str):
        return value
    try:
        return parse(value.strip())
    except ValueError:
        return None


def real_option(name: str, value) -> float:
    """A real number (or its text) within :data:`OPTION_RANGES`."""
    low, high = OPTION_RANGES[name]
    number = _from_text(value, float)
    if (isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number)
            or not low <= number <= high):
        raise UserError(f'{name} must be a real number in [{low:g}, {high:g}], got {value!r}')
    return float(number)


def count_option(name: str, value, minimum: int = 1) -> int:
    """An integer (or its text, e.g. ``'256'``) of at least ``minimum``."""
    number = _from_text(value, int)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < minimum:
        raise UserError(f'{name} must be {"a positive integer" if minimum == 1 else f"an integer >= {minimum}"}, '
                        f'got {value!r}')
    return int(number)


def flag_option(name: str, value) -> bool:
    """``True``/``False`` (or the text ``'True'``/``'False'``, any case)."""
    flag = {'true': True, 'false': False}.get(value.strip().lower()) if isinstance(value, str) else value
    if not isinstance(flag, bool):
        raise UserError(f'{name} must be True or False, got {value!r}')
    return flag


def prompt_pairs(prompts) -> tuple[tuple[str, str], ...]:
    """Accept ``[(good, bad), ...]`` or the official flat ``[good, bad, good, bad, ...]``."""
    expected = ("prompts must be a non-empty sequence of (positive, negative) string pairs, "
                "e.g. [('Good image', 'bad image')]")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise UserError(f'{expected}; got {prompts!r}')
    if all(isinstance(p, str) for p in prompts):
        if len(prompts) % 2:
            raise UserError(f'{expected}; a flat list needs an even number of prompts, got {len(prompts)}')
        prompts = list(zip(prompts[0::2], prompts[1::2]))
    pairs = []
    for pair in prompts:
        if (isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2
                or not all(isinstance(p, str) and p.strip() for p in pair)):
            raise UserError(f'{expected}; got the item {pair!r}')
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def parse_precision(precision, half: bool = False) -> str:
    """The ``precision`` option, with ``half=True`` as the released alias of ``'fp16'``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if half and precision not in ('fp32', 'fp16'):
        raise UserError(f"half=True means precision='fp16' and contradicts precision={precision!r}; "
                        f"pass precision={precision!r} alone")
    return 'fp16' if half else precision


def model_type_option(value) -> str:
    """Accepted for pyiqa's own ``maclip`` entry of ``DEFAULT_CONFIGS``; only ``'maclip'`` is valid."""
    if value != 'maclip':
        raise UserError(f"model_type must be 'maclip' (the only MA-CLIP variant), got {value!r}")
    return value


def unknown_option(owner: str, name: str, accepted: Sequence[str]) -> str:
    """"``owner`` has no option ``name``", with a guess if one is alike, then ``accepted`` from the likest."""
    def likeness(candidate: str) -> float:
        return difflib.SequenceMatcher(None, name.lower(), candidate.lower()).ratio()
    ranked = sorted(accepted, key=lambda candidate: (-likeness(candidate), candidate))
    guess = f' (did you mean {ranked[0]}?)' if ranked and likeness(ranked[0]) >= 0.6 else ''
    return f'{owner} has no option {name!r}{guess}; its options: {", ".join(ranked)}'


def _by_name() -> dict[str, Callable]:
    """Each option's check (backbone: the caller's, see :func:`pyiqa_maclip.weights.check_backbone`)."""
    checks: dict[str, Callable] = {name: (lambda value, name=name: real_option(name, value)) for name in OPTION_RANGES}
    checks.update({name: (lambda value, name=name: count_option(name, value))
                   for name in ('patch_size', 'stride', 'chunk_size')})
    checks.update({name: (lambda value, name=name: flag_option(name, value)) for name in ('pos_embedding', 'half')})
    checks.update(prompts=prompt_pairs, model_type=model_type_option, backbone=lambda value: value,
                  precision=lambda value: value)  # precision: checked with half, below
    return checks


def check_options(options: Mapping[str, object], extra: Sequence[str] = PYIQA_WRAPPER_OPTIONS) -> dict:
    """``options`` of MA-CLIP checked, values as ``MACLIP`` holds them; ``extra`` names are passed through.

    An unknown name is refused with the accepted names, closest first.
    """
    checks = _by_name()
    checked = {}
    for name, value in options.items():
        if name in extra:
            checked[name] = value
            continue
        if name not in checks:
            raise UserError(unknown_option('MA-CLIP', name, [*checks, *extra]))
        checked[name] = checks[name](value)
    if 'precision' in checked or 'half' in checked:
        precision = parse_precision(checked.get('precision', OPTION_DEFAULTS['precision']), checked.get('half', False))
        if 'precision' in checked:
            checked['precision'] = precision
    return checked
