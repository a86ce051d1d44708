"""Image files to tensors, the same way for ``score`` and ``benchmark``.

* Strict: an empty, truncated or unidentifiable file is an error, whatever
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` says (pyiqa's dataset module turns it on
  for the whole process when imported).
* Oriented as displayed: the EXIF orientation tag is applied (pyiqa's reader
  ignores it), so a photo is scored the way people see it.
* Real range: 8-bit images stay ``uint8`` (3, H, W); 16-bit images are divided by
  65535 and float images must already lie in [0, 1]: both become ``float32``
  (1 or 3, H, W) in [0, 1] instead of being clipped to 8 bits.
* Optional resizing with PIL before anything else (the paper's SPAQ and AGIQA
  preprocessing).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..safe_io import error_text

__all__ = ['RESAMPLING', 'read_image', 'as_float', 'Decoded', 'ImageFiles']

#: Resampling filters of the ``resize`` preprocessing, by name.
RESAMPLING = {
    'bicubic': Image.Resampling.BICUBIC,
    'bilinear': Image.Resampling.BILINEAR,
    'lanczos': Image.Resampling.LANCZOS,
    'nearest': Image.Resampling.NEAREST,
    'box': Image.Resampling.BOX,
    'hamming': Image.Resampling.HAMMING,
}
_SIXTEEN_BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N')


@contextmanager
def _strict_decoding() -> Iterator[None]:
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _unit_range(image: Image.Image) -> np.ndarray:
    """A 16-bit or float single-channel image as float32 values in [0, 1]."""
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT or (image.mode == 'I' and values.min() >= 0 and values.max() <= 65535):
        return values.astype(np.float32) / 65535
    if image.mode == 'I':
        raise ValueError(f'32-bit integer image with values in [{values.min()}, {values.max()}]; '
                         'expected 8- or 16-bit values')
    values = values.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError(f'float image with values in [{np.nanmin(values)}, {np.nanmax(values)}]; '
                         'expected values in [0, 1]')
    return values


def read_image(path: str | os.PathLike, resize: tuple[int, int] | None = None,
               resize_mode: str = 'bicubic') -> torch.Tensor:
    """Decode an image file: ``uint8`` (3, H, W), or ``float32`` (1 or 3, H, W) in [0, 1] for
    16-bit and float images; resized to ``resize`` = (H, W) first if given.

    Raises on an empty, unidentifiable, truncated or unreadable file.
    """
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):  # a FIFO would block the decoder for ever
        raise ValueError('not a regular file (a folder, FIFO, socket or device)')
    if status.st_size == 0:
        raise ValueError('empty file (0 bytes)')
    with _strict_decoding(), Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
        deep = image.mode in (*_SIXTEEN_BIT, 'I', 'F')
        image = Image.fromarray(_unit_range(image), mode='F') if deep else image.convert('RGB')
        if resize is not None:
            image = image.resize((resize[1], resize[0]), RESAMPLING[resize_mode])
        if deep:
            return torch.from_numpy(np.clip(np.asarray(image, dtype=np.float32), 0, 1)).unsqueeze(0)
        return pil_to_tensor(image)


def as_float(image: torch.Tensor) -> torch.Tensor:
    """A decoded image as float32 in [0, 1] (``uint8`` divided by 255)."""
    return image.float().div_(255) if image.dtype == torch.uint8 else image.float()


class Decoded(NamedTuple):
    index: int  # position in the dataset's path list
    image: torch.Tensor | None
    error: str | None


class ImageFiles(Dataset):
    """Decodes one path per item; a failure becomes the item's error, never the run's."""

    def __init__(self, paths: Sequence[str], resize: tuple[int, int] | None = None,
                 resize_mode: str = 'bicubic') -> None:
        self.paths, self.resize, self.resize_mode = paths, resize, resize_mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Decoded:
        try:
            return Decoded(index, read_image(self.paths[index], self.resize, self.resize_mode), None)
        except Exception as error:  # noqa: BLE001 - whatever the file does, report it and go on
            return Decoded(index, None, error_text(error))
