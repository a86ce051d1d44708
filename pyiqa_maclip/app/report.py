"""``pyiqa-maclip report``: a picture of a scored collection, for choosing a threshold.

It shows the score histogram with quantile marks, a grid of thumbnails at evenly
spaced score quantiles from worst to best (each with its quantile and score), and
how many files failed. Only the ``score`` column is read whole; paths are read in
chunks and only the images shown are opened, so a million-row CSV takes seconds.
Rows whose score is empty, NaN or infinite are counted as unscored and named so in
the picture; every thumbnail shows its own row's score.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError, one_line
from .files import shown, write_figure

__all__ = ['MARKED_QUANTILES', 'Selection', 'select_quantiles', 'read_selection', 'count_rows', 'draw_report']

#: Quantiles drawn as vertical marks on the histogram.
MARKED_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_THUMBNAIL = 192  # pixels, longer side
_CHUNK = 100_000


@dataclass(frozen=True)
class Selection:
    """The rows shown: their row numbers in the CSV (0 = first data row), quantiles and scores."""

    rows: np.ndarray
    quantiles: np.ndarray
    scores: np.ndarray


def select_quantiles(scores: np.ndarray, count: int) -> Selection:
    """``count`` rows at evenly spaced quantiles 0..1 of ``scores``, worst first.

    The image at quantile q is the one of rank ``round(q * (n - 1))`` in ascending
    order (ties kept in file order); with fewer than ``count`` images, each is shown once.
    """
    if count < 1:
        raise ValueError(f'the number of thumbnails must be at least 1, got {count}')
    n = len(scores)
    order = np.argsort(scores, kind='stable')
    ranks = np.unique(np.round(np.linspace(0, n - 1, min(count, n))).astype(int))
    rows = order[ranks]
    return Selection(rows, ranks / max(n - 1, 1), scores[rows])


def _paths_at(csv_file: Path, rows: np.ndarray) -> list[str]:
    """The ``path`` of the given data rows, reading the column in chunks."""
    import pandas as pd

    wanted = {int(r): None for r in rows}
    start = 0
    for chunk in pd.read_csv(csv_file, usecols=['path'], dtype={'path': str}, keep_default_na=False,
                             chunksize=_CHUNK):
        for row in [r for r in wanted if start <= r < start + len(chunk)]:
            wanted[row] = chunk['path'].iloc[row - start]
        start += len(chunk)
    return [wanted[int(r)] for r in rows]


def count_rows(csv_file: Path) -> int:
    import pandas as pd

    if not csv_file.is_file():
        return 0
    return sum(len(chunk) for chunk in pd.read_csv(csv_file, usecols=['path'], dtype=str, keep_default_na=False,
                                                   chunksize=_CHUNK))


def read_selection(csv_file: str | os.PathLike, count: int) -> tuple[np.ndarray, Selection, list[str], int]:
    """The finite scores of a scores CSV, the quantile selection (row numbers of the CSV), the selected
    paths, and how many rows have no finite score (empty, NaN or infinite)."""
    import pandas as pd

    csv_file = Path(csv_file)
    try:
        column = pd.read_csv(csv_file, usecols=['score'], dtype={'score': str}, keep_default_na=False)['score']
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f'{csv_file} is not a scores CSV with a score column: {one_line(error)}') from None
    scores = pd.to_numeric(column, errors='coerce').to_numpy(dtype=float)
    finite = np.flatnonzero(np.isfinite(scores))  # row numbers of the scored rows
    if not len(finite):
        raise UserError(f'{csv_file} has no finite scores ({len(scores)} rows)')
    selection = select_quantiles(scores[finite], count)
    rows = finite[selection.rows]  # back to row numbers of the whole CSV
    selection = Selection(rows, selection.quantiles, scores[rows])
    return scores[finite], selection, _paths_at(csv_file, rows), len(scores) - len(finite)


def _thumbnail(path: str):
    """A small RGB picture of the image, or None if it cannot be read."""
    from PIL import Image

    from .images import as_float, read_image
    from .journal import file_path

    try:
        image = read_image(file_path(path))
        step = max(1, max(image.shape[-2:]) // (4 * _THUMBNAIL))  # subsampled before any conversion
        image = as_float(image[:, ::step, ::step]).expand(3, -1, -1)
    except Exception:  # noqa: BLE001 - a moved or broken file is shown as missing, not fatal
        return None
    picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    picture.thumbnail((_THUMBNAIL, _THUMBNAIL))
    return picture


def draw_report(scores: np.ndarray, selection: Selection, paths: Sequence[str], failed: int, unscored: int,
                title: str, output: Path, columns: int = 8) -> Path:
    """Histogram with quantile marks over a grid of thumbnails; saved as a PNG (width >= 1200 px)."""
    from matplotlib.figure import Figure

    rows = math.ceil(len(paths) / columns)
    figure = Figure(figsize=(2 * columns, 3.2 + 2.3 * rows), dpi=100, layout='constrained')
    grid = figure.add_gridspec(1 + rows, columns, height_ratios=[3.2] + [2.3] * rows)
    histogram = figure.add_subplot(grid[0, :])
    histogram.hist(scores, bins=min(100, max(10, int(math.sqrt(len(scores))))), color='#4c72b0')
    for q in MARKED_QUANTILES:
        value = float(np.quantile(scores, q))
        histogram.axvline(value, color='#c44e52', linestyle='--', linewidth=1)
        histogram.annotate(f'{q:.0%}: {value:.3f}', (value, 1), xycoords=('data', 'axes fraction'), rotation=90,
                           va='top', ha='right', fontsize=8, color='#c44e52')
    histogram.set_xlabel('MA-CLIP score (higher is better)')
    histogram.set_ylabel('images')
    unscored_rows = f', {unscored} rows without a finite score (empty, NaN or inf)' if unscored else ''
    histogram.set_title(f'{title}: {len(scores)} images scored, {failed} failed{unscored_rows}')
    for i, (path, q, score) in enumerate(zip(paths, selection.quantiles, selection.scores)):
        axes = figure.add_subplot(grid[1 + i // columns, i % columns])
        picture = _thumbnail(path)
        if picture is None:
            axes.text(0.5, 0.5, 'cannot read', ha='center', va='center', fontsize=9)
        else:
            axes.imshow(np.asarray(picture))
        axes.set_title(f'q {q:.2f} · {score:.3f}', fontsize=9)
        axes.set_xlabel(shown(Path(path).name)[:28], fontsize=7)
        axes.set_xticks([])
        axes.set_yticks([])
    return write_figure(figure, output)
