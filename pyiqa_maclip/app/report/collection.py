"""What a report shows: the finite scores, the rows at evenly spaced quantiles from worst to best, failures.

The metric's direction decides what "worst" is. A run's journal (``score`` keeps it beside the
CSV) gives scores, paths, failures and the metric; without one, the CSV's ``score`` column is
read whole and its ``path`` column in chunks (a million rows take seconds), and the direction
comes from its ``metric`` / ``lower_better`` columns or from the caller. Rows whose score is
empty, NaN or infinite are counted as unscored. The HTML page shows every row (:func:`read_table`:
scores, components, failures with their reasons), from the same sources.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ...errors import UserError, one_line

if TYPE_CHECKING:
    import pandas as pd

__all__ = ['MARKED_QUANTILES', 'Selection', 'Collection', 'Table', 'select_quantiles', 'read_selection',
           'read_collection', 'read_table', 'count_rows']

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


@dataclass(frozen=True)
class Table:
    """Every row of a scored collection, as the HTML page shows it."""

    rows: pd.DataFrame  # key (the path as the CSV writes it), score (NaN where unscored), components
    file_of: Callable[[int], str]  # the file of a row, by its position
    failed: pd.DataFrame  # key, error
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


def _as_written(value: float) -> float:
    """``value`` as the scores CSV holds it (``outputs.export`` writes 9 significant digits), so that a page
    made from the journal keeps and drops exactly the rows ``select`` keeps and drops in the CSV."""
    return float(f'{value:.9g}')


def _journal_table(journal_file: Path) -> Table:
    """Every result of a run's journal, in the order stored, its numbers as the CSV writes them; keys are the
    paths (or, for shards, the samples' keys) as the CSV writes them."""
    import pandas as pd

    from ..journal import Journal, display_path

    with Journal(journal_file) as journal:
        columns, rows, paths, failed = journal.columns, [], [], []
        for result in journal.results():
            key = display_path(os.fsencode(result.key))
            if result.error is not None:
                failed.append((key, result.error))
                continue
            paths.append(result.sample if result.source else result.key)
            rows.append((key, *(_as_written(result.values.get(c, np.nan)) for c in columns)))
        metric, lower_better = journal.metric, journal.lower_better
    table = pd.DataFrame(rows, columns=['key', *columns]).astype({c: float for c in columns})
    return Table(table, paths.__getitem__, pd.DataFrame(failed, columns=['key', 'error'], dtype=str), metric,
                 lower_better)


def _read_journal(journal_file: Path, count: int) -> Collection:
    """The collection of a run's journal: every stored result, failures counted apart."""
    table = _journal_table(journal_file)
    scores = table.rows['score'].to_numpy(dtype=float) if 'score' in table.rows else np.full(len(table.rows), np.nan)
    return _collection(scores, count, lambda rows: [table.file_of(r) for r in rows], len(table.failed), table.metric,
                       table.lower_better, str(journal_file))


def _run_journal(csv_file: Path) -> Path | None:
    """The journal of the run that wrote ``csv_file``, if it is there."""
    from ..files import WorkFiles

    journal_file = WorkFiles(csv_file.absolute()).journal(0)
    return journal_file if journal_file.is_file() else None


def read_collection(csv_file: str | os.PathLike, count: int, lower_better: bool | None = None) -> Collection:
    """The collection scored into ``csv_file``: from the run's journal if it is there (its metric decides the
    direction; a contradicting ``lower_better`` is refused), else from the CSV (see :func:`read_selection`)."""
    csv_file = Path(csv_file)
    journal_file = _run_journal(csv_file)
    if journal_file is None:
        return read_selection(csv_file, count, lower_better)
    collection = _read_journal(journal_file, count)
    _check_agrees(csv_file, collection.metric, collection.lower_better, lower_better)
    return collection


def _csv_failures(csv_file: Path):
    """``key, error`` of the ``.errors.csv`` beside ``csv_file`` (none if it is not there)."""
    import pandas as pd

    from ..files import WorkFiles

    errors = WorkFiles(csv_file.absolute()).errors
    if not errors.is_file():
        return pd.DataFrame({'key': [], 'error': []}, dtype=str)
    try:
        failed = pd.read_csv(errors, usecols=['path', 'error'], dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f'{errors} is not an errors CSV with path and error columns: {one_line(error)}') from None
    return failed.rename(columns={'path': 'key'})


def _csv_table(csv_file: Path, lower_better: bool | None) -> Table:
    """Every row of a scores CSV: its text as keys, its numeric columns as score and components."""
    import pandas as pd

    try:
        table = pd.read_csv(csv_file, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f'{csv_file} is not a readable CSV: {one_line(error)}') from None
    for column in ('path', 'score'):
        if column not in table.columns:
            raise UserError(f'{csv_file} has no {column} column (columns: {", ".join(table.columns)}): expected the '
                            'CSV written by pyiqa-maclip score')
    metric, lower_better = _csv_direction(csv_file, list(table.columns), lower_better)
    numbers = {c: pd.to_numeric(table[c], errors='coerce') for c in table.columns
               if c not in ('path', 'metric', 'lower_better')}
    components = {c: v for c, v in numbers.items() if c == 'score' or v.notna().any()}  # text columns left out
    rows = pd.DataFrame({'key': table['path'], **components})
    return Table(rows, lambda row: _csv_path(rows['key'].iloc[row]), _csv_failures(csv_file), metric, lower_better)


def read_table(csv_file: str | os.PathLike, lower_better: bool | None = None) -> Table:
    """Every row of the collection scored into ``csv_file`` (for the HTML page): from the run's journal if it
    is there, else from the CSV and its ``.errors.csv``; the direction as :func:`read_collection` finds it."""
    csv_file = Path(csv_file)
    journal_file = _run_journal(csv_file)
    if journal_file is None:
        return _csv_table(csv_file, lower_better)
    table = _journal_table(journal_file)
    _check_agrees(csv_file, table.metric, table.lower_better, lower_better)
    return table
