"""What a report shows: the finite scores, the rows at evenly spaced quantiles from worst to best, failures.

The metric's direction decides what "worst" is. A run's journal (``score`` keeps it beside the
output) gives scores, paths or samples, failures and the metric; without one, the scores file
(CSV or Parquet, rows named by ``path`` or by ``key`` and ``shard``: :mod:`.exports`) is read:
its ``score`` column whole, its names in chunks (a million rows take seconds), the direction
from its ``metric`` / ``lower_better`` columns or from the caller, failures from the errors
file beside it. Rows whose score is empty, NaN or infinite are counted as unscored. The HTML
page shows every row (:func:`read_table`: scores, components, failures with their reasons), from
the same sources; rows are named by :func:`label` whichever the source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ...errors import UserError
from ..files import shown
from ..sources import Sample
from . import exports

if TYPE_CHECKING:
    import pandas as pd

__all__ = ['MARKED_QUANTILES', 'Selection', 'Collection', 'Table', 'select_quantiles', 'read_selection',
           'read_collection', 'read_table', 'label']

#: Quantiles of the scores marked on the histogram.
MARKED_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
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

    rows: pd.DataFrame  # key (:func:`label`), score (NaN where unscored), components
    file_of: Callable[[int], str | Sample]  # the file or sample of a row, by its position
    failed: pd.DataFrame  # key, error
    metric: str  # '' when the scores do not say
    lower_better: bool
    image_of: Callable[[int], str | Sample] | None = None  # what a thumbnail reads, if not file_of's

    def image(self, row: int) -> str | Sample:
        """What the thumbnail of a row reads (:func:`~.thumbnails.read_thumbnail`)."""
        return (self.image_of or self.file_of)(row)


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


def _check_agrees(source: Path, metric: str, known: bool, given: bool | None) -> None:
    """A :class:`UserError` if the direction the user gave contradicts the one ``source`` records."""
    if given is not None and given != known:
        raise UserError(f'{shown(source)} was made by {metric}, for which {"lower" if known else "higher"} is '
                        f'better: drop {_DIRECTION_FLAGS}')


def _direction(scores_file: Path, header: list[str], lower_better: bool | None) -> tuple[str, bool]:
    """The metric and its direction, from the first ``metric``/``lower_better`` values, else ``lower_better``."""
    if {'metric', 'lower_better'} <= set(header):
        first = next(exports.chunks(scores_file, ['metric', 'lower_better'], 1), None)
        if first is not None and len(first):
            metric, stored = str(first['metric'].iloc[0]), str(first['lower_better'].iloc[0]).strip().lower()
            if stored not in ('true', 'false'):
                raise UserError(f'{shown(scores_file)}: lower_better is {stored!r}: expected True or False')
            _check_agrees(scores_file, metric, stored == 'true', lower_better)
            return metric, stored == 'true'
    if lower_better is None:
        raise UserError(f'{shown(scores_file)} does not say which metric made it (no metric and lower_better '
                        f'columns): pass {_DIRECTION_FLAGS}')
    return '', lower_better


def label(source: str, key: str) -> str:
    """How a report names a row: an image file by its path as the CSV writes it; a sample as
    ``<shard>, key <key>`` (:func:`~..explain.sample_label`, through :func:`~..files.shown`)."""
    from ..explain import sample_label
    from ..journal import display_path

    return sample_label(Sample(source, key)) if source else display_path(os.fsencode(key))


def _failures(scores_file: Path) -> pd.DataFrame:
    """``key, error`` of the ``.errors.csv`` beside ``scores_file`` (none if it is not there), keys labelled
    as :func:`label` does."""
    import pandas as pd

    from ..files import WorkFiles

    errors = WorkFiles(scores_file.absolute()).errors
    if not errors.is_file():
        return pd.DataFrame({'key': [], 'error': []}, dtype=str)
    columns = exports.header(errors, exports.ERRORS_WRITTEN_BY)
    names = exports.names_in(errors, columns, exports.ERRORS_WRITTEN_BY)
    if 'error' not in columns:
        raise UserError(f'{shown(errors)} has no error column (columns: {", ".join(columns)}): expected '
                        f'{exports.ERRORS_WRITTEN_BY}')
    failed = exports.read(errors, [*names, 'error'], exports.ERRORS_WRITTEN_BY)
    keys = failed['path'] if len(names) == 1 else [label(s.source, s.key) for s in map(
        exports.identity, failed['key'], failed['shard'])]
    return pd.DataFrame({'key': keys, 'error': failed['error']}, dtype=str)


def read_selection(scores_file: str | os.PathLike, count: int, lower_better: bool | None = None) -> Collection:
    """The collection of a scores file (CSV or Parquet) and its ``.errors.csv``; ``lower_better`` for one
    without the ``metric``/``lower_better`` columns. Samples get their shard's locator (:class:`~.exports.Shards`)."""
    import pandas as pd

    scores_file = Path(scores_file)
    header = exports.header(scores_file)
    if 'score' not in header:
        raise UserError(f'{shown(scores_file)} has no score column (columns: {", ".join(header)}): expected the '
                        'scores written by pyiqa-maclip score')
    names = exports.names_in(scores_file, header)
    metric, lower_better = _direction(scores_file, header, lower_better)
    scores = pd.to_numeric(exports.read(scores_file, ['score'])['score'], errors='coerce').to_numpy(dtype=float)
    shards = exports.Shards()

    def paths_at(rows):
        return [shards(exports.identity(*found)) for found in exports.rows_at(scores_file, rows, names)]

    return _collection(scores, count, paths_at, len(_failures(scores_file)), metric, lower_better,
                       shown(scores_file))


def _as_written(value: float) -> float:
    """``value`` as the scores CSV holds it (``outputs.export`` writes 9 significant digits), so that a page
    made from the journal keeps and drops exactly the rows ``select`` keeps and drops in the CSV."""
    return float(f'{value:.9g}')


def _journal_table(journal_file: Path) -> Table:
    """Every result of a run's journal, in the order stored, its numbers as the CSV writes them; keys are
    :func:`label`'s."""
    import pandas as pd

    from ..journal import Journal

    with Journal(journal_file) as journal:
        columns, rows, paths, failed = journal.columns, [], [], []
        for result in journal.results():
            key = label(result.source, result.key)
            if result.error is not None:
                failed.append((key, result.error))
                continue
            paths.append(result.sample if result.source else result.key)
            rows.append((key, *(_as_written(result.values.get(c, np.nan)) for c in columns)))
        metric, lower_better = journal.metric, journal.lower_better
    table = pd.DataFrame(rows, columns=['key', *columns]).astype({c: float for c in columns})
    shards = exports.Shards()  # a shard rewritten since: its samples are found again by key, or not pictured
    return Table(table, paths.__getitem__, pd.DataFrame(failed, columns=['key', 'error'], dtype=str), metric,
                 lower_better, lambda row: shards(paths[row]))


def _read_journal(journal_file: Path, count: int) -> Collection:
    """The collection of a run's journal: every stored result, failures counted apart."""
    table = _journal_table(journal_file)
    scores = table.rows['score'].to_numpy(dtype=float) if 'score' in table.rows else np.full(len(table.rows), np.nan)
    return _collection(scores, count, lambda rows: [table.image(r) for r in rows], len(table.failed), table.metric,
                       table.lower_better, str(journal_file))


def _run_journal(scores_file: Path) -> Path | None:
    """The journal of the run that wrote ``scores_file``, if it is there."""
    from ..files import WorkFiles

    journal_file = WorkFiles(scores_file.absolute()).journal(0)
    return journal_file if journal_file.is_file() else None


def read_collection(scores_file: str | os.PathLike, count: int, lower_better: bool | None = None) -> Collection:
    """The collection scored into ``scores_file``: from the run's journal if it is there (its metric decides the
    direction; a contradicting ``lower_better`` is refused), else from the file (see :func:`read_selection`)."""
    scores_file = Path(scores_file)
    journal_file = _run_journal(scores_file)
    if journal_file is None:
        return read_selection(scores_file, count, lower_better)
    collection = _read_journal(journal_file, count)
    _check_agrees(scores_file, collection.metric, collection.lower_better, lower_better)
    return collection


def _file_table(scores_file: Path, lower_better: bool | None) -> Table:
    """Every row of a scores file: keys as :func:`label` names them, numeric columns as score and components."""
    import pandas as pd

    table = exports.read(scores_file)
    names = exports.names_in(scores_file, list(table.columns))
    if 'score' not in table.columns:
        raise UserError(f'{shown(scores_file)} has no score column (columns: {", ".join(table.columns)}): expected '
                        'the scores written by pyiqa-maclip score')
    metric, lower_better = _direction(scores_file, list(table.columns), lower_better)
    numbers = {c: pd.to_numeric(table[c], errors='coerce') for c in table.columns
               if c not in (*names, 'metric', 'lower_better')}
    components = {c: v for c, v in numbers.items() if c == 'score' or v.notna().any()}  # text columns left out
    if len(names) == 1:
        keys, file_of = table['path'], lambda row: exports.identity(table['path'].iloc[row])
    else:
        samples = list(map(exports.identity, table['key'], table['shard']))
        keys, file_of = [label(s.source, s.key) for s in samples], samples.__getitem__
    shards = exports.Shards()
    rows = pd.DataFrame({'key': keys, **components}).astype({'key': str})
    return Table(rows, file_of, _failures(scores_file), metric, lower_better, lambda row: shards(file_of(row)))


def read_table(scores_file: str | os.PathLike, lower_better: bool | None = None) -> Table:
    """Every row of the collection scored into ``scores_file`` (for the HTML page): from the run's journal if
    it is there, else from the file (CSV or Parquet) and its ``.errors.csv``; the direction as
    :func:`read_collection` finds it."""
    scores_file = Path(scores_file)
    journal_file = _run_journal(scores_file)
    if journal_file is None:
        return _file_table(scores_file, lower_better)
    table = _journal_table(journal_file)
    _check_agrees(scores_file, table.metric, table.lower_better, lower_better)
    return table
