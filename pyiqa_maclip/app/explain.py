"""``pyiqa-maclip explain``: where in an image MA-CLIP finds quality, and which cue decided.

Each 224x224 view gets its own Q_sim, Q_mag, fusion weights and fused score
(:meth:`pyiqa_maclip.MACLIP.quality_maps`). A per-pixel map averages the values of
the patches that cover each pixel; pixels no patch covers (the right and bottom
margins that do not fill a whole stride, as in the paper's ``nn.Unfold``) are left
blank. Colour scales are fixed (:data:`SCALES`), so maps of different images compare.

Images are read, scored and drawn one at a time (memory of one image, however many);
a file that cannot be read or drawn is named with its error and the others go on
(exit status 1, as ``score``). Each image gets its own picture name; an existing file
is replaced only with ``--overwrite``, and never a link, device, FIFO or folder.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import shown, write_figure
from .sources import SHARD_SUFFIXES, Sample

__all__ = ['SCALES', 'MAX_SIDE', 'pixel_map', 'draw_explanation', 'sample_label', 'output_names']

#: Fixed colour scales (low, high) of the maps: Q_sim and the weight lie in (0, 1); Q_mag and the
#: fused score are >= 0 and in practice below about 1.5 (see the README's "Score range").
SCALES = {'score': (0.0, 1.5), 'q_sim': (0.0, 1.0), 'q_mag': (0.0, 1.5), 'w_mag': (0.0, 1.0)}
MAX_SIDE = 800  # pixels of the drawn maps' longer side
_SOURCE_SUFFIXES = (*SHARD_SUFFIXES, '.parquet', '.arrow')  # left out of a source's name in picture names
_UNSAFE = re.compile(r'[^A-Za-z0-9._-]')  # written _ in a key's part of a picture name
_KEY_CHARS = 100  # of a key kept in a picture name (the whole name must fit the file system's 255 bytes)


def pixel_map(values: np.ndarray, boxes: np.ndarray, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Per-pixel mean of the patch ``values`` (rows, cols) over their ``boxes`` (rows, cols, 4) of
    (top, left, bottom, right) in an image of ``height`` x ``width``, sampled at ``scale``; NaN where
    no patch covers a pixel."""
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    total, count = np.zeros(shape), np.zeros(shape)
    for value, (top, left, bottom, right) in zip(values.reshape(-1), boxes.reshape(-1, 4)):
        rows = slice(int(round(top * scale)), max(int(round(bottom * scale)), int(round(top * scale)) + 1))
        cols = slice(int(round(left * scale)), max(int(round(right * scale)), int(round(left * scale)) + 1))
        total[rows, cols] += value
        count[rows, cols] += 1
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(count > 0, total / count, np.nan)


def draw_explanation(picture: np.ndarray, qmap, size: tuple[int, int], title: str, output: Path) -> Path:
    """The photo, the fused-score map over it, and the Q_sim, Q_mag and magnitude-weight maps, as a PNG.

    ``picture`` is the image as (h, w, 3) (``uint8`` values, or floats in [0, 1]), subsampled by the
    caller to a few hundred pixels a side; ``qmap`` the :class:`~pyiqa_maclip.arch.QualityMap` of the
    full-size image, whose (height, width) is ``size``.
    """
    from matplotlib.figure import Figure

    height, width = size
    scale = min(1.0, MAX_SIDE / max(height, width))
    boxes = qmap.boxes.cpu().numpy()
    maps = {name: pixel_map(getattr(qmap.patches, name).cpu().numpy(), boxes, height, width, scale)
            for name in SCALES}
    extent = (0, width, height, 0)
    figure = Figure(figsize=(18, 4.2 * max(0.6, min(1.6, height / width))), dpi=100, layout='constrained')
    panels = figure.subplots(1, 5)
    panels[0].imshow(picture, extent=extent)
    panels[0].set_title('image')
    captions = {'score': 'fused score Q (over the image)', 'q_sim': 'Q_sim (prompt similarity)',
                'q_mag': 'Q_mag (feature magnitude)', 'w_mag': 'weight of Q_mag in the fusion'}
    for axes, name in zip(panels[1:], SCALES):
        low, high = SCALES[name]
        if name == 'score':
            axes.imshow(picture, extent=extent)
        drawn = axes.imshow(maps[name], extent=extent, cmap='viridis' if name != 'w_mag' else 'coolwarm',
                            vmin=low, vmax=high, alpha=0.6 if name == 'score' else 1.0, interpolation='nearest')
        axes.set_title(captions[name], fontsize=10)
        figure.colorbar(drawn, ax=axes, fraction=0.046, pad=0.02)
    for axes in panels:
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle(title, parse_math=False)  # a name is text: '$' starts no formula
    return write_figure(figure, output)


def sample_label(sample: Sample, whole: bool = True) -> str:
    """How messages (``whole``: paths in full) and titles (names only) name an image: the image file, else
    ``<source>, key <key>`` (the source alone for what concerns a whole shard: key ``''``), each through
    :func:`~.files.shown` (one printable line)."""
    def name(path: str) -> str:
        return shown(path if whole else Path(path).name)

    if not sample.source:
        return name(sample.key)
    return f'{name(sample.source)}, key {shown(sample.key)}' if sample.key else name(sample.source)


def _stem_and_identity(sample: str | Sample) -> tuple[str, bytes]:
    """The readable part of a picture's name, and the bytes its hash is taken of when names meet."""
    if isinstance(sample, str) or not sample.source:
        path = sample if isinstance(sample, str) else sample.key
        return Path(path).stem, os.fsencode(path)
    source = Path(sample.source).name
    suffix = next((s for s in _SOURCE_SUFFIXES if source.lower().endswith(s)), '')
    source = source[:len(source) - len(suffix)]
    key = _UNSAFE.sub('_', sample.key)[:_KEY_CHARS]
    return f'{source}_{key}', os.fsencode(sample.source) + b'\0' + os.fsencode(sample.key)


def output_names(images: Sequence[str | Sample], folder: Path) -> list[Path]:
    """The picture of each image: ``<stem>_explain.png`` for an image file; for a sample of a shard,
    Parquet file or dataset (:class:`~.sources.Sample`), ``<source stem>_<key>_explain.png``, the key's
    characters other than ``A-Z a-z 0-9 . _ -`` written ``_`` (``/``, CR, LF, bytes that are not
    UTF-8, markup) and its first 100 kept. Images whose names would meet (the same stem from two
    folders, a case twin, two keys written alike) get ``<stem>-<hash of the identity>_explain.png``
    instead, so no two share a name. ``explain`` and ``report --explained`` both name pictures here.
    Counted, not compared pairwise: 40,000 paths take a fraction of a second."""
    parts = [_stem_and_identity(image) for image in images]

    def name(stem: str, identity: bytes, digits: int = 0) -> str:
        if digits:
            stem += '-' + hashlib.sha256(identity).hexdigest()[:digits]
        return f'{stem}_explain.png'

    names = [name(*part) for part in parts]
    for digits in (8, 16, 64):
        uses = Counter(n.casefold() for n in names)
        if len(uses) == len(names):
            break
        names = [name(*part, digits) if uses[n.casefold()] > 1 else n for part, n in zip(parts, names)]
    return [folder / n for n in names]
