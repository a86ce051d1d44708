"""Encoded images held in memory (a WebDataset member, a Parquet cell, a Ray Data row) to tensors, by the
rules of :func:`.images.read_image`: strict, EXIF-oriented, 8-bit as ``uint8`` (3, H, W), 16-bit and float
as ``float32`` in [0, 1]."""
from __future__ import annotations

import io

import torch

from .images import pixel_count, read_image

__all__ = ['decode_bytes', 'bytes_pixel_count']


def decode_bytes(data: bytes, resize: tuple[int, int] | None = None, resize_mode: str = 'bicubic') -> torch.Tensor:
    """Decode an encoded image (PNG, JPEG, ... bytes) as :func:`.images.read_image` decodes a file.

    Raises on empty, unidentifiable or truncated bytes."""
    return read_image(io.BytesIO(data), resize, resize_mode)


def bytes_pixel_count(data: bytes) -> int:
    """Pixels of an encoded image, from its header; 0 if it cannot be read (decoding then says why)."""
    return pixel_count(io.BytesIO(data))
