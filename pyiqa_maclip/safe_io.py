"""File writing that never leaves a half-written file (weights downloads, every export)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ['atomic_file', 'current_umask']


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
def atomic_file(path: str | os.PathLike, mode: str = 'w', *, temporary_dir: str | os.PathLike | None = None,
                **open_options) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` only if the block completes.

    The temporary file is ``.<name>.<random>.part`` beside ``path``, or ``<random>.part`` in
    ``temporary_dir`` (which must be on the same file system). The data is flushed to disk
    before the move. Any exception (a failed checksum raised inside the block, a kill, a
    full disk) removes the temporary file and leaves ``path`` as it was. The file gets the
    permissions of any file the user creates (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    if temporary_dir is None:
        fd, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.part', dir=path.parent)
    else:
        fd, temporary = tempfile.mkstemp(suffix='.part', dir=temporary_dir)
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
