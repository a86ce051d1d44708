"""Which files a run scores: image files, folders (recursive) and text files listing paths.

Paths are ``str`` as the operating system gives them: a name that is not valid
UTF-8 keeps its bytes as surrogate escapes (``os.fsdecode``), so every name the
file system allows identifies exactly one file.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from ..errors import UserError, UserTypeError
from ..names import LIST_SUFFIXES

__all__ = ['EXTERNAL_PROGRAM_FORMATS', 'image_extensions', 'parse_extensions', 'collect_paths']
#: PIL formats whose decoding runs another program (EPS/PS: Ghostscript): never taken from folders
#: by default, since a collection may hold untrusted files. Named explicitly, they are still read.
EXTERNAL_PROGRAM_FORMATS = frozenset({'EPS'})
_log = logging.getLogger('pyiqa_maclip')


def image_extensions() -> frozenset[str]:
    """Lower-case suffixes (``'.jpg'``, ...) of every format PIL can open without another program."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in EXTERNAL_PROGRAM_FORMATS)


def parse_extensions(extensions: Iterable[str] | None) -> frozenset[str]:
    """``['jpg', '.PNG']`` -> ``{'.jpg', '.png'}``; None -> :func:`image_extensions`."""
    if extensions is None:
        return image_extensions()
    if isinstance(extensions, str):
        raise UserTypeError(f"extensions must be a collection of suffixes such as ['.jpg', '.png'], got {extensions!r}")
    found = frozenset('.' + e.strip().lower().lstrip('.') for e in extensions if e.strip().lstrip('.'))
    if not found:
        raise UserError(f"extensions is empty; expected suffixes such as ['.jpg', '.png'], got {extensions!r}")
    return found


def _scan_folder(folder: str, extensions: frozenset[str]) -> list[str]:
    """Image files below ``folder`` (links followed, each folder once), sorted."""
    found, seen = [], set()

    def unreadable(error: OSError) -> None:
        _log.warning('cannot list %s: %s; skipped', error.filename, error.strerror)

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        stat = os.stat(root)
        if (stat.st_dev, stat.st_ino) in seen:  # a link back up the tree
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        found += [os.path.join(root, name) for name in files if os.path.splitext(name)[1].lower() in extensions]
    return sorted(found)


def _read_list(list_file: Path, base: str) -> Iterator[str]:
    """Entries of a path list: blank lines and ``#`` comments skipped, relative to ``base``.

    Bytes that are not UTF-8 are kept (surrogate escapes), as the file system has them.
    """
    with open(list_file, encoding='utf-8', errors='surrogateescape', newline='\n') as lines:
        for line in lines:
            entry = line.rstrip('\n').rstrip('\r').strip()
            if entry and not entry.startswith('#'):
                yield os.path.join(base, os.path.expanduser(entry))


def _is_stream(path: Path) -> bool:
    """A readable FIFO, character device or socket (``/dev/stdin``, ``<(ls *.jpg)``): a stream of paths."""
    return path.exists() and not path.is_dir() and not path.is_file() and os.access(path, os.R_OK)


def collect_paths(inputs: Iterable[str | os.PathLike], extensions: Iterable[str] | None = None) -> list[str]:
    """Absolute paths of the images named by ``inputs``, in order, each once.

    An input is a folder (every file below it whose suffix is in ``extensions``,
    default :func:`image_extensions`, in sorted order), a text file listing paths
    (suffix in :data:`LIST_SUFFIXES`; its entries may be files or folders, relative ones
    from its folder), a stream listing paths (a readable FIFO or device such as
    ``/dev/stdin``; relative entries from the working folder), or an image file. Listed files are taken whatever their suffix and need not exist:
    a missing one is reported when it is scored.

    Raises:
        UserError: an input does not exist.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    extensions = parse_extensions(extensions)
    paths: dict[str, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found: Iterable[str] = _scan_folder(str(path), extensions)
        elif (path.is_file() and path.suffix.lower() in LIST_SUFFIXES) or _is_stream(path):
            base = str(path.parent) if path.is_file() else os.getcwd()
            found = (p for entry in _read_list(path, base)
                     for p in (_scan_folder(entry, extensions) if os.path.isdir(entry) else [entry]))
        elif path.is_file():
            found = [str(path)]
        else:
            raise UserError(f'{os.fsdecode(item)!r} does not exist: expected an image file, a folder or a text file '
                            f'listing paths ({", ".join(LIST_SUFFIXES)})')
        paths.update((os.path.abspath(p), None) for p in found)
    return list(paths)
