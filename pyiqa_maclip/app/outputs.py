"""The exports of a run: ``scores.csv`` (or ``scores.parquet``) and ``scores.errors.csv``, written whole
from the journal.

Image files are named by a ``path`` column (:func:`~.journal.display_path`); samples of shards,
Parquet files and datasets by ``key`` and ``shard`` (the source's absolute path). Parquet exports
need pyarrow, imported only for them.

A run writes over a file only if it is nothing yet, or holds byte for byte what the journal
recorded this run exporting there (size and SHA-256: an inode number says nothing, file
systems reuse them), or is the output the user named with ``--overwrite``.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import UserError
from ..names import EMBEDDING_COLUMN, METRIC_COLUMNS
from .files import WorkFiles, refuse_special
from .journal import Journal, JournalError, Result, display_path, write_csv
from .sources import Sample

__all__ = ['PARQUET_SUFFIX', 'check_output_kind', 'claim', 'claim_before_scoring', 'export', 'write_parquet']

PARQUET_SUFFIX = '.parquet'
_ROWS_PER_GROUP = 65536

#: Why the exports of a finished run may be refused at its end, and what to do.
_APPEARED = ('it appeared during the run; move it away and run the same command again to export the results, '
             'which are kept in the journal')


def claim(journal: Journal, path: Path, what: str, hint: str, overwrite: bool = False) -> None:
    """Make sure this run may write ``path``: nothing there, or a regular file holding what it exported
    there (or, with ``overwrite``, any regular file: the output the user named); else a
    :class:`JournalError` naming the file in the way."""
    refuse_special(path, what)
    if not path.exists() or journal.owns(path):
        return
    if not overwrite:
        raise JournalError(f'{what} {path} is in the way: it was not written by this run; {hint}')
    journal.own(path)


def check_output_kind(output: Path, embeddings: bool) -> None:
    """A :class:`UserError` for embeddings asked of a CSV output (they go in a Parquet list column)."""
    if embeddings and output.suffix.lower() != PARQUET_SUFFIX:
        raise UserError(f'--embeddings needs a Parquet output (-o NAME.parquet), got {output.name}: the embedding is '
                        'a list column')


def claim_before_scoring(journal: Journal, files: WorkFiles, overwrite: bool) -> None:
    """The plan's check of both exports, before any image is scored."""
    claim(journal, files.output, 'the output', 'pass --overwrite to replace it, or choose another --output',
          overwrite=overwrite)
    claim(journal, files.errors, 'the errors file', 'move it away, or choose another --output')


def _names(result: Result, files: bool) -> list[str]:
    """The columns naming a result: its path, or its key and shard."""
    names = (result.key,) if files else (result.key, result.source)
    return [display_path(os.fsencode(name)) for name in names]


def write_parquet(rows: Iterable[Sequence], header: Sequence[str], types: Sequence, path: Path,
                  temporary_dir: Path | None = None) -> None:
    """Write ``rows`` as a Parquet file (atomically, as :func:`~.files.write_file`), a row group per
    65,536 rows; ``types`` are pyarrow types, or their names ('string', 'float64', 'bool_')."""
    from .files import write_file
    from .sources.parquet import import_pyarrow

    pa = import_pyarrow()
    schema = pa.schema([(name, getattr(pa, kind)() if isinstance(kind, str) else kind)
                        for name, kind in zip(header, types)])
    rows = iter(rows)
    with write_file(path, 'wb', temporary_dir=temporary_dir) as file, pa.parquet.ParquetWriter(file, schema) as out:
        while chunk := list(itertools.islice(rows, _ROWS_PER_GROUP)):
            out.write_table(pa.Table.from_pylist([dict(zip(header, row)) for row in chunk], schema=schema))


def _parquet_type(column: str, first: Result | None):
    """float64, or for the embedding a fixed-size list of float32 (its size from the first result)."""
    if column != EMBEDDING_COLUMN:
        return 'float64'
    from .sources.parquet import import_pyarrow

    pa = import_pyarrow()
    return pa.list_(pa.float32(), len(first.values[column]) // 4 if first else 0)


def _parquet_value(value):
    import numpy as np

    return np.frombuffer(value, dtype=np.float32) if isinstance(value, bytes) else value


def _write_scores(journal: Journal, files: WorkFiles, samples: Sequence[Sample], by_path: bool) -> None:
    columns, metric, lower_better = journal.columns, journal.metric, journal.lower_better
    names = ['path'] if by_path else ['key', 'shard']
    header = [*names, *columns, *METRIC_COLUMNS]
    scored = (r for r in journal.results(samples) if r.error is None)
    if files.output.suffix.lower() == PARQUET_SUFFIX:
        scored, ahead = itertools.tee(scored)
        first = next(ahead, None)
        types = ['string'] * len(names) + [_parquet_type(c, first) for c in columns] + ['string', 'bool_']
        write_parquet(([*_names(r, by_path), *(_parquet_value(r.values[c]) for c in columns), metric, lower_better]
                       for r in scored), header, types, files.output, files.folder)
    else:
        write_csv(([*_names(r, by_path), *(f'{r.values[c]:.9g}' for c in columns), metric, str(lower_better)]
                   for r in scored), header, files.output, files.folder)


def export(journal: Journal, files: WorkFiles, samples: Sequence[Sample]) -> tuple[int, int]:
    """Write the exports from the journal, only over files this run wrote; how many of ``samples`` are
    scored and failed. Every row of the scores ends with the metric and its direction."""
    claim(journal, files.output, 'the output', _APPEARED)
    claim(journal, files.errors, 'the errors file', _APPEARED)
    scored, failed = journal.tally(samples)
    by_path = all(not s.source for s in samples)
    _write_scores(journal, files, samples, by_path)
    journal.own(files.output)
    if failed:
        write_csv(([*_names(r, by_path), r.error] for r in journal.results(samples) if r.error is not None),
                  [*(['path'] if by_path else ['key', 'shard']), 'error'], files.errors, files.folder)
        journal.own(files.errors)
    elif files.errors.exists():  # no errors, no errors file (this run's: claim checked it)
        files.errors.unlink()
        journal.own(files.errors, None)
    return scored, failed
