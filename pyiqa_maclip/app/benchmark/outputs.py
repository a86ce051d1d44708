"""Where a benchmark run puts its files, and the record that makes them its own.

An output folder is the benchmark's only through that record: ``journal/outputs.sqlite3``
lists every file a run wrote, by path, size, modification time and SHA-256. A file is
replaced only if it is, byte for byte, one the record says was written there; anything
else at a path a run would write (a user's ``summary.csv``, an edited output, a file of an
earlier version that kept no record) is refused by name before anything is scored. A new
content is recorded before it replaces the file and the older entries dropped after, so a
run killed in between still knows both. Torch-free: the command line checks before torch loads.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ...errors import UserError
from ..files import kind_of, shown, write_file
from .specs import file_stem

__all__ = ['Layout', 'OutputRecord', 'OutputInTheWay']

_SCHEMA = ('CREATE TABLE IF NOT EXISTS written (path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER, '
           'sha256 TEXT NOT NULL, PRIMARY KEY (path, sha256))')


class OutputInTheWay(UserError):
    """A file at a path the run writes is not one it recorded writing, or the record is unreadable."""


class Layout:
    """Where a run puts its files (``scores/<metric>/<dataset>.csv`` and the like, names by :func:`file_stem`)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.scores = self.root / 'scores'
        self.plots = self.root / 'plots'
        self.journals = self.root / 'journal'
        self.tables = tuple(self.root / name for name in ('summary.csv', 'comparisons.csv', 'summary.md',
                                                          'summary.html'))
        self.bars = self.plots / 'srcc_bars.png'

    def scores_csv(self, metric: str, dataset: str) -> Path:
        return self.scores / file_stem(metric) / f'{file_stem(dataset)}.csv'

    def scatter(self, metric: str, dataset: str) -> Path:
        return self.plots / file_stem(metric) / f'scatter_{file_stem(dataset)}.png'

    def qsim_qmag(self, metric: str, dataset: str) -> Path:
        return self.plots / file_stem(metric) / f'qsim_qmag_{file_stem(dataset)}.png'

    def journal(self, fingerprint: dict) -> Path:
        """The journal of one model on one dataset preprocessing, named by a digest of its fingerprint."""
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        return self.journals / f'{digest[:32]}.sqlite3'

    def outputs(self, metrics: Iterable[str], datasets: Iterable[str]) -> list[Path]:
        """Every file a run of these metrics on these datasets may write, journals aside."""
        datasets = list(datasets)
        per_pair = [make(metric, dataset) for metric in metrics for dataset in datasets
                    for make in (self.scores_csv, self.scatter, self.qsim_qmag)]
        return [*self.tables, self.bars, *per_pair]

    def check(self, metrics: Iterable[str], datasets: Iterable[str]) -> None:
        """A :class:`UserError` unless the folder is new, empty, or an earlier benchmark's whose files
        at the paths this run writes are all, byte for byte, what its record says it wrote."""
        if not self.root.is_dir() or not any(self.root.iterdir()):
            return
        if not self.journals.is_dir():
            raise OutputInTheWay(f'--output-dir {shown(self.root)} is not empty and holds no results of pyiqa-maclip '
                            f'(no {self.journals.name}/ folder in it): choose a new or empty folder')
        OutputRecord(self.journals).check(self.outputs(metrics, datasets))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # nothing there; a file in place of a folder fails the write
        return None


class OutputRecord:
    """The files a benchmark wrote into one output folder (``<journals>/outputs.sqlite3``)."""

    NAME = 'outputs.sqlite3'

    def __init__(self, journals: Path) -> None:
        self.file = journals / self.NAME
        self.root = journals.parent

    @contextlib.contextmanager
    def _db(self, create: bool) -> Iterator[sqlite3.Connection | None]:
        if not create and not self.file.exists():
            yield None
            return
        try:
            with contextlib.closing(sqlite3.connect(self.file, timeout=60, isolation_level=None)) as db:
                db.execute(_SCHEMA)
                yield db
        except sqlite3.DatabaseError as error:
            raise OutputInTheWay(f'the record of the files this benchmark wrote, {shown(self.file)}, is not readable '
                            f'({error}): move the results out of {shown(self.root)} or choose another folder') from None

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _recorded(self, db: sqlite3.Connection | None, path: Path) -> set[tuple[int, str]]:
        if db is None:
            return set()
        return set(db.execute('SELECT size, sha256 FROM written WHERE path = ?', (self._key(path),)))

    def check(self, paths: Iterable[Path]) -> None:
        """A :class:`UserError` naming the first of ``paths`` that holds something this record did not write."""
        with self._db(create=False) as db:
            for path in paths:
                if kind := kind_of(path):
                    raise OutputInTheWay(f'--output-dir: {shown(path)} is {kind}: pyiqa-maclip writes only regular '
                                         'files, never through or over a link, a device, a FIFO or a folder')
                data = _read(path)
                # Size and content decide: a file with the bytes written is ours whatever its time or inode.
                if data is not None and (len(data), _digest(data)) not in self._recorded(db, path):
                    raise OutputInTheWay(
                        f'--output-dir: {shown(path)} is not a file this benchmark wrote (a file of yours, an output '
                        'changed since it was written, or one written before pyiqa-maclip kept this record): it '
                        'replaces only files it recorded writing; move it away or choose another --output-dir')

    def write(self, files: Mapping[Path, bytes]) -> None:
        """Write each file (atomically, only if its bytes change), recording its new content first:
        every file this replaces must pass :meth:`check`."""
        self.check(files)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with self._db(create=True) as db:
            db.executemany('INSERT OR IGNORE INTO written (path, size, sha256) VALUES (?, ?, ?)',
                           [(self._key(path), len(data), _digest(data)) for path, data in files.items()])
            for path, data in files.items():
                if _read(path) != data:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with write_file(path, 'wb') as file:
                        file.write(data)
                key, digest = self._key(path), _digest(data)
                db.execute('BEGIN')
                db.execute('DELETE FROM written WHERE path = ? AND sha256 != ?', (key, digest))
                db.execute('UPDATE written SET mtime_ns = ? WHERE path = ?', (os.stat(path).st_mtime_ns, key))
                db.execute('COMMIT')

    def remove(self, paths: Iterable[Path]) -> None:
        """Delete each file that is, byte for byte, one this record wrote; leave anything else."""
        with self._db(create=False) as db:
            for path in paths:
                data = _read(path)
                if data is not None and (len(data), _digest(data)) in self._recorded(db, path):
                    path.unlink()
                    db.execute('DELETE FROM written WHERE path = ?', (self._key(path),))
