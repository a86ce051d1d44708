"""What :class:`~pyiqa_maclip.arch.MACLIP` accepts: its options and its images, checked before any work.

Every rejection is a :class:`~pyiqa_maclip.errors.UserError` (a ``ValueError``, or
``TypeError`` for a wrong type) naming the value and the form expected. Options may be given
as text where pyiqa's own scripts pass them so (``--extra_metric_opts box_lam=0.3``).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from .errors import UserError, UserTypeError

__all__ = ['OPTION_RANGES', 'RANGE_TOLERANCE', 'real_option', 'count_option', 'flag_option', 'prompt_pairs',
           'check_images']

#: Accepted ranges of the real-valued options. Within them every score of a finite image is
#: finite in float32: Box-Cox of |f| / std(|f|) (at most about sqrt(D)) stays below 1e30 for
#: |box_lam| <= 10, and the fusion logits stay far from float32's 3.4e38.
OPTION_RANGES = {
    'box_lam': (-10.0, 10.0),
    'base_cos': (-1e6, 1e6),
    'base_norm': (-1e6, 1e6),
    'alpha': (-1e6, 1e6),
}

#: How far image values may lie outside [0, 1] (rounding of earlier processing) and still
#: be scored as they are. Farther out is another convention (0..255, [-1, 1], CLIP-normalised).
RANGE_TOLERANCE = 1e-3


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


def check_images(x, allow_uint8: bool = False) -> None:
    """Raise unless ``x`` is a real (B, 1|3, H, W) tensor of finite values in [0, 1] (or, with
    ``allow_uint8``, of 8-bit values 0..255).

    Values may exceed [0, 1] by :data:`RANGE_TOLERANCE`. A tensor that requires grad (the
    input of a loss, which optimisation may push out of range) is only checked for
    finiteness: pyiqa turns its own range check off for losses too.
    """
    expected = 'expected a float tensor of shape (B, C, H, W) with C = 1 or 3 and values in [0, 1]'
    if not isinstance(x, torch.Tensor):
        raise UserTypeError(f'images must be a torch.Tensor, got {type(x).__name__}; {expected}')
    eight_bit = allow_uint8 and x.dtype == torch.uint8
    if not eight_bit and (x.dtype == torch.bool or x.is_complex() or not x.is_floating_point()):
        raise UserTypeError(f'images have dtype {x.dtype}; {expected} (convert 8-bit images with x.float() / 255)')
    if x.dim() != 4:
        hint = ' (add the batch dimension with x.unsqueeze(0))' if x.dim() == 3 else ''
        raise UserError(f'images have shape {tuple(x.shape)}, {x.dim()}-D; {expected}{hint}')
    if x.shape[1] not in (1, 3):
        raise UserError(f'images have {x.shape[1]} channels (shape {tuple(x.shape)}); {expected}')
    if x.numel() == 0:
        raise UserError(f'images tensor is empty (shape {tuple(x.shape)}); {expected} and B, H, W >= 1')
    if eight_bit:
        return
    low, high = (float(v) for v in torch.aminmax(x.detach()))  # NaN propagates; no full-size mask
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserError(f'images contain NaN or Inf values; {expected}')
    if not x.requires_grad and (low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE):
        tolerance = RANGE_TOLERANCE
        if low >= -tolerance and 1.5 < high <= 255 + tolerance:
            fix = 'for 0..255 images use x / 255'
        elif -1 - tolerance <= low < -0.5 and high <= 1 + tolerance:
            fix = 'for [-1, 1] images use (x + 1) / 2'
        elif low >= -0.5 and high <= 1.5:
            fix = 'clamp values that drifted out with x.clamp(0, 1)'
        else:
            fix = 'rescale them to [0, 1]'
        raise UserError(f'image values lie in [{low:.4g}, {high:.4g}]; {expected} ({fix})')
