"""The journal: finished results in SQLite, committed per batch; CSV files are exports of it.

One journal file per scoring process, so processes on different machines never write the
same file; SQLite commits survive ``kill -9`` at any instant. A journal records its schema
version, the fingerprint of what made its numbers (metric, options, weights, versions) and
the value columns of its scorer, and the pyiqa metric with its direction; it refuses results
of any other (a merge included). A sample is known by its source and key (:mod:`.sources`: an
image file is source ``''`` and key its path), stored as their bytes (``os.fsencode``), so every
name the file system allows is one row, with the locator that reads the sample again;
:func:`display_path` writes a name as CSV text that :func:`decode_path_text` turns back into
exactly those bytes. The main journal of a run also lists the files the run exported (size, time, SHA-256), which are the only files a later run
replaces or deletes, and only while they still hold those bytes. Nothing is ever parsed back
from a CSV.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from ..errors import UserError
from ..names import EMBEDDING_COLUMN
from .files import Content, content, same_content, write_file
from .sources import Sample

__all__ = ['SCHEMA_VERSION', 'JournalError', 'Result', 'Journal', 'differences', 'display_path', 'decode_path_text',
           'write_csv']

# 1: pyiqa-maclip 0.2 (MA-CLIP's five columns, no exports table); 2: exports known by (device, inode);
# 3: exports known by content; 4: samples known by (source, key), with their locator
SCHEMA_VERSION = 4
_APPLICATION_ID = 0x4D41434C  # 'MACL': marks files this package made
_COLUMN = re.compile(r'[a-z_][a-z0-9_]*')
#: What a user of ``pyiqa-maclip score`` can do about a journal this run cannot continue.
START_AFRESH = 'start afresh with --overwrite, or choose another --output'


class JournalError(UserError):
    """A journal cannot be used: not ours, another version's, damaged, other settings, or not writable."""


class Result(NamedTuple):
    """One sample's outcome: values by column name, or the error that stopped it. ``key`` and ``source``
    identify the sample (an image file: its path, and source ``''``); ``locator`` reads it again."""

    key: str
    values: dict[str, float] | None
    error: str | None
    source: str = ''
    locator: tuple | None = None

    @property
    def sample(self) -> Sample:
        return Sample(self.source, self.key, self.locator)


def _identity(sample) -> tuple[bytes, bytes]:
    """How the journal stores a sample's (source, key)."""
    return os.fsencode(sample.source), os.fsencode(sample.key)


def differences(stored: dict, wanted: dict, prefix: str = '') -> list[str]:
    """What differs between two fingerprints, as ``key was X, now Y`` phrases."""
    changes = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += differences(old, new, f'{prefix}{key}.')
        elif old != new:
            changes.append(f'{prefix}{key} was {old!r}, now {new!r}')
    return changes


_ESCAPE = re.compile(r'\\(\\|x[0-9a-fA-F]{2})?')


def display_path(raw: bytes) -> str:
    """A stored path as CSV text, one text per name and back (:func:`decode_path_text`): valid UTF-8
    without a backslash as it is; otherwise each backslash doubled and each byte that is not part of
    valid UTF-8 written ``\\xNN`` (two lower-case hex digits)."""
    return ''.join(map(_escaped, raw.decode('utf-8', 'surrogateescape')))


def _escaped(char: str) -> str:
    if char == '\\':
        return '\\\\'
    if '\udc80' <= char <= '\udcff':  # a byte that is not UTF-8, as surrogateescape holds it
        return f'\\x{ord(char) - 0xDC00:02x}'
    return char


def decode_path_text(text: str) -> str:
    """The path (``os.fsdecode`` of its bytes) that :func:`display_path` wrote as ``text``; a
    :class:`UserError` for a backslash that starts neither ``\\\\`` nor ``\\xNN``."""
    if '\\' not in text:
        return text

    def byte(match: re.Match) -> bytes:
        if match[1] is None:
            raise UserError(f'{text!r} is not a path as pyiqa-maclip writes it: a backslash must start \\\\ or '
                            '\\xNN (two hex digits)')
        return b'\\' if match[1] == '\\' else bytes([int(match[1][1:], 16)])

    raw, end = b'', 0
    for match in _ESCAPE.finditer(text):
        raw += text[end:match.start()].encode('utf-8', 'surrogateescape') + byte(match)
        end = match.end()
    return os.fsdecode(raw + text[end:].encode('utf-8', 'surrogateescape'))


class Journal:
    """One SQLite journal file. ``Journal(file)`` opens an existing one; ``Journal.create`` makes
    a new one (or opens it, if it holds the same fingerprint). Every SQLite failure (a damaged
    page, a vanished or read-only folder) is a :class:`JournalError` naming the file and what to do."""

    def __init__(self, file: str | os.PathLike, *, _new: tuple[dict, Sequence[str], str, bool] | None = None,
                 advice: str = START_AFRESH) -> None:
        self.file, self.advice = Path(file), advice
        self._db = None
        # An empty file is what a kill leaves when it strikes as SQLite creates the file.
        if _new is None and not (self.file.is_file() and self.file.stat().st_size > 0):
            raise JournalError(f'the journal {self.file} was lost (missing or empty): the results of its runs are '
                               f'gone; {self.advice}')
        with self._errors('open'):
            self._db = sqlite3.connect(self.file, timeout=60, isolation_level=None)
            application, version = (self._db.execute(f'PRAGMA {p}').fetchone()[0] for p in ('application_id',
                                                                                          'user_version'))
            foreign = application == 0 and (_new is None or self._db.execute(
                'SELECT COUNT(*) FROM sqlite_master').fetchone()[0])  # another program's SQLite file
            if application not in (0, _APPLICATION_ID) or foreign:
                self.close()
                raise JournalError(f'{self.file} is not a journal of pyiqa-maclip; move it away, or {self.advice}')
            if application == _APPLICATION_ID and version != SCHEMA_VERSION:
                self.close()
                raise JournalError(f'{self.file} was written by another version of pyiqa-maclip (journal schema '
                                   f'{version or 1}, this version writes {SCHEMA_VERSION}); {self.advice}, or finish '
                                   'it with the version that made it')
            self._db.execute('PRAGMA synchronous = FULL')
            if application == 0:
                self._initialise(*_new)
            self.columns = tuple(json.loads(self._meta('columns')))
        if _new is not None and self.fingerprint != _new[0]:
            stored, empty = self.fingerprint, self.empty
            self.close()
            if not empty:
                raise JournalError(f'{self.file} holds results made with other settings: '
                                   + '; '.join(differences(stored, _new[0])) + f'; {self.advice}')
            self.file.unlink()  # nothing in it yet (the weights of its run failed to load): start it anew
            self.__init__(file, _new=_new, advice=advice)

    @classmethod
    def create(cls, file: str | os.PathLike, fingerprint: dict, columns: Sequence[str], *, metric: str | None = None,
               lower_better: bool = False, advice: str = START_AFRESH) -> Journal:
        """The journal at ``file`` for results of ``fingerprint`` with value ``columns``: a new one, or
        the one there if it was made with the same fingerprint, or holds nothing yet
        (:class:`JournalError` otherwise). A new one records the pyiqa ``metric`` (default: the
        fingerprint's) and ``lower_better``. ``advice`` ends every refusal: what the user can do."""
        # Compared as stored: JSON makes tuples lists (a benchmark's resize (448, 448) is [448, 448]).
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        metric = fingerprint.get('metric', '') if metric is None else metric
        return cls(file, _new=(fingerprint, tuple(columns), metric, bool(lower_better)), advice=advice)

    @property
    def empty(self) -> bool:
        """Whether nothing is recorded yet: no result, no export."""
        with self._errors('read'):
            return not any(self._db.execute(f'SELECT 1 FROM {table} LIMIT 1').fetchone()
                           for table in ('results', 'exports'))

    def _initialise(self, fingerprint: dict, columns: Sequence[str], metric: str, lower_better: bool) -> None:
        reserved = ('source', 'key', 'locator', 'error')
        if not columns or not all(isinstance(c, str) and _COLUMN.fullmatch(c) and c not in reserved for c in columns):
            raise ValueError(f'journal columns must be lower-case identifiers, got {columns!r}')
        values = ', '.join(f'{c} {"BLOB" if c == EMBEDDING_COLUMN else "REAL"}' for c in columns)
        with self._db:
            self._db.execute('BEGIN IMMEDIATE')
            self._db.execute('CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)')
            self._db.execute(f'CREATE TABLE results (source BLOB NOT NULL, key BLOB NOT NULL, locator TEXT, '
                             f'{values}, error TEXT, UNIQUE (source, key))')
            self._db.execute('CREATE TABLE exports (path BLOB PRIMARY KEY, size INTEGER NOT NULL, '
                             'mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL)')
            self._db.executemany('INSERT INTO meta VALUES (?, ?)', [
                ('fingerprint', json.dumps(fingerprint, sort_keys=True)), ('columns', json.dumps(list(columns))),
                ('metric', metric), ('lower_better', json.dumps(lower_better))])
            self._db.execute(f'PRAGMA application_id = {_APPLICATION_ID}')
            self._db.execute(f'PRAGMA user_version = {SCHEMA_VERSION}')

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as error:
            self.close()
            if isinstance(error, sqlite3.OperationalError):  # the folder vanished, is read-only, the disk is full
                advice = ('the results committed before are kept in it; fix the folder and run the same command '
                          f'again to resume, or {self.advice}')
            else:
                advice = f'it is damaged; {self.advice}'
            raise JournalError(f'cannot {doing} the journal {self.file}: {error}; {advice}') from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute('SELECT value FROM meta WHERE key = ?', (key,)).fetchone()
        return None if row is None else row[0]

    @property
    def fingerprint(self) -> dict:
        with self._errors('read'):
            return json.loads(self._meta('fingerprint'))

    @property
    def metric(self) -> str:
        """The pyiqa metric whose numbers this journal holds (``'maclip'``, ``'piqe'``, ...)."""
        with self._errors('read'):
            return self._meta('metric')

    @property
    def lower_better(self) -> bool:
        """Whether lower scores mean better images (pyiqa's ``lower_better`` of the metric)."""
        with self._errors('read'):
            return json.loads(self._meta('lower_better'))

    @property
    def seconds(self) -> float:
        """Seconds spent scoring into this journal, over every run (:meth:`add_seconds`)."""
        with self._errors('read'):
            return float(self._meta('seconds') or 0.0)

    def add_seconds(self, seconds: float) -> None:
        with self._errors('write'):
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('seconds', ?)", (str(self.seconds + seconds),))

    # ---------------------------------------------------------------- results

    def record(self, results: Sequence[Result]) -> None:
        """Commit ``results`` in one transaction (non-finite values are stored as errors).

        A success is never replaced by a failure; a failure is replaced by a later attempt.
        """
        rows = []
        for result in results:
            values, error = result.values or {}, result.error
            if error is None and not all(isinstance(v, bytes) or (isinstance(v, (int, float)) and math.isfinite(v))
                                         for v in values.values()):
                values, error = {}, f'ValueError: non-finite value {values}'
            locator = None if result.locator is None else json.dumps(result.locator)
            rows.append((*_identity(result), locator, *(values.get(c) for c in self.columns), error))
        with self._errors('write'), self._db:
            self._db.execute('BEGIN IMMEDIATE')
            self._db.executemany(self._upsert('VALUES (' + ', '.join('?' * (len(self.columns) + 4)) + ')'), rows)

    def _upsert(self, rows: str) -> str:
        names = ', '.join(('source', 'key', 'locator', *self.columns, 'error'))
        updates = ', '.join(f'{c} = excluded.{c}' for c in ('locator', *self.columns, 'error'))
        return (f'INSERT INTO results ({names}) {rows} ON CONFLICT (source, key) DO UPDATE SET {updates} '
                'WHERE results.error IS NOT NULL OR excluded.error IS NULL')

    def finished(self, retry_failed: bool = False) -> set[tuple[str, str]]:
        """(source, key) of the samples with a result: scored ones, and failed ones unless ``retry_failed``."""
        where = ' WHERE error IS NULL' if retry_failed else ''
        with self._errors('read'):
            return {(os.fsdecode(source), os.fsdecode(key))
                    for source, key in self._db.execute(f'SELECT source, key FROM results{where}')}

    def _want(self, samples: Iterable) -> None:
        """Put the identities of ``samples`` and their positions in the temporary table ``wanted``."""
        self._db.execute('CREATE TEMP TABLE IF NOT EXISTS wanted (source BLOB, key BLOB, position INTEGER, '
                         'PRIMARY KEY (source, key))')
        self._db.execute('DELETE FROM temp.wanted')
        self._db.executemany('INSERT OR IGNORE INTO temp.wanted VALUES (?, ?, ?)',
                             ((*_identity(s), i) for i, s in enumerate(samples)))

    def tally(self, samples: Sequence) -> tuple[int, int]:
        """How many of ``samples`` (anything with ``source`` and ``key``) are scored, and how many failed."""
        with self._errors('read'):
            self._want(samples)
            return self._db.execute('SELECT COUNT(*) - COUNT(r.error), COUNT(r.error) FROM results r '
                                    'JOIN temp.wanted w ON w.source = r.source AND w.key = r.key').fetchone()

    def results(self, samples: Sequence | None = None) -> Iterator[Result]:
        """Stored results: those of ``samples`` in that order, then every other in the order stored
        (with ``samples=None``, every result in the order stored)."""
        with self._errors('read'):
            self._want(samples or [])
            order = 'w.position IS NULL, w.position, ' if samples is not None else ''
            rows = self._db.execute(
                f'SELECT r.source, r.key, r.locator, {", ".join(f"r.{c}" for c in self.columns)}, r.error '
                'FROM results r LEFT JOIN temp.wanted w ON w.source = r.source AND w.key = r.key '
                f'ORDER BY {order}r.rowid')
            for source, key, locator, *values, error in rows:
                named = None if error is not None else {c: v for c, v in zip(self.columns, values) if v is not None}
                yield Result(os.fsdecode(key), named, error, os.fsdecode(source),
                             None if locator is None else tuple(json.loads(locator)))

    def absorb(self, other: str | os.PathLike) -> None:
        """Copy every result of another process's journal into this one, in one transaction.

        Refused (:class:`JournalError`, nothing copied) unless ``other`` was made with this
        journal's fingerprint: results of other weights or options never mix.
        """
        with Journal(other) as theirs:
            if theirs.fingerprint != self.fingerprint:
                raise JournalError(f'{other} holds results made with other settings than this run, and was not '
                                   'merged: ' + '; '.join(differences(self.fingerprint, theirs.fingerprint))
                                   + f'; move it away, or {self.advice}')
        names = ', '.join(('source', 'key', 'locator', *self.columns, 'error'))
        with self._errors('merge into'):
            self._db.execute('ATTACH DATABASE ? AS other', (os.fspath(other),))
            try:
                with self._db:
                    self._db.execute('BEGIN IMMEDIATE')
                    # 'WHERE true' lets SQLite tell the upsert's ON from a join's.
                    self._db.execute(self._upsert(f'SELECT {names} FROM other.results WHERE true ORDER BY rowid'))
            finally:
                self._db.execute('DETACH DATABASE other')

    # ---------------------------------------------------------------- files the run exported

    def exported(self, path: Path) -> Content | None:
        """What this run last exported to ``path`` (size, time, SHA-256), or None."""
        with self._errors('read'):
            row = self._db.execute('SELECT size, mtime_ns, sha256 FROM exports WHERE path = ?',
                                   (os.fsencode(path),)).fetchone()
        return None if row is None else Content(*row)

    def owns(self, path: Path) -> bool:
        """Whether the file at ``path`` holds, byte for byte, what this run last exported there."""
        return same_content(path, self.exported(path))

    def own(self, path: Path, file: Content | None = None) -> None:
        """Record the file now at ``path`` (or the recorded ``file``) as this run's; forget ``path``
        if there is none."""
        file = content(path) if file is None else file
        with self._errors('write'):
            if file is None:
                self._db.execute('DELETE FROM exports WHERE path = ?', (os.fsencode(path),))
            else:
                self._db.execute('INSERT OR REPLACE INTO exports VALUES (?, ?, ?, ?)', (os.fsencode(path), *file))


def write_csv(rows: Iterable[Sequence], header: Sequence[str], path: Path, temporary_dir: Path | None = None) -> int:
    """Write an RFC 4180 CSV atomically: CRLF rows (a field with a comma, quote, CR or LF is quoted;
    Python's writer leaves a bare CR unquoted with '\\n' line ends), UTF-8. Returns the row count."""
    count = 0
    with write_file(path, encoding='utf-8', newline='', temporary_dir=temporary_dir) as file:
        writer = csv.writer(file, lineterminator='\r\n')
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count
