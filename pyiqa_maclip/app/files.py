"""The files the commands write: only where nothing of the user's is in the way, whole or not at all.

A command replaces a file only if it created it (the run's journal lists its size, time and
SHA-256, and the file still matches them byte for byte) or the user named it and passed
``--overwrite``; never a symlink, a device, a
FIFO, a socket or a folder, whatever the options. Files are written to a temporary name
and moved into place, with the permissions any file the user creates gets (the umask).
Nothing here imports torch: the command line checks its outputs before loading it.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from filelock import FileLock, Timeout

from ..errors import UserError
from ..safe_io import atomic_file

__all__ = ['Content', 'content', 'same_content', 'kind_of', 'refuse_special', 'check_replaceable',
           'check_writable_folder', 'name_max', 'fits_name', 'write_file', 'write_figure', 'shown', 'held_lock',
           'lock_is_free', 'WorkFiles']

_JOURNAL = re.compile(r'rank(0|[1-9]\d*)(\.open)?\.sqlite3')


class Content(NamedTuple):
    """What a journal keeps of each file it wrote: the file is the run's while its bytes match."""

    size: int
    mtime_ns: int
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def content(path: Path) -> Content | None:
    """Size, modification time and SHA-256 of the regular file at ``path``; None if there is none."""
    if kind_of(path) is not None or not os.path.lexists(path):
        return None
    status = os.lstat(path)
    return Content(status.st_size, status.st_mtime_ns, _sha256(path))


def same_content(path: Path, recorded: Content | None) -> bool:
    """Whether the file at ``path`` is a regular file holding exactly the bytes ``recorded`` (its time may
    differ: a copy or ``touch`` changes no byte). An inode number says nothing: file systems reuse them."""
    if recorded is None or kind_of(path) is not None:
        return False
    try:
        return os.lstat(path).st_size == recorded.size and _sha256(path) == recorded.sha256
    except (FileNotFoundError, NotADirectoryError):
        return False


def kind_of(path: Path) -> str | None:
    """What is at ``path`` if it is not a regular file (not following symlinks): 'a symlink', 'a folder', ...;
    None for a regular file or nothing."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    kinds = ((stat.S_ISLNK, 'a symlink'), (stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'),
             (stat.S_ISSOCK, 'a socket'), (stat.S_ISCHR, 'a device'), (stat.S_ISBLK, 'a device'))
    return next((kind for test, kind in kinds if test(mode)), None if stat.S_ISREG(mode) else 'not a regular file')


def refuse_special(path: Path, what: str) -> None:
    """A :class:`UserError` if ``path`` is anything but a regular file or nothing."""
    if kind := kind_of(path):
        raise UserError(f'{what} {path} is {kind}: pyiqa-maclip writes only regular files, never through or over '
                        'a link, a device, a FIFO or a folder; choose another path')


def check_replaceable(path: Path, overwrite: bool, what: str = 'the output', other: str = '-o') -> None:
    """A :class:`UserError` unless ``path`` may be written: nothing there, or a regular file the user lets us
    replace (``--overwrite``); never a link, device, FIFO or folder."""
    refuse_special(path, what)
    if path.exists() and not overwrite:
        raise UserError(f'{shown(path)} exists: pass --overwrite to replace it, or choose another {other}')


def check_writable_folder(folder: Path, what: str) -> None:
    """A :class:`UserError` unless ``folder`` exists or could be created, and could be written;
    nothing is created."""
    folder = Path(os.path.abspath(folder))
    existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise UserError(f'cannot create the folder of {what}, {folder}: {existing} is not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f'cannot write {what}: the folder {existing} is not writable')


def name_max(folder: Path) -> int:
    """The longest file name the file system of ``folder`` (or its nearest existing parent) takes, in bytes."""
    for candidate in (folder, *folder.parents):
        try:
            return os.pathconf(candidate, 'PC_NAME_MAX')
        except (OSError, ValueError):
            continue
    return 255


def fits_name(path: Path) -> bool:
    return len(os.fsencode(path.name)) <= name_max(path.parent)


def shown(path: str | os.PathLike) -> str:
    """A path on one printable line, one text per name: a backslash doubled, control characters (CR,
    LF, tab, ...) and bytes that are not UTF-8 written as Python escapes (``\\r``, ``\\xff``)."""
    def char(c: str) -> str:
        if c == '\\':
            return '\\\\'
        if '\udc80' <= c <= '\udcff':  # a byte that is not UTF-8, as surrogateescape holds it
            return f'\\x{ord(c) - 0xDC00:02x}'
        return c if c.isprintable() else repr(c)[1:-1]

    return ''.join(map(char, os.fsencode(path).decode('utf-8', 'surrogateescape')))


@contextmanager
def write_file(path: Path, mode: str = 'w', *, temporary_dir: Path | None = None, **open_options) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` only if the block completes.

    The caller has decided ``path`` may be replaced; a symlink, device, FIFO or folder there is
    still refused. The temporary file is made in ``temporary_dir`` (a work folder on the same
    file system, whose leftovers its owner can clean) or beside ``path``.
    """
    refuse_special(path, 'the output')
    with atomic_file(path, mode, temporary_dir=temporary_dir, **open_options) as file:
        yield file


def write_figure(figure, path: Path, **savefig_options) -> Path:
    """Save a matplotlib ``figure`` as a PNG at ``path`` (:func:`write_file`: whole or not at all, never
    through a link), then clear it: its artists refer to one another, so cleared, their data is freed
    now rather than at the next full garbage collection."""
    with write_file(path, 'wb') as file:
        figure.savefig(file, format='png', **savefig_options)
    figure.clear()
    return path


@contextmanager
def held_lock(lock_file: Path, busy: str) -> Iterator[FileLock]:
    """Hold an OS lock (freed when the process ends, even on kill -9); :class:`UserError` ``busy`` if taken."""
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(busy) from None
    try:
        yield lock
    finally:
        lock.release()


def lock_is_free(lock_file: Path) -> bool:
    """Whether no process holds the OS lock ``lock_file``."""
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


@dataclass(frozen=True)
class WorkFiles:
    """Where a run on ``output`` keeps its exports, lock and journals."""

    output: Path

    @property
    def errors(self) -> Path:
        """``scores.errors.csv`` beside ``scores.csv`` or ``scores.parquet``."""
        name, suffix = self.output.name, self.output.suffix.lower()
        return self.output.with_name(f'{name[:-len(suffix)] if suffix in (".csv", ".parquet") else name}.errors.csv')

    @property
    def folder(self) -> Path:
        """``.<output name>.pyiqa-maclip``, or, for an output name too long for that, a shorter
        name ending in a hash of the whole name."""
        name = f'.{self.output.name}.pyiqa-maclip'
        limit = name_max(self.output.parent)
        if len(os.fsencode(name)) > limit:
            digest = hashlib.sha256(os.fsencode(self.output.name)).hexdigest()[:16]
            stem = os.fsencode(self.output.name)[:limit - 40].decode('utf-8', 'ignore')
            name = f'.{stem}-{digest}.pyiqa-maclip'
        return self.output.with_name(name)

    @property
    def lock(self) -> Path:
        return self.folder / 'lock'

    def journal(self, rank: int) -> Path:
        """The journal of process ``rank`` (``rank0.sqlite3``: the main journal). Another process's
        appears under this name only once it is complete (see :meth:`open_journal`)."""
        return self.folder / f'rank{rank}.sqlite3'

    def open_journal(self, rank: int) -> Path:
        """Where process ``rank`` > 0 writes its journal until it has finished its share: nobody reads
        a journal still being made, and the rename to :meth:`journal` is atomic."""
        return self.folder / f'rank{rank}.open.sqlite3'

    def alive(self, rank: int) -> Path:
        """A lock each process holds while it scores: free while the process is gone."""
        return self.folder / f'rank{rank}.lock'

    def journals(self) -> list[Path]:
        """Existing journal files (complete or not), rank 0 first."""
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if _JOURNAL.fullmatch(p.name)), key=self.rank_of)

    @staticmethod
    def rank_of(journal: Path) -> int:
        return int(_JOURNAL.fullmatch(journal.name)[1])

    def check(self, paths: Sequence[str], overwrite: bool = False) -> None:
        """Before anything is written (no torch needed): a :class:`UserError` for an output that is a
        folder, link, device or FIFO, is one of the inputs, has too long a name, or cannot be written;
        and, for a first run (no journal yet), for a file in the way: an output not to be replaced
        (without ``overwrite``) or any errors file."""
        inputs = set(paths)
        for path, what in ((self.output, 'the output'), (self.errors, 'the errors file')):
            if not fits_name(path):
                raise UserError(f'the name of {path} is longer than the {name_max(path.parent)} bytes the file '
                                'system allows; choose a shorter --output')
            refuse_special(path, what)
            if {os.path.abspath(path), os.path.realpath(path)} & inputs:
                raise UserError(f'the output file {path} is one of the images to score; choose another output')
        self._refuse_lost_journal(overwrite)
        if not self.journals():
            if self.output.exists() and not overwrite:
                raise UserError(f'the output {self.output} is in the way: it was not written by this run; pass '
                                '--overwrite to replace it, or choose another --output')
            if self.errors.exists():
                raise UserError(f'the errors file {self.errors} is in the way: it was not written by this run; '
                                'move it away, or choose another --output')
        check_writable_folder(self.output.parent, f'the output {self.output}')

    def journal_lost(self) -> bool:
        """Whether the work folder is there but its main journal is missing or empty (deleted, or killed
        as it was being created): exports beside it can no longer be told from a user's files."""
        main = self.journal(0)
        return self.folder.is_dir() and not (main.is_file() and main.stat().st_size > 0)

    def _refuse_lost_journal(self, overwrite: bool) -> None:
        in_the_way = [p for p in (self.output, self.errors) if p.exists() and not (overwrite and p == self.output)]
        if in_the_way and self.journal_lost():
            names = ' and '.join(map(str, in_the_way))
            raise UserError(f'the journal {self.journal(0)} was lost (missing or empty): the results of earlier runs '
                            f'on {self.output} are gone, and nothing tells whether {names} are their exports; move '
                            f'{names} away (or pass --overwrite to replace {self.output}) and run again to score '
                            'from scratch')
