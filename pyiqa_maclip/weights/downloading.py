"""Downloading an official file: verified, atomic, one process at a time, and always ending.

A socket timeout bounds each read, not the transfer; an overall deadline shuts the
connection down whatever the server does, and a size cap stops a stream longer than
the file can be. Processes needing the same file take turns on an OS lock beside it.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from ..safe_io import atomic_file
from .environment import DEADLINE_ENV, download_deadline
from .official import Checkpoint, official_checkpoint, search_dirs, sha256sum

__all__ = ['DOWNLOAD_TIMEOUT', 'download']

DOWNLOAD_TIMEOUT = 15.0  # seconds a single read may wait for the server
_CHUNK = 1 << 20


def download(name: str, directory: str | os.PathLike | None = None, *, progress: bool = True,
             timeout: float | None = None, deadline: float | None = None) -> Path:
    """Download the official file for ``name`` into ``directory`` and verify it.

    Args:
        timeout: seconds one read may wait for the server (default 15).
        deadline: seconds the whole transfer may take (default ``$PYIQA_MACLIP_DOWNLOAD_DEADLINE``
            or 300); a waiting process waits at most this long (plus ``timeout``) for another.
        progress: a progress bar, and a line when waiting for another process, on stderr.

    The bytes go to a temporary file beside the target, hashed as they arrive;
    the file replaces the target only when the SHA-256 matches. Any failure
    removes the temporary file and leaves the target as it was. An intact
    target is kept as it is; one process at a time downloads a given file.

    Raises:
        OSError: the download failed, was too long or too slow, or another
            process kept the file's lock for longer than the wait allows.
    """
    checkpoint = official_checkpoint(name)
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    deadline = download_deadline() if deadline is None else deadline
    directory = Path(directory) if directory is not None else search_dirs()[0]
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / checkpoint.filename
    with _turn_for(directory / f'.{checkpoint.filename}.lock', name, deadline + timeout, progress):
        # Another process may have fetched it while this one waited for the lock.
        if target.is_file() and sha256sum(target) == checkpoint.sha256:
            return target
        _remove_partial_downloads(target)
        _fetch_verified(checkpoint, name, target, progress=progress, timeout=timeout, deadline=deadline)
    return target


@contextlib.contextmanager
def _turn_for(lock_path: Path, name: str, patience: float, progress: bool) -> Iterator[None]:
    """Hold ``lock_path`` (an OS lock, freed when its holder ends, even on kill -9),
    waiting at most ``patience`` seconds for another process."""
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            print(f'CLIP {name}: another process is downloading it (it holds {lock_path}); '
                  f'waiting for it, at most {patience:g} s', file=sys.stderr)
        try:
            lock.acquire(timeout=patience)
        except Timeout:
            raise OSError(
                f'another process has been downloading {name} for more than {patience:g} s (it holds '
                f'{lock_path}); try again when it has finished, or stop it (its lock is freed when it ends)'
            ) from None
    try:
        yield
    finally:
        lock.release()


def _remove_partial_downloads(target: Path) -> None:
    """Delete temporary files a killed download of ``target`` left (called while holding its lock).

    They are named as :func:`~pyiqa_maclip.safe_io.atomic_file` names them:
    ``.<file name>.<random>.part`` beside the target.
    """
    for leftover in glob.glob(os.path.join(glob.escape(str(target.parent)), f'.{glob.escape(target.name)}.*.part')):
        Path(leftover).unlink(missing_ok=True)


class _Watchdog:
    """Shuts down every connection of a download when its deadline passes.

    A socket timeout bounds each read, not the transfer: a server that sends a
    byte every few seconds never trips it. Shutting the socket down from this
    timer thread wakes any read blocked on it (TLS handshake, headers, body).
    It works on a duplicate of each socket, owned here, so it never touches a
    descriptor that the connection has closed and the OS has handed out again.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def create_connection(self, *args, **kwargs) -> socket.socket:
        sock = socket.create_connection(*args, **kwargs)
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired:
                self._shutdown(self._sockets[-1])
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, watchdog: _Watchdog, **kwargs):
        super().__init__(*args, **kwargs)
        # http.client's documented hook for replacing how the socket is made.
        self._create_connection = watchdog.create_connection


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, watchdog: _Watchdog, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = watchdog.create_connection


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def http_open(self, req):
        return self.do_open(_WatchedHTTPConnection, req, watchdog=self.watchdog)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def https_open(self, req):
        return self.do_open(_WatchedHTTPSConnection, req, context=self._context, watchdog=self.watchdog)


def _announced_length(response) -> int | None:
    try:
        return int(response.headers.get('Content-Length', '')) or None
    except ValueError:
        return None


def _fetch_verified(checkpoint: Checkpoint, name: str, target: Path, *, progress: bool, timeout: float,
                    deadline: float) -> None:
    url = checkpoint.url
    digest = hashlib.sha256()
    received = 0
    with _Watchdog(deadline) as watchdog:
        opener = urllib.request.build_opener(_WatchedHTTPHandler(watchdog), _WatchedHTTPSHandler(watchdog))
        try:
            with atomic_file(target, 'wb') as out, opener.open(url, timeout=timeout) as source:
                total = _announced_length(source)
                if total is not None and total > checkpoint.max_bytes:
                    raise OSError(f'{url} announces {total} bytes, more than the official {name} file can be '
                                  f'({checkpoint.max_bytes} bytes at most): it is not serving that file')
                read = getattr(source, 'read1', source.read)  # read1: whatever has arrived, so checks run often
                with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024,
                          desc=f'CLIP {name}', disable=not progress) as bar:
                    for block in iter(lambda: read(_CHUNK), b''):
                        received += len(block)
                        if received > checkpoint.max_bytes:
                            raise OSError(f'{url} sent more than {checkpoint.max_bytes} bytes, more than the '
                                          f'official {name} file can be: it is not serving that file')
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                if total is not None and received != total:
                    raise OSError(f'download of {url} stopped after {received} of {total} bytes')
                if digest.hexdigest() != checkpoint.sha256:  # inside the block: the file is discarded
                    raise OSError(f'download of {url} has SHA-256 {digest.hexdigest()}, expected '
                                  f'{checkpoint.sha256}; the file was discarded')
        except Exception as error:
            if watchdog.expired:  # whatever the cut-off read raised or returned (an early end, a wrong hash)
                raise TimeoutError(
                    f'download of {url} did not finish within {deadline:g} s ({received} bytes received) and '
                    f'was abandoned; for a slow connection set {DEADLINE_ENV} to more seconds'
                ) from error
            if isinstance(error, http.client.HTTPException):  # e.g. IncompleteRead: not an OSError
                raise OSError(f'download of {url} broke off: {error!r}') from error
            raise
