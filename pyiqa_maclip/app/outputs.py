"""The exports of a run: ``scores.csv`` and ``scores.errors.csv``, written whole from the journal.

A run writes over a file only if it is nothing yet, or holds byte for byte what the journal
recorded this run exporting there (size and SHA-256: an inode number says nothing, file
systems reuse them), or is the output the user named with ``--overwrite``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..names import METRIC_COLUMNS
from .files import WorkFiles, refuse_special
from .journal import Journal, JournalError, display_path, write_csv

__all__ = ['claim', 'claim_before_scoring', 'export']

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


def claim_before_scoring(journal: Journal, files: WorkFiles, overwrite: bool) -> None:
    """The plan's check of both exports, before any image is scored."""
    claim(journal, files.output, 'the output', 'pass --overwrite to replace it, or choose another --output',
          overwrite=overwrite)
    claim(journal, files.errors, 'the errors file', 'move it away, or choose another --output')


def export(journal: Journal, files: WorkFiles, paths: Sequence[str]) -> tuple[int, int]:
    """Write the CSVs from the journal, only over files this run wrote; how many of ``paths`` are
    scored and failed. Every row of the scores CSV ends with the metric and its direction."""
    claim(journal, files.output, 'the output', _APPEARED)
    claim(journal, files.errors, 'the errors file', _APPEARED)
    columns, scored_by = journal.columns, [journal.metric, str(journal.lower_better)]
    scored, failed = journal.tally(paths)
    write_csv(([display_path(os.fsencode(r.path)), *(f'{r.values[c]:.9g}' for c in columns), *scored_by]
               for r in journal.results(paths) if r.error is None),
              ['path', *columns, *METRIC_COLUMNS], files.output, files.folder)
    journal.own(files.output)
    if failed:
        write_csv(([display_path(os.fsencode(r.path)), r.error] for r in journal.results(paths) if r.error is not None),
                  ['path', 'error'], files.errors, files.folder)
        journal.own(files.errors)
    elif files.errors.exists():  # no errors, no errors file (this run's: claim checked it)
        files.errors.unlink()
        journal.own(files.errors, None)
    return scored, failed
