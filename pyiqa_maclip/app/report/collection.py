"""What a report shows: the finite scores, the rows at evenly spaced quantiles from worst to best, failures.

The metric's direction decides what "worst" is. A run's journal (``score`` keeps it beside the
CSV) gives scores, paths, failures and the metric; without one, the CSV's ``score`` column is
read whole and its ``path`` column in chunks (a million rows take seconds), and the direction
comes from its ``metric`` / ``lower_better`` columns or from the caller. Rows whose score is
empty, NaN or infinite are counted as unscored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UserError, one_line

__all__ = ['MARKED_QUANTILES', 'Selection', 'Collection', 'select_quantiles', 'read_selection', 'read_collection',
           'count_rows']

#: Quantiles of the scores marked on the histogram.
MARKED_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_CHUNK = 100_000
_DIRECTION_FLAGS = '--higher-is-better or --lower-is-better'


@dataclass(frozen=True)
class Selection:
    """The rows shown, worst first: their row numbers (0 = first data row), quantiles from worst and scores."""

    rows: np.ndarray
    quantiles: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Collection:
    """A scored collection as a report shows it."""

    scores: np.ndarray  # the finite scores
    selection: Selection
    paths: list  # of the selected rows: image files' paths, or samples (:class:`~..sources.Sample`)
    failed: int  # files that could not be scored
    unscored: int  # rows without a finite score
    metric: str  # '' when the CSV does not say
    lower_better: bool


def select_quantiles(scores: np.ndarray, count: int, lower_better: bool = False) -> Selection:
    """``count`` rows at evenly spaced quantiles 0..1 of ``scores`` from worst to best, worst first.

    The image at quantile q is the one of rank ``round(q * (n - 1))`` from the worst (ties kept
    in file order); with fewer than ``count`` images, each is shown once.
    """
    if count < 1:
        raise ValueError(f'the number of thumbnails must be at least 1, got {count}')
    n = len(scores)
    order = np.argsort(-scores if lower_better else scores, kind='stable')
    ranks = np.unique(np.round(np.linspace(0, n - 1, min(count, n))).astype(int))
    rows = order[ranks]
    return Selection(rows, ranks / max(n - 1, 1), scores[rows])


def _collection(scores: np.ndarray, count: int, paths_at, failed: int, metric: str, lower_better: bool,
                source: str) -> Collection:
    """The collection of all ``scores`` (NaN where unscored); ``paths_at(rows)`` gives the selected paths."""
    finite = np.flatnonzero(np.isfinite(scores))  # row numbers of the scored rows
    if not len(finite):
        raise UserError(f'{source} has no finite scores ({len(scores)} rows)')
    selection = select_quantiles(scores[finite], count, lower_better)
    rows = finite[selection.rows]  # back to row numbers of the whole collection
    return Collection(scores[finite], Selection(rows, selection.quantiles, scores[rows]), paths_at(rows), failed,
                      len(scores) - len(finite), metric, lower_better)


def _csv_path(text: str) -> str:
    """The file a CSV's ``path`` text names: the text itself if such a file exists (a CSV from elsewhere), else
    the path :func:`~..journal.display_path` wrote as that text."""
    from ..journal import decode_path_text

    if os.path.lexists(text):
        return text
    try:
        return decode_path_text(text)
    except UserError:
        return text


def _paths_at(csv_file: Path, rows: np.ndarray) -> list[str]:
    """The files named by the ``path`` of the given data rows, reading the column in chunks."""
    import pandas as pd

    wanted = {int(r): None for r in rows}
    start = 0
    for chunk in pd.read_csv(csv_file, usecols=['path'], dtype={'path': str}, keep_default_na=False,
                             chunksize=_CHUNK):
        for row in [r for r in wanted if start <= r < start + len(chunk)]:
            wanted[row] = chunk['path'].iloc[row - start]
        start += len(chunk)
    return [_csv_path(wanted[int(r)]) for r in rows]


def count_rows(csv_file: Path) -> int:
    """Data rows of a CSV with a ``path`` column; 0 if there is no such file."""
    import pandas as pd

    if not csv_file.is_file():
        return 0
    return sum(len(chunk) for chunk in pd.read_csv(csv_file, usecols=['path'], dtype=str, keep_default_na=False,
                                                   chunksize=_CHUNK))


def _check_agrees(source: Path, metric: str, known: bool, given: bool | None) -> None:
    """A :class:`UserError` if the direction the user gave contradicts the one ``source`` records."""
    if given is not None and given != known:
        raise UserError(f'{source} was made by {metric}, for which {"lower" if known else "higher"} is better: '
                        f'drop {_DIRECTION_FLAGS}')


def _csv_direction(csv_file: Path, header: list[str], lower_better: bool | None) -> tuple[str, bool]:
    """The metric and its direction, from the CSV's first ``metric``/``lower_better`` values, else ``lower_better``."""
    import pandas as pd

    if {'metric', 'lower_better'} <= set(header):
        first = pd.read_csv(csv_file, usecols=['metric', 'lower_better'], dtype=str, keep_default_na=False, nrows=1)
        if len(first):
            metric, stored = first['metric'].iloc[0], first['lower_better'].iloc[0].strip().lower()
            if stored not in ('true', 'false'):
                raise UserError(f'{csv_file}: lower_better is {stored!r}: expected True or False')
            _check_agrees(csv_file, metric, stored == 'true', lower_better)
            return metric, stored == 'true'
    if lower_better is None:
        raise UserError(f'{csv_file} does not say which metric made it (no metric and lower_better columns): pass '
                        f'{_DIRECTION_FLAGS}')
    return '', lower_better


def read_selection(csv_file: str | os.PathLike, count: int, lower_better: bool | None = None) -> Collection:
    """The collection of a scores CSV (and its ``.errors.csv``); ``lower_better`` for a CSV without the
    ``metric``/``lower_better`` columns."""
    import pandas as pd

    from ..files import WorkFiles

    csv_file = Path(csv_file)
    try:
        header = list(pd.read_csv(csv_file, nrows=0).columns)
        column = pd.read_csv(csv_file, usecols=['score'], dtype={'score': str}, keep_default_na=False)['score']
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f'{csv_file} is not a scores CSV with a score column: {one_line(error)}') from None
    metric, lower_better = _csv_direction(csv_file, header, lower_better)
    scores = pd.to_numeric(column, errors='coerce').to_numpy(dtype=float)
    failed = count_rows(WorkFiles(csv_file.absolute()).errors)
    return _collection(scores, count, lambda rows: _paths_at(csv_file, rows), failed, metric, lower_better,
                       str(csv_file))


def _read_journal(journal_file: Path, count: int) -> Collection:
    """The collection of a run's journal: every stored result, failures counted apart."""
    from ..journal import Journal

    with Journal(journal_file) as journal:
        paths, scores, failed = [], [], 0
        for result in journal.results():
            if result.error is not None:
                failed += 1
                continue
            paths.append(result.sample if result.source else result.key)
            scores.append(result.values.get('score', np.nan))
        metric, lower_better = journal.metric, journal.lower_better
    scores = np.asarray(scores, dtype=float)
    return _collection(scores, count, lambda rows: [paths[r] for r in rows], failed, metric, lower_better,
                       str(journal_file))


def read_collection(csv_file: str | os.PathLike, count: int, lower_better: bool | None = None) -> Collection:
    """The collection scored into ``csv_file``: from the run's journal if it is there (its metric decides the
    direction; a contradicting ``lower_better`` is refused), else from the CSV (see :func:`read_selection`)."""
    from ..files import WorkFiles

    csv_file = Path(csv_file)
    journal_file = WorkFiles(csv_file.absolute()).journal(0)
    if not journal_file.is_file():
        return read_selection(csv_file, count, lower_better)
    collection = _read_journal(journal_file, count)
    _check_agrees(csv_file, collection.metric, collection.lower_better, lower_better)
    return collection
