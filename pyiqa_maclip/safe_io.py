"""File writing that never leaves a half-written file, and errors as one-line text for CSV cells."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ['atomic_file', 'error_text']


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = 'w', **open_options) -> Iterator[IO]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block completes.

    The data is flushed to disk before the move. Any exception (a failed checksum
    raised inside the block, a kill, a full disk) removes the temporary file and
    leaves ``path`` as it was.
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.part', dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_options) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def error_text(error: BaseException) -> str:
    """``'TypeName: message'`` on one line (runs of whitespace, newlines included, become one space)."""
    return f'{type(error).__name__}: {" ".join(str(error).split())}'
