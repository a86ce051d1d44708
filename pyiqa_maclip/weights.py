"""CLIP weights: official OpenAI checkpoints by name, or local files, loaded in float32.

Names resolve to OpenAI's published files, each checked against its SHA-256
before use. A file is looked for in ``$PYIQA_MACLIP_WEIGHTS_DIR`` (if set) and
then in pyiqa's CLIP cache, ``<torch hub dir>/clip`` (``$TORCH_HOME/hub/clip``,
by default ``~/.cache/torch/hub/clip``); when absent it is downloaded into the
first of those directories. Downloads go to a temporary file in the target
directory that is moved into place only once its checksum matches, so a
crash, a full disk or a bad transfer never leaves a file that could be loaded.
Processes that need the same missing file at once (e.g. ranks of
``accelerate launch``) take turns on a lock file beside it: one downloads,
the others find the verified file when their turn comes.

A path is read either as an OpenAI TorchScript archive (what the official
files are) or as a plain state dict (``torch.save(model.state_dict())``),
the latter with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from tqdm import tqdm

from .safe_io import atomic_file

__all__ = [
    'OFFICIAL_CHECKPOINTS',
    'WEIGHTS_DIR_ENV',
    'OFFLINE_ENV',
    'MIRROR_ENV',
    'Checkpoint',
    'WeightsUnavailableError',
    'search_dirs',
    'sha256sum',
    'find_cached',
    'download',
    'resolve_checkpoint',
    'read_state_dict',
    'load_clip',
]

WEIGHTS_DIR_ENV = 'PYIQA_MACLIP_WEIGHTS_DIR'
OFFLINE_ENV = 'PYIQA_MACLIP_OFFLINE'
MIRROR_ENV = 'PYIQA_MACLIP_MIRROR'
OFFICIAL_BASE_URL = 'https://openaipublic.azureedge.net/clip/models'
DOWNLOAD_TIMEOUT = 15.0  # seconds without an answer before a download gives up
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    """One official CLIP file: its name on disk and the SHA-256 OpenAI publishes in its URL."""

    filename: str
    sha256: str

    @property
    def url(self) -> str:
        """OpenAI's URL, or the same layout under ``$PYIQA_MACLIP_MIRROR`` if set."""
        base = os.environ.get(MIRROR_ENV) or OFFICIAL_BASE_URL
        return f'{base.rstrip("/")}/{self.sha256}/{self.filename}'


#: Every CLIP backbone pyiqa knows, with the official file's checksum.
OFFICIAL_CHECKPOINTS: dict[str, Checkpoint] = {
    'RN50': Checkpoint('RN50.pt', 'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762'),
    'RN101': Checkpoint('RN101.pt', '8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599'),
    'RN50x4': Checkpoint('RN50x4.pt', '7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd'),
    'RN50x16': Checkpoint('RN50x16.pt', '52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa'),
    'RN50x64': Checkpoint('RN50x64.pt', 'be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c'),
    'ViT-B/32': Checkpoint('ViT-B-32.pt', '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af'),
    'ViT-B/16': Checkpoint('ViT-B-16.pt', '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f'),
    'ViT-L/14': Checkpoint('ViT-L-14.pt', 'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836'),
    'ViT-L/14@336px': Checkpoint(
        'ViT-L-14-336px.pt', '3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02'
    ),
}


class WeightsUnavailableError(FileNotFoundError):
    """An official checkpoint is neither cached (intact) nor downloadable."""


def search_dirs() -> list[Path]:
    """Where official files are looked for, in order; downloads go to the first."""
    dirs = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser())
    dirs.append(Path(torch.hub.get_dir()) / 'clip')
    return dirs


def sha256sum(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def _official(name: str) -> Checkpoint:
    try:
        return OFFICIAL_CHECKPOINTS[name]
    except KeyError:
        raise ValueError(
            f'unknown CLIP backbone {name!r}: expected one of {", ".join(OFFICIAL_CHECKPOINTS)} '
            'or the path of a local checkpoint file'
        ) from None


def find_cached(name: str, directories: list[Path] | None = None) -> tuple[Path | None, list[Path]]:
    """The first intact file for ``name`` in ``directories`` (default :func:`search_dirs`),
    and any corrupted ones (wrong SHA-256) met on the way."""
    checkpoint = _official(name)
    corrupted = []
    for directory in search_dirs() if directories is None else directories:
        path = directory / checkpoint.filename
        if path.is_file():
            if sha256sum(path) == checkpoint.sha256:
                return path, corrupted
            corrupted.append(path)
    return None, corrupted


def download(name: str, directory: str | os.PathLike | None = None, *, progress: bool = True,
             timeout: float | None = None) -> Path:
    """Download the official file for ``name`` into ``directory`` and verify it.

    The bytes go to a temporary file beside the target, hashed as they arrive;
    the file replaces the target only when the SHA-256 matches. Any failure
    removes the temporary file and leaves the target as it was. An intact
    target is kept as it is; one process at a time downloads a given file.
    """
    checkpoint = _official(name)
    directory = Path(directory) if directory is not None else search_dirs()[0]
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / checkpoint.filename
    with FileLock(directory / f'.{checkpoint.filename}.lock'):
        # Another process may have fetched it while this one waited for the lock.
        if target.is_file() and sha256sum(target) == checkpoint.sha256:
            return target
        _fetch_verified(checkpoint, name, target, progress=progress, timeout=timeout)
    return target


def _fetch_verified(checkpoint: Checkpoint, name: str, target: Path, *, progress: bool,
                    timeout: float | None) -> None:
    digest = hashlib.sha256()
    try:
        with atomic_file(target, 'wb') as out, urllib.request.urlopen(
                checkpoint.url, timeout=timeout or DOWNLOAD_TIMEOUT) as source:
            total = int(source.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024,
                      desc=f'CLIP {name}', disable=not progress) as bar:
                for block in iter(lambda: source.read(_CHUNK), b''):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            if total is not None and out.tell() != total:
                raise OSError(f'download of {checkpoint.url} stopped after {out.tell()} of {total} bytes')
            if digest.hexdigest() != checkpoint.sha256:  # inside the block: the file is discarded
                raise OSError(
                    f'download of {checkpoint.url} has SHA-256 {digest.hexdigest()}, '
                    f'expected {checkpoint.sha256}; the file was discarded'
                )
    except http.client.HTTPException as error:  # e.g. IncompleteRead: not an OSError
        raise OSError(f'download of {checkpoint.url} broke off: {error!r}') from error


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, '').strip().lower() not in ('', '0', 'false', 'no')


def resolve_checkpoint(backbone: str | os.PathLike, *, allow_download: bool | None = None) -> Path:
    """The local file for ``backbone``: an official name via cache or download, else a path."""
    if not isinstance(backbone, (str, os.PathLike)):
        raise TypeError(
            f'backbone must be a CLIP model name or a checkpoint path, got {type(backbone).__name__}'
        )
    if isinstance(backbone, os.PathLike) or backbone not in OFFICIAL_CHECKPOINTS:
        path = Path(backbone).expanduser()
        if path.is_file():
            return path
        if isinstance(backbone, os.PathLike) or os.sep in backbone or path.suffix:
            raise FileNotFoundError(
                f'CLIP checkpoint file {str(path)!r} does not exist (nor is it one of the official '
                f'backbone names: {", ".join(OFFICIAL_CHECKPOINTS)})'
            )
    checkpoint = _official(backbone)
    found, corrupted = find_cached(backbone)
    if found is not None:
        return found
    for path in corrupted:
        warnings.warn(f'ignoring {path}: its SHA-256 does not match the official {backbone} file')
    target = search_dirs()[0] / checkpoint.filename
    if allow_download is None:
        allow_download = not _offline()
    why = 'downloads are disabled' if not allow_download else None
    if allow_download:
        try:
            return download(backbone, target.parent)
        except OSError as error:  # URLError, HTTPError and timeouts are OSErrors
            why = f'the download failed: {error}'
    bad = ''.join(f'\n  a corrupted copy (checksum mismatch) is at {p}; delete or replace it' for p in corrupted)
    raise WeightsUnavailableError(
        f'CLIP weights for backbone {backbone!r} are not available ({why}).{bad}\n'
        f'  expected file: {target}\n'
        f'  official URL:  {checkpoint.url}  (SHA-256 {checkpoint.sha256})\n'
        '  to work offline: run `pyiqa-maclip download '
        f'{backbone}` on a machine with internet and copy {checkpoint.filename} into {target.parent} '
        f'(or into the directory named by ${WEIGHTS_DIR_ENV}), or pass backbone=<path of a local checkpoint>.'
    )


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('constants.pkl') or '/code/' in name for name in archive.namelist())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The CLIP state dict stored in ``path``: a TorchScript archive or a plain state dict."""
    path = Path(path)
    try:
        if _is_torchscript_archive(path):
            return torch.jit.load(str(path), map_location='cpu').state_dict()
        state = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f'{path} is not a readable CLIP checkpoint: {error}') from error
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path} does not hold a CLIP state dict (a mapping of parameter names to tensors)')
    return dict(state)


def load_clip(backbone: str | os.PathLike = 'RN50', *, allow_download: bool | None = None) -> torch.nn.Module:
    """pyiqa's CLIP model for ``backbone`` (name or path), in float32 on the CPU, in eval mode."""
    from pyiqa.archs.clip_model import build_model

    path = resolve_checkpoint(backbone, allow_download=allow_download)
    state = read_state_dict(path)
    try:
        model = build_model(state)
    except (KeyError, AssertionError, RuntimeError) as error:
        raise ValueError(f'{path} is not an OpenAI CLIP checkpoint pyiqa can build: {error!r}') from error
    return model.float().eval()


def add_subcommand(subparsers) -> None:
    """``pyiqa-maclip download [BACKBONE ...] [--verify] [--dir DIR]``."""
    parser = subparsers.add_parser(
        'download', help='fetch official CLIP weights for offline use, or verify the cached ones',
        description='Download official OpenAI CLIP checkpoints into the cache (verified by SHA-256), '
                    'or with --verify check what is cached without downloading.',
    )
    parser.add_argument('backbones', nargs='*', metavar='BACKBONE', default=['RN50'],
                        help=f'CLIP names (default: RN50); "all" for every one of: {", ".join(OFFICIAL_CHECKPOINTS)}')
    parser.add_argument('--verify', action='store_true', help='only check the cached files, download nothing')
    parser.add_argument('--dir', type=Path, default=None,
                        help=f'download into DIR (default: ${WEIGHTS_DIR_ENV} if set, else <torch hub dir>/clip)')
    parser.set_defaults(func=_download_command)


def _download_command(args) -> int:
    names = list(OFFICIAL_CHECKPOINTS) if args.backbones == ['all'] else args.backbones
    for name in names:
        _official(name)  # reject unknown names before any work
    failures = 0
    for name in names:
        found, corrupted = find_cached(name, None if args.dir is None else [args.dir])
        for path in corrupted:
            print(f'{name}: CORRUPTED {path} (SHA-256 mismatch)')
        if found is not None:
            print(f'{name}: ok {found}')
            continue
        if args.verify:
            print(f'{name}: MISSING (expected {(args.dir or search_dirs()[0]) / OFFICIAL_CHECKPOINTS[name].filename})')
            failures += 1
            continue
        try:
            print(f'{name}: downloaded {download(name, args.dir)}')
        except OSError as error:
            print(f'{name}: FAILED {error}')
            failures += 1
    return 1 if failures else 0
