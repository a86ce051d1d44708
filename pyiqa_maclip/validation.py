"""What :class:`~pyiqa_maclip.arch.MACLIP` accepts: its images (here) and its options (defined and checked,
without torch, in :mod:`.option_spec`; re-exported here), checked before any work.

Every rejection is a :class:`~pyiqa_maclip.errors.UserError` (a ``ValueError``, or
``TypeError`` for a wrong type) naming the value and the form expected. Options may be given
as text where pyiqa's own scripts pass them so (``--extra_metric_opts box_lam=0.3``).
"""
from __future__ import annotations

import math

import torch

from .errors import UserError, UserTypeError
from .option_spec import OPTION_RANGES, count_option, flag_option, prompt_pairs, real_option

__all__ = ['OPTION_RANGES', 'RANGE_TOLERANCE', 'real_option', 'count_option', 'flag_option', 'prompt_pairs',
           'check_images']

#: How far image values may lie outside [0, 1] (rounding of earlier processing) and still
#: be scored as they are. Farther out is another convention (0..255, [-1, 1], CLIP-normalised).
RANGE_TOLERANCE = 1e-3


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
