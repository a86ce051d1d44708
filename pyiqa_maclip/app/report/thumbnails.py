"""The pictures a report holds: small thumbnails of the scored images, and shrunk ``explain`` pictures.

Both renderings (the PNG and the HTML page) make their thumbnails here, so an image looks the same in
either; an image that cannot be read is ``None`` (shown as missing), never an error.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ['read_thumbnail', 'read_thumbnails', 'quality_map_png', 'QUALITY_MAP_PIXELS']

#: The longer side of an ``explain`` picture as a report holds it, in pixels (``explain`` draws 1,800).
QUALITY_MAP_PIXELS = 1800


def read_thumbnail(path, pixels: int):
    """A PIL RGB picture of the image at ``path`` (a file, or a sample of a shard) whose longer side is at
    most ``pixels``, or None if it cannot be read (a sample without a locator: not found again in its shard). Decoded as every command
    reads images (``app.images.read_image``) and subsampled before any conversion, so a large photo costs
    little."""
    from PIL import Image

    from ..images import as_float, read_image
    from ..sources import Sample

    if isinstance(path, Sample) and path.source and path.locator is None:
        return None  # its key is no path: never opened as one
    try:
        image = read_image(path)
        step = max(1, max(image.shape[-2:]) // (4 * pixels))
        image = as_float(image[:, ::step, ::step]).expand(3, -1, -1)
    except Exception:  # noqa: BLE001 - a moved or broken file is shown as missing, not fatal
        return None
    picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    picture.thumbnail((pixels, pixels))
    return picture


def quality_map_png(path: Path, pixels: int = QUALITY_MAP_PIXELS) -> bytes | None:
    """The ``explain`` picture at ``path`` as PNG bytes: the file itself when it is a PNG whose longer side
    is at most ``pixels`` (as ``explain`` writes them: shrinking would only add colours and bytes), else
    shrunk to that; None if it cannot be read."""
    from PIL import Image

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format == 'PNG' and max(picture.size) <= pixels:
                return data
            picture = picture.convert('RGB')
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    picture.thumbnail((pixels, pixels))
    buffer = io.BytesIO()
    picture.save(buffer, format='PNG', optimize=True)
    return buffer.getvalue()


def read_thumbnails(paths: Sequence, pixels: int) -> list:
    """:func:`read_thumbnail` of each of ``paths``, read in the order their shards hold them (a compressed
    shard is read forward once, not from its start for each picture), given back in the order of ``paths``."""
    from ..sources import reading_order

    pictures: list = [None] * len(paths)
    for index in reading_order(paths):
        pictures[index] = read_thumbnail(paths[index], pixels)
    return pictures
