"""The downloader: one file fetched from a URL, verified by its SHA-256, in bounded time and space.

Downloads always end: the socket timeout bounds each read and an overall deadline shuts the
connection down whatever the server does (handshake, headers or a body trickling a byte at a
time); a stream longer than the file can be is stopped. The bytes are hashed into a temporary
file that replaces the target only when they match. Processes needing the same file take turns
on a lock beside it (a waiting one says so and gives up after the deadline); a download removes
what a killed one left.

It knows nothing of CLIP names or of the environment: :func:`pyiqa_maclip.weights.download`
says what to fetch, from where, and for how long.
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
from pathlib import Path

from .names import DEADLINE_ENV, OfficialFile
from .safe_io import atomic_file

__all__ = ['DOWNLOAD_TIMEOUT', 'sha256sum', 'download']

DOWNLOAD_TIMEOUT = 15.0  # seconds one read may wait for the server
_CHUNK = 1 << 20


def sha256sum(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, directory: str | os.PathLike, expected: OfficialFile, *, deadline: float, label: str,
             progress: bool = True, timeout: float | None = None) -> Path:
    """Download ``url`` into ``directory``/``expected.filename`` and verify it against ``expected``
    (SHA-256, size cap); an intact file already there is kept.

    ``timeout`` bounds each read (default :data:`DOWNLOAD_TIMEOUT`), ``deadline`` the whole
    transfer and the wait for another process's download of the same file. ``label`` names the
    file in messages and on the progress bar (``'CLIP RN50'``). Raises ``OSError`` (``TimeoutError`` at the
    deadline) and leaves no partial file.
    """
    from filelock import FileLock, Timeout

    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / expected.filename
    lock = FileLock(directory / f'.{expected.filename}.lock')  # an OS lock: freed when its holder dies
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            print(f'{label}: another process is downloading it (it holds {lock.lock_file}); waiting for it, '
                  f'at most {deadline + timeout:g} s', file=sys.stderr)
        try:
            lock.acquire(timeout=deadline + timeout)
        except Timeout:
            raise OSError(f'another process has been downloading {label} for more than {deadline + timeout:g} s '
                          f'(it holds {lock.lock_file}); try again when it has finished, or stop it (its lock is '
                          'freed when it ends)') from None
    try:
        if target.is_file() and sha256sum(target) == expected.sha256:  # fetched while this process waited
            return target
        pattern = f'.{glob.escape(target.name)}.*.part'  # what atomic_file names its temporary files
        for leftover in glob.glob(os.path.join(glob.escape(str(directory)), pattern)):
            Path(leftover).unlink(missing_ok=True)
        _fetch(url, target, expected, label, progress, timeout, deadline)
    finally:
        lock.release()
    return target


class _Deadline:
    """Shuts every socket of a download down when the deadline passes, which wakes any read
    blocked on it (TLS handshake, headers, body): a socket timeout bounds each read, not the
    transfer, and a server sending a byte every few seconds never trips it. It shuts down its
    own duplicates of the sockets, so it never touches a descriptor the OS has handed out again."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()

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

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener whose HTTP(S) connections are made by :meth:`create_connection`
        (http.client's hook for making the socket)."""
        deadline = self

        def watched(connection_class):
            class Watched(connection_class):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    self._create_connection = deadline.create_connection
            return Watched

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(watched(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(watched(http.client.HTTPSConnection), req, context=self._context)

        return urllib.request.build_opener(HTTP(), HTTPS())


def _fetch(url: str, target: Path, expected: OfficialFile, label: str, progress: bool, timeout: float,
           deadline: float) -> None:
    from tqdm import tqdm

    too_long = f'more than {expected.filename} can be: it is not serving that file'
    digest, received = hashlib.sha256(), 0
    with _Deadline(deadline) as watch:
        try:
            with atomic_file(target, 'wb') as out, watch.opener().open(url, timeout=timeout) as source:
                try:
                    total = int(source.headers.get('Content-Length', '')) or None
                except ValueError:
                    total = None
                if total is not None and total > expected.max_bytes:
                    raise OSError(f'{url} announces {total} bytes ({expected.max_bytes} at most), {too_long}')
                read = getattr(source, 'read1', source.read)  # whatever has arrived: checks run often
                with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=label,
                          disable=not progress) as bar:
                    for block in iter(lambda: read(_CHUNK), b''):
                        received += len(block)
                        if received > expected.max_bytes:
                            raise OSError(f'{url} sent more than {expected.max_bytes} bytes, {too_long}')
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                if total is not None and received != total:
                    raise OSError(f'download of {url} stopped after {received} of {total} bytes')
                if digest.hexdigest() != expected.sha256:  # inside the block: the file is discarded
                    raise OSError(f'download of {url} has SHA-256 {digest.hexdigest()}, expected {expected.sha256}; '
                                  'the file was discarded')
        except Exception as error:
            if watch.expired:  # whatever the cut-off read raised or returned (an early end, a wrong hash)
                raise TimeoutError(f'download of {url} did not finish within {deadline:g} s ({received} bytes '
                                   f'received) and was abandoned; for a slow connection set {DEADLINE_ENV} to more '
                                   'seconds') from error
            if isinstance(error, http.client.HTTPException):  # e.g. IncompleteRead: not an OSError
                raise OSError(f'download of {url} broke off: {error!r}') from error
            raise
