"""Encoded images held in memory (a WebDataset member, a Parquet cell) to tensors, by the rules of
:func:`.images.read_image`: strict, EXIF-oriented, 8-bit as ``uint8`` (3, H, W), 16-bit and float
as ``float32`` in [0, 1].

The body of :func:`decode_bytes` repeats ``read_image``'s after its file checks (that function
takes only a path); it calls the same helpers, so a rule changed there is changed here.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .images import _ORIENTATION, _SIXTEEN_BIT, RESAMPLING, _rgb_pixels, _strict_decoding, _unit_range

__all__ = ['decode_bytes', 'bytes_pixel_count']


def decode_bytes(data: bytes, resize: tuple[int, int] | None = None, resize_mode: str = 'bicubic') -> torch.Tensor:
    """Decode an encoded image (PNG, JPEG, ... bytes) as :func:`.images.read_image` decodes a file.

    Raises on empty, unidentifiable or truncated bytes."""
    if len(data) == 0:
        raise ValueError('empty image (0 bytes)')
    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # its message would name a BytesIO object's address
        raise ValueError('cannot identify the image: not a format PIL reads') from None
    with _strict_decoding(), opened as image:
        image.load()
        if image.getexif().get(_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        deep = image.mode in (*_SIXTEEN_BIT, 'I', 'F')
        if deep:
            image = Image.fromarray(_unit_range(image), mode='F')
        if resize is not None:
            image = image.resize((resize[1], resize[0]), RESAMPLING[resize_mode])
        if not deep:
            return _rgb_pixels(image, shared=False)
        return torch.from_numpy(np.clip(np.asarray(image, dtype=np.float32), 0, 1)).unsqueeze(0)


def bytes_pixel_count(data: bytes) -> int:
    """Pixels of an encoded image, from its header; 0 if it cannot be read (decoding then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except Exception:  # noqa: BLE001 - any failure is reported by the decoder itself
        return 0
    return width * height
