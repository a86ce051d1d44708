"""The benchmark's YAML configuration: datasets, metrics and their validation.

A configuration names datasets (a folder plus a MOS table, or a pyiqa dataset read
with pyiqa's own configuration under a data root) and metrics (any pyiqa metric
with ``create_metric`` options, or a named variant of another via ``base:``).
:func:`load_config` checks its structure and every name without touching the data
or building a metric; every problem is a :class:`BenchmarkConfigError` that names
the key and the form expected.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = [
    'BenchmarkConfigError',
    'COMPONENTS',
    'RESIZE_MODES',
    'PAPER_PREPROCESSING',
    'DEFAULT_DATA_ROOT',
    'DatasetSpec',
    'MetricSpec',
    'BenchmarkConfig',
    'parse_config',
    'load_config',
    'file_stem',
]

DEFAULT_DATA_ROOT = './datasets'  # pyiqa's own default
TOP_LEVEL_KEYS = ('datasets', 'metrics', 'data_root')
#: What a MA-CLIP metric can hand to the benchmark as its prediction.
COMPONENTS = ('score', 'q_sim', 'q_mag')
RESIZE_MODES = ('bicubic', 'bilinear', 'lanczos', 'nearest', 'box', 'hamming')
_COMMON_DATASET_KEYS = ('mos_lower_better', 'resize', 'resize_mode')
CUSTOM_DATASET_KEYS = ('images', 'mos', 'image_column', 'mos_column', *_COMMON_DATASET_KEYS)
PYIQA_DATASET_KEYS = ('pyiqa', 'root', *_COMMON_DATASET_KEYS)
RESERVED_METRIC_KEYS = ('base', 'component')
_MACLIP_ARCH = 'MACLIP'

#: The official MA-CLIP preprocessing, applied to datasets of these names unless the
#: configuration sets the key itself: SPAQ and AGIQA-1k resized (aspect ignored),
#: KonIQ-10k read from its 1024x768 release (pyiqa's ``koniq10k-1024`` entry).
PAPER_PREPROCESSING: dict[str, dict] = {
    'spaq': {'resize': [448, 448], 'resize_mode': 'bicubic'},
    'agiqa1k': {'resize': [224, 224], 'resize_mode': 'bicubic'},
    'koniq10k': {'pyiqa': 'koniq10k-1024'},
}


class BenchmarkConfigError(ValueError):
    """The benchmark configuration (or the data it points to) is not usable."""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: either ``custom`` (images folder + MOS table) or a ``pyiqa`` dataset."""

    name: str
    kind: str  # 'custom' or 'pyiqa'
    mos_lower_better: bool = False
    resize: tuple[int, int] | None = None  # (H, W)
    resize_mode: str = 'bicubic'
    images: str | None = None
    mos: str | None = None
    image_column: str = 'image'
    mos_column: str = 'mos'
    pyiqa: str | None = None  # the entry of pyiqa's default_dataset_configs.yml
    root: str | None = None  # replaces './datasets' in that entry's paths

    def fingerprint(self) -> dict:
        """Everything that can change the pair's numbers, JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if k != 'name'}


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``create_metric(pyiqa_name, **options)``, predicting ``component``."""

    name: str
    pyiqa_name: str
    options: dict = field(default_factory=dict)
    component: str = 'score'
    lower_better: bool = False

    def build_key(self) -> str:
        """Metrics with equal keys build the same model: one scoring pass serves them all."""
        return json.dumps([self.pyiqa_name, self.options], sort_keys=True, default=str)

    def fingerprint(self) -> dict:
        return {'pyiqa_name': self.pyiqa_name, 'options': self.options, 'component': self.component}


@dataclass(frozen=True)
class BenchmarkConfig:
    datasets: tuple[DatasetSpec, ...]
    metrics: tuple[MetricSpec, ...]
    data_root: str = DEFAULT_DATA_ROOT


def file_stem(name: str) -> str:
    """A file-name-safe form of a metric or dataset name."""
    return re.sub(r'[^A-Za-z0-9._+-]', '_', name)


def _mapping(value, where: str, form: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BenchmarkConfigError(f'{where} must be a mapping ({form}), got {value!r}')
    return dict(value)


def _unknown_keys(entry: Mapping, allowed, where: str, hint: str = '') -> None:
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise BenchmarkConfigError(
            f'{where}: unknown key {unknown[0]!r}; expected keys: {", ".join(allowed)}{hint}'
        )


def _string(value, where: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise BenchmarkConfigError(f'{where} must be a non-empty string (a name or a path), got {value!r}')
    return str(value)


def _boolean(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise BenchmarkConfigError(f'{where} must be true or false, got {value!r}')
    return value


def _resize(value, where: str) -> tuple[int, int] | None:
    """``[H, W]``, a single side N for N x N, or null/'native' for no resizing."""
    if value is None or value == 'native':
        return None
    sides = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(sides, (list, tuple)) or len(sides) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides)):
        raise BenchmarkConfigError(
            f'{where} must be [height, width] in pixels (positive integers), one side N for N x N, '
            f'or null for the native size; got {value!r}'
        )
    return int(sides[0]), int(sides[1])


def _pyiqa_datasets() -> dict:
    from pyiqa.api_helpers import get_dataset_info

    return get_dataset_info()


def _dataset(name: str, entry, data_root: str) -> DatasetSpec:
    where = f'datasets.{name}'
    entry = _mapping(entry, where, 'e.g. {images: DIR, mos: FILE.csv} or {} for a pyiqa dataset')
    custom = 'images' in entry or 'mos' in entry
    allowed = CUSTOM_DATASET_KEYS if custom else PYIQA_DATASET_KEYS
    defaults = {k: v for k, v in PAPER_PREPROCESSING.get(name, {}).items() if k in allowed}
    hint = '' if custom else ' (a custom dataset needs both images: and mos:)'
    _unknown_keys(entry, allowed, where, hint)
    entry = {**defaults, **entry}
    mode = entry.get('resize_mode', 'bicubic')
    if mode not in RESIZE_MODES:
        raise BenchmarkConfigError(f'{where}.resize_mode must be one of {", ".join(RESIZE_MODES)}, got {mode!r}')
    common = {'resize': _resize(entry.get('resize'), f'{where}.resize'), 'resize_mode': mode}
    if custom:
        for key in ('images', 'mos'):
            if key not in entry:
                raise BenchmarkConfigError(
                    f'{where}: a custom dataset needs both images: (the image folder) and mos: '
                    f'(a CSV with columns image,mos); {key}: is missing'
                )
        return DatasetSpec(
            name, 'custom',
            mos_lower_better=_boolean(entry.get('mos_lower_better', False), f'{where}.mos_lower_better'),
            images=_string(entry['images'], f'{where}.images'), mos=_string(entry['mos'], f'{where}.mos'),
            image_column=_string(entry.get('image_column', 'image'), f'{where}.image_column'),
            mos_column=_string(entry.get('mos_column', 'mos'), f'{where}.mos_column'), **common,
        )
    known = _pyiqa_datasets()
    pyiqa_name = _string(entry.get('pyiqa', name), f'{where}.pyiqa')
    if pyiqa_name not in known:
        raise BenchmarkConfigError(
            f'{where}: {pyiqa_name!r} is not a pyiqa dataset (one of {", ".join(known)}); '
            'a custom dataset needs images: (the image folder) and mos: (a CSV with columns image,mos)'
        )
    lower_better = bool(known[pyiqa_name].get('lower_better', False))
    return DatasetSpec(
        name, 'pyiqa',
        mos_lower_better=_boolean(entry.get('mos_lower_better', lower_better), f'{where}.mos_lower_better'),
        pyiqa=pyiqa_name, root=_string(entry.get('root', data_root), f'{where}.root'), **common,
    )


def _resolve_base(name: str, table: Mapping[str, dict], chain: tuple[str, ...] = ()) -> tuple[str, dict]:
    """(pyiqa metric name, merged options) of ``name``, following ``base:`` through the table."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    if name in chain:
        raise BenchmarkConfigError(f'metrics.{chain[0]}.base: the base: chain loops: {" -> ".join((*chain, name))}')
    own = dict(table[name])
    base = own.pop('base', None)
    if base is None:
        if name not in DEFAULT_CONFIGS:
            raise BenchmarkConfigError(
                f'metrics.{name}: {name!r} is not a pyiqa metric (see pyiqa.list_models()); '
                f'name a pyiqa metric, or make a variant with base: <pyiqa metric or another metric here>'
            )
        return name, own
    if not isinstance(base, str):
        raise BenchmarkConfigError(f'metrics.{name}.base must be a metric name (a string), got {base!r}')
    if base in table and base != name:
        pyiqa_name, inherited = _resolve_base(base, table, (*chain, name))
        return pyiqa_name, {**inherited, **own}
    if base in DEFAULT_CONFIGS:
        return base, own
    raise BenchmarkConfigError(
        f'metrics.{name}.base: {base!r} is neither a metric of this configuration nor a pyiqa metric'
    )


def _accepted_options(pyiqa_name: str) -> set[str] | None:
    """Keyword options ``create_metric`` accepts for this metric; None if it cannot tell."""
    import torch
    import pyiqa.archs
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.models.inference_model import InferenceModel
    from pyiqa.utils.registry import ARCH_REGISTRY

    arch = DEFAULT_CONFIGS[pyiqa_name]['metric_opts']['type']
    lazy_import = getattr(pyiqa.archs, '_lazy_import_arch', None)  # private in pyiqa 0.1.16
    if arch not in ARCH_REGISTRY and lazy_import is not None:
        lazy_import(arch)
    if arch not in ARCH_REGISTRY:
        return None
    cls = ARCH_REGISTRY.get(arch)
    wrapper = set(inspect.signature(InferenceModel).parameters) - {'metric_name', 'device', 'kwargs'}
    if cls.__init__ is torch.nn.Module.__init__:
        return wrapper
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return wrapper | {p.name for p in parameters if p.kind is not p.VAR_POSITIONAL}


def _metric(name: str, table: Mapping[str, dict]) -> MetricSpec:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    where = f'metrics.{name}'
    pyiqa_name, options = _resolve_base(name, table)
    component = options.pop('component', 'score')
    is_maclip = DEFAULT_CONFIGS[pyiqa_name]['metric_opts'].get('type') == _MACLIP_ARCH
    if component not in COMPONENTS:
        raise BenchmarkConfigError(f'{where}.component must be one of {", ".join(COMPONENTS)}, got {component!r}')
    if component != 'score' and not is_maclip:
        raise BenchmarkConfigError(
            f'{where}.component: only MA-CLIP metrics have components (q_sim, q_mag); {pyiqa_name!r} is not one'
        )
    accepted = _accepted_options(pyiqa_name)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise BenchmarkConfigError(
                f'{where}: {pyiqa_name!r} has no option {unknown[0]!r}; its options: '
                f'{", ".join(sorted(accepted))}; benchmark keys: {", ".join(RESERVED_METRIC_KEYS)}'
            )
    for key, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise BenchmarkConfigError(f'{where}.{key} must be finite, got {value!r}')
    lower_better = bool(DEFAULT_CONFIGS[pyiqa_name].get('lower_better', False)) and component == 'score'
    return MetricSpec(name, pyiqa_name, options, component, lower_better)


def _check_unique_stems(names, where: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        stem = file_stem(name)
        if stem in seen:
            raise BenchmarkConfigError(
                f'{where}: {seen[stem]!r} and {name!r} map to the same file name {stem!r}; rename one'
            )
        seen[stem] = name


def parse_config(raw, data_root: str | os.PathLike | None = None) -> BenchmarkConfig:
    """Validate a configuration (the parsed YAML); ``data_root`` overrides its ``data_root:``."""
    import pyiqa_maclip  # noqa: F401  registers 'maclip' in pyiqa's DEFAULT_CONFIGS

    raw = _mapping(raw, 'the configuration', 'with keys datasets: and metrics:')
    _unknown_keys(raw, TOP_LEVEL_KEYS, 'the configuration')
    root = _string(data_root if data_root is not None else raw.get('data_root', DEFAULT_DATA_ROOT), 'data_root')
    sections = {}
    for key, form in (('datasets', 'name: {images: DIR, mos: FILE.csv} or name: {} for a pyiqa dataset'),
                      ('metrics', 'name: {create_metric options}, e.g. maclip: {backbone: RN50}')):
        section = _mapping(raw.get(key), key, form)
        if not section:
            raise BenchmarkConfigError(f'{key}: needs at least one entry ({form})')
        for name in section:
            if not isinstance(name, str) or not name:
                raise BenchmarkConfigError(f'{key}: names must be non-empty strings, got {name!r}')
        _check_unique_stems(section, key)
        sections[key] = section
    table = {name: _mapping(entry, f'metrics.{name}', 'create_metric options, base: or component:')
             for name, entry in sections['metrics'].items()}
    return BenchmarkConfig(
        datasets=tuple(_dataset(name, entry, root) for name, entry in sections['datasets'].items()),
        metrics=tuple(_metric(name, table) for name in table),
        data_root=root,
    )


def load_config(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> BenchmarkConfig:
    """Read and validate a YAML configuration file."""
    try:
        text = Path(path).read_text(encoding='utf-8')
    except OSError as error:
        raise BenchmarkConfigError(f'cannot read the configuration {str(path)!r}: {error}') from error
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise BenchmarkConfigError(f'{path} is not valid YAML: {error}') from error
    return parse_config(raw, data_root)
