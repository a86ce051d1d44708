"""CLIP weights: a backbone name or file resolved once into a :class:`Checkpoint`, then loaded.

:func:`resolve` turns ``backbone`` into a :class:`Checkpoint` (its file, its SHA-256 and
whether it is one of OpenAI's), reading and hashing the file at most once; the run's
fingerprint and :func:`load_clip` both take that checkpoint.

* A name (``RN50``, ``ViT-B/32``, ... see :data:`~pyiqa_maclip.names.OFFICIAL_CHECKPOINTS`)
  is OpenAI's published file, looked for in ``$PYIQA_MACLIP_WEIGHTS_DIR`` then in pyiqa's
  CLIP cache ``<torch hub dir>/clip``, used only if its SHA-256 is the official one, and
  downloaded into the first of those folders when missing (unless
  ``$PYIQA_MACLIP_OFFLINE``). ``$PYIQA_MACLIP_MIRROR`` replaces OpenAI's server.
* A path is a local file: a state dict (read with ``torch.load(weights_only=True)``, which
  runs no code) or one of OpenAI's TorchScript archives (recognised by its SHA-256 and
  loaded by ``torch.jit.load`` as pyiqa does). Any other TorchScript archive is code, so
  it is refused with the one-line command that turns it into a state dict.

Downloads always end: the socket timeout bounds each read and an overall deadline
(``$PYIQA_MACLIP_DOWNLOAD_DEADLINE`` s, default 300) shuts the connection down whatever
the server does; a stream longer than the official file can be is stopped. The bytes
are hashed into a temporary file that replaces the target only when they match.
Processes needing the same file take turns on a lock beside it (a waiting one says so
and gives up after the deadline); a download removes what a killed one left.
"""
from __future__ import annotations

import contextlib
import difflib
import glob
import hashlib
import http.client
import math
import os
import pickle
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import UserError, one_line
from .names import DEADLINE_ENV, MIRROR_ENV, OFFICIAL_CHECKPOINTS, OFFLINE_ENV, WEIGHTS_DIR_ENV
from .safe_io import atomic_file

__all__ = ['OFFICIAL_BASE_URL', 'OFFICIAL_CHECKPOINTS', 'DOWNLOAD_TIMEOUT', 'DOWNLOAD_DEADLINE', 'Checkpoint',
           'WeightsUnavailableError', 'EnvironmentValueError', 'env_flag', 'check_environment', 'search_dirs',
           'official_url', 'sha256sum', 'find_cached', 'check_backbone', 'resolve', 'download', 'read_state_dict',
           'load_clip']

OFFICIAL_BASE_URL = 'https://openaipublic.azureedge.net/clip/models'
DOWNLOAD_TIMEOUT = 15.0  # seconds one read may wait for the server
DOWNLOAD_DEADLINE = 300.0  # seconds a whole download may take, unless $PYIQA_MACLIP_DOWNLOAD_DEADLINE says
_CHUNK = 1 << 20


class WeightsUnavailableError(UserError, FileNotFoundError):
    """An official checkpoint is neither cached (intact) nor downloadable."""


class EnvironmentValueError(UserError):
    """An environment variable of this package holds a value it cannot use."""


# ---------------------------------------------------------------- environment variables


def env_flag(name: str, default: bool = False) -> bool:
    """A yes/no variable: 1/true/yes/on or 0/false/no/off (any case); unset or empty is ``default``."""
    raw = os.environ.get(name, '')
    word = raw.strip().lower()
    if word in ('1', 'true', 'yes', 'on', '0', 'false', 'no', 'off', ''):
        return default if not word else word in ('1', 'true', 'yes', 'on')
    raise EnvironmentValueError(f'{name}={raw!r} is not a yes/no value: expected one of 1, true, yes, on or '
                                '0, false, no, off')


def _download_deadline() -> float:
    raw = os.environ.get(DEADLINE_ENV, '')
    try:
        seconds = float(raw) if raw.strip() else DOWNLOAD_DEADLINE
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise EnvironmentValueError(f'{DEADLINE_ENV}={raw!r} is not a number of seconds: expected a positive '
                                    'number such as 600')
    return seconds


def _mirror() -> str | None:
    raw = os.environ.get(MIRROR_ENV, '').strip()
    if not raw:
        return None
    parts = urllib.parse.urlsplit(raw)
    if not ((parts.scheme in ('http', 'https') and parts.netloc) or (parts.scheme == 'file' and parts.path)):
        raise EnvironmentValueError(
            f'{MIRROR_ENV}={raw!r} is not a mirror URL: expected http://HOST/PATH, https://HOST/PATH or '
            "file:///PATH, the folder holding <sha256>/<file name> as OpenAI's server does")
    return raw.rstrip('/')


def _weights_dir() -> Path | None:
    raw = os.environ.get(WEIGHTS_DIR_ENV, '')
    if not raw.strip():
        return None
    path = Path(raw).expanduser()
    if path.exists() and not path.is_dir():
        raise EnvironmentValueError(f'{WEIGHTS_DIR_ENV}={raw!r} is not a folder: expected the folder for CLIP weights')
    return path


def check_environment() -> None:
    """Raise :class:`EnvironmentValueError` for the first unusable ``PYIQA_MACLIP_*`` variable."""
    env_flag(OFFLINE_ENV)
    _mirror()
    _weights_dir()
    _download_deadline()


# ---------------------------------------------------------------- official files and where they are


def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``, computed as torch does when torch is not imported (it honours
    ``torch.hub.set_dir`` when it is)."""
    if 'torch' in sys.modules:
        return Path(sys.modules['torch'].hub.get_dir())
    cache = os.getenv('XDG_CACHE_HOME', os.path.join('~', '.cache'))
    return Path(os.path.expanduser(os.getenv('TORCH_HOME', os.path.join(cache, 'torch'))), 'hub')


def search_dirs() -> list[Path]:
    """Where official files are looked for, in order; downloads go to the first."""
    own = _weights_dir()
    return ([own] if own is not None else []) + [_torch_hub_dir() / 'clip']


def official_url(name: str) -> str:
    """OpenAI's URL of the file, or the same layout under ``$PYIQA_MACLIP_MIRROR``."""
    official = OFFICIAL_CHECKPOINTS[name]
    return f'{_mirror() or OFFICIAL_BASE_URL}/{official.sha256}/{official.filename}'


def sha256sum(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A resolved CLIP checkpoint file. ``name`` is the official name it was resolved from
    (its SHA-256 verified); ``sha256`` is computed once, when first needed."""

    path: Path
    name: str | None = None

    @cached_property
    def sha256(self) -> str:
        return OFFICIAL_CHECKPOINTS[self.name].sha256 if self.name else sha256sum(self.path)

    @property
    def official(self) -> bool:
        """One of OpenAI's files (by name, or a local path whose SHA-256 is an official one)."""
        return self.name is not None or self.sha256 in {f.sha256 for f in OFFICIAL_CHECKPOINTS.values()}

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return self.name or os.fspath(self.path)


def find_cached(name: str, directories: list[Path] | None = None) -> tuple[Path | None, list[Path]]:
    """The first intact file for ``name`` in ``directories`` (default :func:`search_dirs`),
    and any corrupted ones (wrong SHA-256) met on the way."""
    official = OFFICIAL_CHECKPOINTS[name]
    corrupted = []
    for directory in search_dirs() if directories is None else directories:
        path = directory / official.filename
        if path.is_file():
            if sha256sum(path) == official.sha256:
                return path, corrupted
            corrupted.append(path)
    return None, corrupted


def did_you_mean(name: str) -> str:
    same_letters = [known for known in OFFICIAL_CHECKPOINTS if known.lower() == name.strip().lower()]
    close = same_letters or difflib.get_close_matches(name, OFFICIAL_CHECKPOINTS, n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def check_backbone(backbone) -> str | Path:
    """The official name ``backbone`` is, or the existing file it names; a :class:`UserError` otherwise.

    Reads nothing but the file system's entries (no torch, no hashing), so the command line
    asks it before anything loads.
    """
    if isinstance(backbone, Checkpoint):
        return backbone.name or backbone.path
    if not isinstance(backbone, (str, os.PathLike)):
        raise UserError(f'backbone must be a CLIP model name or a checkpoint path, got {type(backbone).__name__}')
    expected = f'expected one of {", ".join(OFFICIAL_CHECKPOINTS)}, or the path of a local checkpoint file'
    if not os.fspath(backbone).strip():
        raise UserError(f'the backbone is empty: {expected}')
    if isinstance(backbone, str) and backbone in OFFICIAL_CHECKPOINTS:
        return backbone
    path = Path(backbone).expanduser()
    if path.is_dir():
        raise UserError(f'{str(path)!r} is a folder: expected a CLIP checkpoint file or an official name')
    if path.is_file():
        return path
    hint = did_you_mean(os.fspath(backbone))
    if (isinstance(backbone, os.PathLike) or os.sep in backbone or path.suffix) and ' (did you mean' not in hint:
        raise UserError(f'CLIP checkpoint file {str(path)!r} does not exist (nor is it one of the official '
                        f'backbone names: {", ".join(OFFICIAL_CHECKPOINTS)})')
    raise UserError(f'unknown CLIP backbone {os.fspath(backbone)!r}{hint}: {expected}')


def resolve(backbone, *, allow_download: bool | None = None) -> Checkpoint:
    """The :class:`Checkpoint` of ``backbone`` (a name, a path, or a checkpoint, returned as is).

    A name's cached file is checked against its SHA-256, or downloaded (``allow_download``,
    default: unless ``$PYIQA_MACLIP_OFFLINE``); a path is taken as it is, hashed later if needed.
    """
    if isinstance(backbone, Checkpoint):
        return backbone
    found = check_backbone(backbone)
    if isinstance(found, Path):
        checkpoint = Checkpoint(found)
        if _is_torchscript(found) and not checkpoint.official:
            raise UserError(
                f'{found} is a TorchScript archive other than OpenAI\'s, and loading one runs the code it holds; if '
                'you trust it, convert it once into a state dict, which is read as data: python -c "import torch; '
                f'torch.save(torch.jit.load({str(found)!r}, map_location=\'cpu\').state_dict(), \'state_dict.pth\')" '
                'and give the path of state_dict.pth')
        return checkpoint
    name, official = found, OFFICIAL_CHECKPOINTS[found]
    path, corrupted = find_cached(name)
    if path is not None:
        return Checkpoint(path, name)
    for bad in corrupted:
        warnings.warn(f'ignoring {bad}: its SHA-256 does not match the official {name} file')
    target = search_dirs()[0] / official.filename
    if allow_download is None:
        allow_download, why = not env_flag(OFFLINE_ENV), f'downloads are disabled by {OFFLINE_ENV}'
    else:
        why = 'downloads are disabled'
    if allow_download:
        try:
            return Checkpoint(download(name, target.parent), name)
        except OSError as error:  # URLError, HTTPError and timeouts are OSErrors
            why = f'the download failed: {one_line(error)}'
    bad_copies = ''.join(f'\n  a corrupted copy (checksum mismatch) is at {p}; delete or replace it' for p in corrupted)
    label = 'mirror URL:' if _mirror() else 'official URL:'
    raise WeightsUnavailableError(
        f'CLIP weights for backbone {name!r} are not available ({why}).{bad_copies}\n'
        f'  expected file: {target}\n'
        f'  {label:<14} {official_url(name)}  (SHA-256 {official.sha256})\n'
        f'  to work offline: run `pyiqa-maclip download {name}` on a machine with internet and copy '
        f'{official.filename} into {target.parent} (or into the folder named by ${WEIGHTS_DIR_ENV}), or use a '
        'local checkpoint file: give its path instead of the name.')


# ---------------------------------------------------------------- downloading


def download(name: str, directory: str | os.PathLike | None = None, *, progress: bool = True,
             timeout: float | None = None, deadline: float | None = None) -> Path:
    """Download the official file for ``name`` into ``directory`` (default: the first of
    :func:`search_dirs`) and verify it; an intact file already there is kept.

    ``timeout`` bounds each read (default 15 s), ``deadline`` the whole transfer (default
    ``$PYIQA_MACLIP_DOWNLOAD_DEADLINE`` or 300 s) and the wait for another process's download.
    Raises ``OSError`` (``TimeoutError`` at the deadline) and leaves no partial file.
    """
    from filelock import FileLock, Timeout

    official = OFFICIAL_CHECKPOINTS[name]
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    deadline = _download_deadline() if deadline is None else deadline
    directory = Path(directory) if directory is not None else search_dirs()[0]
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / official.filename
    lock = FileLock(directory / f'.{official.filename}.lock')  # an OS lock: freed when its holder dies
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            print(f'CLIP {name}: another process is downloading it (it holds {lock.lock_file}); waiting for it, '
                  f'at most {deadline + timeout:g} s', file=sys.stderr)
        try:
            lock.acquire(timeout=deadline + timeout)
        except Timeout:
            raise OSError(f'another process has been downloading {name} for more than {deadline + timeout:g} s '
                          f'(it holds {lock.lock_file}); try again when it has finished, or stop it (its lock is '
                          'freed when it ends)') from None
    try:
        if target.is_file() and sha256sum(target) == official.sha256:  # fetched while this process waited
            return target
        pattern = f'.{glob.escape(target.name)}.*.part'  # what atomic_file names its temporary files
        for leftover in glob.glob(os.path.join(glob.escape(str(directory)), pattern)):
            Path(leftover).unlink(missing_ok=True)
        _fetch(name, target, progress, timeout, deadline)
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


def _fetch(name: str, target: Path, progress: bool, timeout: float, deadline: float) -> None:
    from tqdm import tqdm

    url, official = official_url(name), OFFICIAL_CHECKPOINTS[name]
    too_long = f'more than the official {name} file can be: it is not serving that file'
    digest, received = hashlib.sha256(), 0
    with _Deadline(deadline) as watch:
        try:
            with atomic_file(target, 'wb') as out, watch.opener().open(url, timeout=timeout) as source:
                try:
                    total = int(source.headers.get('Content-Length', '')) or None
                except ValueError:
                    total = None
                if total is not None and total > official.max_bytes:
                    raise OSError(f'{url} announces {total} bytes ({official.max_bytes} at most), {too_long}')
                read = getattr(source, 'read1', source.read)  # whatever has arrived: checks run often
                with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=f'CLIP {name}',
                          disable=not progress) as bar:
                    for block in iter(lambda: read(_CHUNK), b''):
                        received += len(block)
                        if received > official.max_bytes:
                            raise OSError(f'{url} sent more than {official.max_bytes} bytes, {too_long}')
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                if total is not None and received != total:
                    raise OSError(f'download of {url} stopped after {received} of {total} bytes')
                if digest.hexdigest() != official.sha256:  # inside the block: the file is discarded
                    raise OSError(f'download of {url} has SHA-256 {digest.hexdigest()}, expected {official.sha256}; '
                                  'the file was discarded')
        except Exception as error:
            if watch.expired:  # whatever the cut-off read raised or returned (an early end, a wrong hash)
                raise TimeoutError(f'download of {url} did not finish within {deadline:g} s ({received} bytes '
                                   f'received) and was abandoned; for a slow connection set {DEADLINE_ENV} to more '
                                   'seconds') from error
            if isinstance(error, http.client.HTTPException):  # e.g. IncompleteRead: not an OSError
                raise OSError(f'download of {url} broke off: {error!r}') from error
            raise


# ---------------------------------------------------------------- reading and building


def _is_torchscript(path: Path) -> bool:
    """A torch zip archive holding code (``<root>/code/``), as ``torch.jit.save`` writes."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(entry.count('/') >= 2 and entry.split('/')[1] == 'code' for entry in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _not_a_checkpoint(path: Path) -> str:
    with open(path, 'rb') as f:
        head = f.read(512)
    hint = ''
    if not head:
        hint = ' (it is empty)'
    elif head.lstrip().startswith(b'<'):
        hint = ' (it is an HTML or XML page: a web page saved in place of the file?)'
    else:
        with contextlib.suppress(UnicodeDecodeError):
            head.decode('utf-8')
            hint = ' (it is a text file)'
    return f'{path} is not a CLIP checkpoint: neither a state dict saved with torch.save nor an official OpenAI file{hint}'


def read_state_dict(backbone) -> dict:
    """The CLIP state dict of a checkpoint (anything :func:`resolve` takes), without running code from it.

    Raises :class:`UserError` for a file that is not a CLIP checkpoint, holds Python objects
    besides tensors, or is a TorchScript archive other than OpenAI's; ``OSError`` if unreadable.
    """
    import torch

    checkpoint = resolve(backbone)
    path = checkpoint.path
    if _is_torchscript(path):  # resolve() let it through: one of OpenAI's, by its SHA-256
        with warnings.catch_warnings():  # torch's deprecation notice is no news for the user
            warnings.simplefilter('ignore', FutureWarning)
            state = torch.jit.load(str(path), map_location='cpu').state_dict()
    else:
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except OSError as error:
            raise OSError(f'cannot read {path}: {error.strerror or error}') from None
        except pickle.UnpicklingError as error:
            # torch names the global it refused; its advice to turn the check off must not reach the user.
            if refused := re.search(r'GLOBAL (\S+)', str(error)):
                raise UserError(f'{path} holds Python objects besides tensors (such as {refused[1]}), which are not '
                                'unpickled since that could run code: save only the weights, with '
                                "torch.save(model.state_dict(), 'state_dict.pth')") from None
            raise UserError(_not_a_checkpoint(path)) from None
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - torch.load fails on junk in many ways (KeyError, EOFError, ...)
            raise UserError(_not_a_checkpoint(path)) from None
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f'{path} does not hold a CLIP state dict (a mapping of parameter names to tensors)')
    return dict(state)


def load_clip(backbone='RN50', *, allow_download: bool | None = None):
    """pyiqa's CLIP model for ``backbone`` (a name, a path or a :class:`Checkpoint`), float32, on
    the CPU, in eval mode."""
    from pyiqa.archs.clip_model import build_model

    checkpoint = resolve(backbone, allow_download=allow_download)
    state = read_state_dict(checkpoint)
    try:
        model = build_model(state)
    except KeyError as error:
        raise UserError(f'{checkpoint.path} is not an OpenAI CLIP checkpoint pyiqa can build: it lacks the tensor '
                        f'{error.args[0] if error.args else "?"}') from None
    except (AssertionError, RuntimeError, ValueError, IndexError, TypeError, AttributeError) as error:
        raise UserError(f'{checkpoint.path} is not an OpenAI CLIP checkpoint pyiqa can build: '
                        f'{one_line(error) or type(error).__name__}') from None
    return model.float().eval()
