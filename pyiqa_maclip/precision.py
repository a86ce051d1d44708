"""What the image encoder computes in: the ``precision`` option.

``'fp32'`` runs the encoder as its weights are; ``'bf16'`` and ``'fp16'`` run it under
autocast (convolutions and matrix products in that type, norms in float32) while the
weights, prompt embeddings, MA-CLIP math and scores stay float32. A 16-bit type the CPU
has no instructions for is emulated, slower than float32: the first CPU use warns.
"""
from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

from .errors import UserTypeError
from .names import PRECISIONS
from .option_spec import parse_precision

__all__ = ['DTYPES', 'parse_precision', 'cpu_has_native', 'EncoderPrecision']

#: The type the image encoder computes in, by ``precision``.
DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))


def cpu_has_native(dtype: torch.dtype) -> bool | None:
    """Whether this CPU computes ``dtype`` (bfloat16 or float16) natively in oneDNN; None if torch cannot tell.

    Asks torch's private oneDNN checks (avx512_bf16 / AMX for bfloat16, avx512_fp16 / AMX-FP16
    for float16), guarded because a private API may vanish from a torch release.
    """
    check = {torch.bfloat16: '_is_mkldnn_bf16_supported', torch.float16: '_is_mkldnn_fp16_supported'}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return None


class EncoderPrecision:
    """One metric's ``precision``: the context its encoder runs in, warning once if emulated."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, DTYPES[name]
        self._warned = False

    def autocast(self, device: torch.device, encoder_dtype: torch.dtype) -> AbstractContextManager:
        """Autocast to this precision on ``device`` (nothing for fp32), for an encoder whose weights
        are ``encoder_dtype``."""
        if self.dtype == torch.float32:
            return nullcontext()
        if encoder_dtype not in (torch.float32, self.dtype):  # autocast cannot mix two 16-bit types
            raise UserTypeError(
                f'precision={self.name!r} autocasts a float32 image encoder, but its weights were converted to '
                f'{str(encoder_dtype).removeprefix("torch.")}; convert the metric back with .float(), or build it '
                'with the precision matching that type')
        if device.type == 'cpu':
            self._warn_if_emulated()
        return torch.autocast(device.type, dtype=self.dtype)

    def _warn_if_emulated(self) -> None:
        if self._warned or cpu_has_native(self.dtype) is not False:
            return
        self._warned = True
        better = "precision='bf16' (this CPU has bfloat16 instructions)" if (
            self.dtype == torch.float16 and cpu_has_native(torch.bfloat16)) else "precision='fp32'"
        type_name = str(self.dtype).removeprefix('torch.')
        warnings.warn(f'precision={self.name!r} on this CPU is emulated (no native {type_name} instructions) '
                      f'and slower than float32; use {better}', RuntimeWarning, stacklevel=4)
