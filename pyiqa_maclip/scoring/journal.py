"""The journal: finished results in SQLite, committed per batch; the CSVs are exports of it.

One journal file per scoring process (``rank<N>.sqlite3`` in the run's work
folder), so processes on different machines never write the same file. SQLite
commits survive ``kill -9`` at any instant. A path is stored as its bytes
(``os.fsencode``), so every name the file system allows is one row. Nothing is
ever parsed back out of an exported CSV.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from ..safe_io import atomic_file

__all__ = ['VALUE_COLUMNS', 'OutputConflictError', 'Result', 'Journal', 'display_path', 'file_path', 'export_csv']

#: Every value a result can hold; a scorer fills a prefix-free subset (others stay NULL).
VALUE_COLUMNS = ('score', 'q_sim', 'q_mag', 'w_sim', 'w_mag')
_APPLICATION_ID = 0x4D41434C  # 'MACL': marks files this package made
_SCHEMA = f'''
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    path BLOB NOT NULL UNIQUE, {", ".join(f"{c} REAL" for c in VALUE_COLUMNS)}, error TEXT
);
'''
# A success is never replaced by a failure; a failure is replaced by a later attempt.
_COLUMNS = ', '.join(('path', *VALUE_COLUMNS, 'error'))
_ON_CONFLICT = (f'ON CONFLICT (path) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in VALUE_COLUMNS)}, '
                'error = excluded.error WHERE results.error IS NOT NULL OR excluded.error IS NULL')
_UPSERT = f'INSERT INTO results ({_COLUMNS}) VALUES ({", ".join("?" * (len(VALUE_COLUMNS) + 2))}) {_ON_CONFLICT}'


class OutputConflictError(FileExistsError):
    """The output cannot be continued by this run: made with other settings, not made by this
    package, another run is writing it, or it is one of the inputs.

    ``problem`` says what is wrong; ``fixable`` is whether starting afresh (overwrite) would fix it.
    """

    def __init__(self, problem: str, fixable: bool = True) -> None:
        self.problem, self.fixable = problem, fixable
        super().__init__(problem + ('; pass overwrite=True to start afresh, or choose another output' if fixable else ''))


class Result(NamedTuple):
    """One image's outcome: values by column name, or the error that stopped it."""

    path: str
    values: dict[str, float] | None
    error: str | None


def display_path(raw: bytes) -> str:
    """A stored path as CSV text: itself if valid UTF-8, else each other byte as ``\\xNN``."""
    return raw.decode('utf-8', 'backslashreplace')


def file_path(text: str) -> str:
    """The file a CSV ``path`` names: ``text`` itself, or, if no such file exists, ``text`` with
    its ``\\xNN`` escapes turned back into bytes (the inverse of :func:`display_path`)."""
    if os.path.lexists(text) or '\\x' not in text:
        return text
    raw = re.sub(rb'\\x([0-9a-f]{2})', lambda m: bytes([int(m[1], 16)]), text.encode('utf-8'))
    return os.fsdecode(raw)


class Journal:
    """One SQLite journal file; created with the schema if missing."""

    def __init__(self, file: str | os.PathLike) -> None:
        self.file = Path(file)
        # An empty file is what a kill leaves when it strikes as SQLite creates the file.
        existed = self.file.exists() and self.file.stat().st_size > 0
        try:
            self._db = sqlite3.connect(self.file, timeout=60, isolation_level=None)
            if existed and self._db.execute('PRAGMA application_id').fetchone()[0] != _APPLICATION_ID:
                raise sqlite3.DatabaseError('no pyiqa-maclip application id')
        except sqlite3.DatabaseError:
            self.close()
            raise OutputConflictError(f'{self.file} exists but is not a journal of pyiqa-maclip; '
                                      'move it away or choose another output') from None
        self._db.execute('PRAGMA synchronous = FULL')
        self._db.execute(f'PRAGMA application_id = {_APPLICATION_ID}')
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        if getattr(self, '_db', None) is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def fingerprint(self) -> dict | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        return None if row is None else json.loads(row[0])

    @fingerprint.setter
    def fingerprint(self, value: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('fingerprint', ?)", (json.dumps(value, sort_keys=True),))

    def record(self, results: Sequence[Result]) -> None:
        """Commit ``results`` in one transaction (non-finite values are stored as errors)."""
        rows = []
        for result in results:
            values, error = result.values or {}, result.error
            if error is None and not all(math.isfinite(v) for v in values.values()):
                values, error = {}, f'ValueError: non-finite value {values}'
            rows.append((os.fsencode(result.path), *(values.get(c) for c in VALUE_COLUMNS), error))
        with self._db:
            self._db.execute('BEGIN IMMEDIATE')
            self._db.executemany(_UPSERT, rows)

    def finished(self, retry_failed: bool = False) -> set[str]:
        """Paths with a result: scored ones, and failed ones unless ``retry_failed``."""
        where = ' WHERE error IS NULL' if retry_failed else ''
        return {os.fsdecode(raw) for (raw,) in self._db.execute(f'SELECT path FROM results{where}')}

    def _want(self, paths: Sequence[str]) -> None:
        """Put ``paths`` and their positions in the temporary table ``wanted``."""
        self._db.execute('CREATE TEMP TABLE IF NOT EXISTS wanted (path BLOB PRIMARY KEY, position INTEGER)')
        self._db.execute('DELETE FROM temp.wanted')
        self._db.executemany('INSERT OR IGNORE INTO temp.wanted VALUES (?, ?)',
                             ((os.fsencode(p), i) for i, p in enumerate(paths)))

    def tally(self, paths: Sequence[str]) -> tuple[int, int]:
        """How many of ``paths`` are scored, and how many failed."""
        self._want(paths)
        scored, failed = self._db.execute('SELECT COUNT(r.score), COUNT(r.error) FROM results r '
                                          'JOIN temp.wanted w ON w.path = r.path').fetchone()
        return scored, failed

    def results(self, paths: Sequence[str] | None = None) -> Iterator[Result]:
        """Stored results: those of ``paths`` in that order, then every other in the order stored.

        With ``paths=None``, every result in the order stored.
        """
        self._want(paths or [])
        order = 'w.position IS NULL, w.position, ' if paths is not None else ''
        query = (f'SELECT r.path, {", ".join(f"r.{c}" for c in VALUE_COLUMNS)}, r.error FROM results r '
                 f'LEFT JOIN temp.wanted w ON w.path = r.path ORDER BY {order}r.rowid')
        for raw, *values, error in self._db.execute(query):
            named = None if error is not None else {c: v for c, v in zip(VALUE_COLUMNS, values) if v is not None}
            yield Result(os.fsdecode(raw), named, error)

    def absorb(self, other: str | os.PathLike) -> None:
        """Copy every result of another journal file into this one, in one transaction."""
        with Journal(other):  # refuses a file that is not a journal
            pass
        self._db.execute('ATTACH DATABASE ? AS other', (os.fspath(other),))
        try:
            with self._db:
                self._db.execute('BEGIN IMMEDIATE')
                # 'WHERE true' lets SQLite tell the upsert's ON from a join's.
                self._db.execute(f'INSERT INTO results ({_COLUMNS}) SELECT {_COLUMNS} FROM other.results '
                                 f'WHERE true ORDER BY rowid {_ON_CONFLICT}')
        finally:
            self._db.execute('DETACH DATABASE other')


def export_csv(results: Iterator[Result], scores: Path, errors: Path, columns: Sequence[str]) -> tuple[int, int]:
    """Write ``scores`` (path + ``columns``) and ``errors`` (path, error) atomically.

    RFC 4180 CSV (CRLF rows; a field with a comma, quote, CR or LF is quoted), UTF-8.
    Values are written with 9 significant digits (a float32 exactly, the same text
    every time). The errors file is removed when there is no error. Returns the
    numbers of score and error rows.
    """
    counts = [0, 0]
    with atomic_file(scores, encoding='utf-8', newline='') as score_file, \
            atomic_file(errors, encoding='utf-8', newline='') as error_file:
        score_rows = csv.writer(score_file, lineterminator='\r\n')
        error_rows = csv.writer(error_file, lineterminator='\r\n')
        score_rows.writerow(['path', *columns])
        error_rows.writerow(['path', 'error'])
        for result in results:
            text = display_path(os.fsencode(result.path))
            if result.error is None:
                score_rows.writerow([text, *(f'{result.values[c]:.9g}' for c in columns)])
            else:
                error_rows.writerow([text, result.error])
            counts[result.error is not None] += 1
    if not counts[1]:  # the file written just now: no errors, no errors file
        errors.unlink()
    return counts[0], counts[1]
