"""Images (files, or samples of any source) to tensors, the same way for every command, with the images
in flight under a pixel budget.

* Strict: an empty, truncated or unidentifiable file is an error, whatever
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` says (pyiqa's dataset module turns it on
  for the whole process when imported).
* Oriented as displayed: the EXIF orientation tag is applied (pyiqa's reader
  ignores it), so a photo is scored the way people see it.
* Real range and little memory: 8-bit images stay ``uint8`` (3, H, W), one byte per
  value until the scorer cuts its views; 16-bit images are divided by 65535 and float
  images must already lie in [0, 1]: both become ``float32`` (1 or 3, H, W) in [0, 1]
  instead of being clipped to 8 bits.
* Optional resizing with PIL before anything else (the paper's SPAQ and AGIQA preprocessing).

:func:`decoded_batches` decodes in worker processes while the caller scores, and keeps the
pixels of the images in flight (being decoded, decoded and waiting, being scored) under a
budget that no batch size or worker count can exceed: an image is sent to a worker only
when its pixels fit, and one larger than the whole budget only when nothing else is in flight.
A worker that dies on an image (the out-of-memory killer, a crashing decoder) is replaced at
once, and that image is reported as failed: "the decoding process died (signal 9)".
"""
from __future__ import annotations

import io
import os
import signal
import stat
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import error_text
from .sources import Sample, sample_input
from .workers import WorkerDied, WorkerPool

__all__ = ['RESAMPLING', 'DEFAULT_PIXEL_BUDGET', 'read_image', 'as_float', 'pixel_count', 'Decoded',
           'decoded_batches']

#: Resampling filters of the ``resize`` preprocessing, by name.
RESAMPLING = {
    'bicubic': Image.Resampling.BICUBIC,
    'bilinear': Image.Resampling.BILINEAR,
    'lanczos': Image.Resampling.LANCZOS,
    'nearest': Image.Resampling.NEAREST,
    'box': Image.Resampling.BOX,
    'hamming': Image.Resampling.HAMMING,
}
#: Pixels of the images in flight at once, by default: 128 megapixels, about 384 MB of 8-bit RGB
#: (a worker needs about twice an image's bytes while it decodes it).
DEFAULT_PIXEL_BUDGET = 128_000_000
_SIXTEEN_BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N')
_ORIENTATION = 0x0112  # the EXIF tag
_STRIP_BYTES = 16 << 20  # pixels copied at a time out of a decoded image


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


def _readable(image: str | os.PathLike | Sample | IO[bytes]) -> str | os.PathLike | IO[bytes]:
    """What PIL opens: a file's path (checked: a regular, non-empty file) or a sample's bytes."""
    if isinstance(image, Sample):
        image = sample_input(image)
    if isinstance(image, (str, os.PathLike)):
        _regular_file(image)
    elif image.seek(0, os.SEEK_END) == 0:
        raise ValueError('empty image (0 bytes)')
    else:
        image.seek(0)
    return image


def _opened(image: str | os.PathLike | Sample | IO[bytes]) -> Image.Image:
    """The image PIL opens from :func:`_readable`; bytes it cannot identify are a ValueError without PIL's
    message, which names a memory address (an errors file would then differ from run to run)."""
    readable = _readable(image)
    try:
        return Image.open(readable)
    except UnidentifiedImageError:
        if isinstance(readable, (str, os.PathLike)):
            raise
        raise ValueError('cannot identify the image: not a format PIL reads') from None


def _regular_file(path: str | os.PathLike) -> None:
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):  # a FIFO would block the decoder for ever
        raise ValueError('not a regular file (a folder, FIFO, socket or device)')
    if status.st_size == 0:
        raise ValueError('empty file (0 bytes)')


def _rgb_pixels(image: Image.Image, shared: bool) -> torch.Tensor:
    """The (3, H, W) ``uint8`` pixels of ``image``, copied strip by strip into one tensor (in shared
    memory if ``shared``, so that a worker hands it over without another copy). PIL's own export
    (``np.asarray``) would hold the image's bytes twice more while it joins them."""
    width, height = image.size
    pixels = torch.empty((height, width, 3), dtype=torch.uint8)
    if shared:
        pixels.share_memory_()
    target = pixels.numpy()
    rows = max(1, _STRIP_BYTES // (3 * width))
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        target[top:top + rows] = np.asarray(strip if strip.mode == 'RGB' else strip.convert('RGB'))
    return pixels.permute(2, 0, 1)


def read_image(path: str | os.PathLike | Sample | IO[bytes], resize: tuple[int, int] | None = None,
               resize_mode: str = 'bicubic', *, shared: bool = False) -> torch.Tensor:
    """Decode an image file (or a :class:`~.sources.Sample`, or a binary file object): ``uint8``
    (3, H, W), or ``float32`` (1 or 3, H, W) in [0, 1] for 16-bit and float images; resized to
    ``resize`` = (H, W) first if given; in shared memory if ``shared`` (for a worker process to hand
    over).

    An 8-bit image is held twice at most while it is read (PIL's decoded image and the
    tensor). Raises on an empty, unidentifiable, truncated or unreadable file.
    """
    with _strict_decoding(), _opened(path) as image:
        image.load()
        if image.getexif().get(_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        deep = image.mode in (*_SIXTEEN_BIT, 'I', 'F')
        if deep:
            image = Image.fromarray(_unit_range(image), mode='F')
        if resize is not None:
            image = image.resize((resize[1], resize[0]), RESAMPLING[resize_mode])
        if not deep:
            return _rgb_pixels(image, shared)
        values = torch.from_numpy(np.clip(np.asarray(image, dtype=np.float32), 0, 1)).unsqueeze(0)
        return values.share_memory_() if shared else values


def as_float(image: torch.Tensor) -> torch.Tensor:
    """A decoded image as float32 in [0, 1] (``uint8`` divided by 255)."""
    return image.float().div_(255) if image.dtype == torch.uint8 else image.float()


def pixel_count(path: str | os.PathLike | Sample, resize: tuple[int, int] | None = None) -> int:
    """Pixels ``read_image`` will hold for ``path`` (the larger of the image's and the resized size), read
    from the image's header; 0 when the header cannot be read (decoding then reports why)."""
    try:
        with Image.open(sample_input(path) if isinstance(path, Sample) else path) as opened:
            width, height = opened.size
    except Exception:  # noqa: BLE001 - any failure is reported by the decoder itself
        return 0
    return max(width * height, resize[0] * resize[1] if resize else 0)


class Decoded(NamedTuple):
    index: int  # position in the list of images
    image: torch.Tensor | None
    error: str | None


def _decode(index: int, path: str | Sample, resize, resize_mode: str, shared: bool = False) -> Decoded:
    try:
        return Decoded(index, read_image(path, resize, resize_mode, shared=shared), None)
    except Exception as error:  # noqa: BLE001 - whatever the file does, report it and go on
        return Decoded(index, None, error_text(error))


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    torch.set_num_threads(1)


def default_num_workers() -> int:
    """Decoding processes: one per CPU, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return min(4, cpus)


def _opened_once(index: int, path: str | Sample, resize) -> tuple[int, str | io.BytesIO | Decoded]:
    """An image's pixel count (:func:`pixel_count`) and what a decoder reads: the file's path, or a sample's
    bytes read here once (a worker never reads a shard or a Parquet row group again), or the error of
    reading them."""
    if isinstance(path, Sample) and path.locator is not None:
        try:
            path = sample_input(path)
        except Exception as error:  # noqa: BLE001 - a sample without an image, a damaged shard: its error result
            return 0, Decoded(index, None, error_text(error))
    elif isinstance(path, Sample):
        path = path.key
    return pixel_count(path, resize), path


def decoded_batches(paths: Sequence[str | Sample], *, batch_size: int = 8, num_workers: int = 0,
                    pixel_budget: int = DEFAULT_PIXEL_BUDGET, resize: tuple[int, int] | None = None,
                    resize_mode: str = 'bicubic') -> Iterator[list[Decoded]]:
    """Batches of up to ``batch_size`` decoded images (or their errors), in the order of ``paths``
    (image files, or samples of any source).

    Images are decoded in ``num_workers`` processes (0: here, a batch at a time) while the
    caller works on the batch it was given. The pixels of the images in flight (decoding,
    decoded, and the batch the caller holds until it asks for the next) never exceed
    ``pixel_budget``, except one image larger than the budget, which is taken alone.
    """
    pool = WorkerPool(num_workers, _decode, _quiet_worker, what='the decoding process') if num_workers else None
    ahead = 2 * batch_size if pool else batch_size  # decoded ahead of the caller, at most
    waiting: deque = deque()  # (pixels, index or Decoded), in path order
    in_flight, next_index, opened = 0, 0, None
    try:
        while next_index < len(paths) or waiting:
            while next_index < len(paths) and len(waiting) < ahead:
                if opened is None:  # read once, however long the image waits for room
                    opened = _opened_once(next_index, paths[next_index], resize)
                pixels, readable = opened
                if in_flight and in_flight + pixels > pixel_budget:
                    break
                if isinstance(readable, Decoded):
                    waiting.append((0, readable))
                elif pool:
                    pool.submit(next_index, next_index, readable, resize, resize_mode, True)
                    waiting.append((pixels, next_index))
                else:
                    waiting.append((pixels, _decode(next_index, readable, resize, resize_mode)))
                in_flight += pixels
                next_index, opened = next_index + 1, None
            batch = [waiting.popleft() for _ in range(min(batch_size, len(waiting)))]
            yield [_collected(pool, item) for _, item in batch]
            in_flight -= sum(held for held, _ in batch)
    finally:
        if pool is not None:
            pool.close()


def _collected(pool: WorkerPool | None, item: int | Decoded) -> Decoded:
    """A decoded image: done here already, or a worker's (the error, if the worker died on it)."""
    if isinstance(item, Decoded):
        return item
    try:
        return pool.result(item)
    except WorkerDied as died:
        return Decoded(item, None, str(died))
