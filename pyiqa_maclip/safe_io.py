"""File writing that never leaves a half-written file, and errors as one-line text for CSV cells."""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ['atomic_file', 'current_umask', 'one_line', 'error_text', 'command_error']


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux)."""
    try:
        with open('/proc/self/status', encoding='ascii') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = 'w', **open_options) -> Iterator[IO]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block completes.

    The data is flushed to disk before the move. Any exception (a failed checksum
    raised inside the block, a kill, a full disk) removes the temporary file and
    leaves ``path`` as it was. The file gets the permissions of any file the user
    creates (0666 less the umask), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.part', dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **open_options) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def one_line(text: object) -> str:
    """``str(text)`` on one line: runs of whitespace, newlines included, become one space."""
    return ' '.join(str(text).split())


def error_text(error: BaseException) -> str:
    """``'TypeName: message'`` on one line."""
    return f'{type(error).__name__}: {one_line(error)}'


def command_error(command: str, message: object) -> int:
    """Print ``pyiqa-maclip COMMAND: error: MESSAGE`` as one line on stderr; return exit status 2."""
    print(f'pyiqa-maclip {command}: error: {one_line(message)}', file=sys.stderr)
    return 2
