"""The report as a PNG: the score histogram with quantile marks over thumbnails from worst to best.

Drawn to read at 100 % zoom: the quantile labels sit in one row above the histogram, each
joined to its mark (they never overlap, however close the quantiles); counts are integers;
thumbnails span the width, each captioned with its quantile, score and file name (>= 10 px).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..files import shown, write_figure
from .collection import MARKED_QUANTILES, Collection
from .thumbnails import read_thumbnails

__all__ = ['draw_report', 'axis_label']

_THUMBNAIL = 256  # pixels, longer side
_DPI = 100
_CELL = 2.6  # inches of one thumbnail's cell, each way
_NAME_CHARACTERS = 30  # of a file name under its thumbnail


def axis_label(metric: str, lower_better: bool) -> str:
    return f'{metric + " " if metric else ""}score ({"lower" if lower_better else "higher"} is better)'


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARACTERS else name[:_NAME_CHARACTERS - 12] + '…' + name[-11:]


def _histogram(axes, collection: Collection, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    scores = collection.scores
    axes.hist(scores, bins=min(100, max(10, int(math.sqrt(len(scores))))), color='#4c72b0', edgecolor='#1b2f4f',
              linewidth=0.6)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    for i, q in enumerate(MARKED_QUANTILES):  # labels evenly spaced in a row above the axes, joined to their marks
        value = float(np.quantile(scores, q))
        axes.axvline(value, color='#c44e52', linestyle='--', linewidth=1)
        axes.annotate(f'{q:.0%}: {value:.4g}', xy=(value, 1.0), xycoords=('data', 'axes fraction'),
                      xytext=((i + 0.5) / len(MARKED_QUANTILES), 1.1), textcoords='axes fraction', ha='center',
                      va='bottom', fontsize=11, color='#c44e52',
                      arrowprops={'arrowstyle': '-', 'color': '#c44e52', 'linewidth': 0.8})
    axes.set_xlabel(axis_label(collection.metric, collection.lower_better), fontsize=12)
    axes.set_ylabel('images', fontsize=12)
    unscored = f', {collection.unscored} rows without a finite score' if collection.unscored else ''
    axes.set_title(f'{title}: {len(scores)} images scored, {collection.failed} failed{unscored}; '
                   'quantiles of the scores (dashed)', fontsize=13, pad=42)


def draw_report(collection: Collection, title: str, output: Path, columns: int = 6) -> int:
    """Histogram with quantile marks over a grid of thumbnails, worst first; saved as a PNG (width >= 1200 px).
    Returns how many thumbnails could not be read (drawn as "cannot read")."""
    from matplotlib.figure import Figure

    selection, paths = collection.selection, collection.paths
    rows, unreadable = math.ceil(len(paths) / columns), 0
    figure = Figure(figsize=(columns * _CELL, 4.2 + (_CELL + 0.4) * rows), dpi=_DPI, layout='constrained')
    grid = figure.add_gridspec(1 + rows, columns, height_ratios=[4.2] + [_CELL + 0.4] * rows)
    _histogram(figure.add_subplot(grid[0, :]), collection, title)
    pictures = read_thumbnails(paths, _THUMBNAIL)
    for i, (path, picture, q, score) in enumerate(zip(paths, pictures, selection.quantiles, selection.scores)):
        axes = figure.add_subplot(grid[1 + i // columns, i % columns])
        if picture is None:
            unreadable += 1
            axes.text(0.5, 0.5, 'cannot read', ha='center', va='center', fontsize=11)
        else:
            axes.imshow(np.asarray(picture))
        axes.set_title(f'{q:.0%} from worst · {score:.4g}', fontsize=11)
        axes.set_xlabel(_short(shown(Path(path).name if isinstance(path, str) else path.key)), fontsize=10)
        axes.set_xticks([])
        axes.set_yticks([])
    write_figure(figure, output)
    return unreadable
