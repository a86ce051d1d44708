"""CLIP weights: a backbone name or file resolved once into a :class:`Checkpoint`, then loaded.

:func:`resolve` turns ``backbone`` into a :class:`Checkpoint` (its file, its SHA-256 and
whether it is one of OpenAI's), reading and hashing the file at most once; the run's
fingerprint and :func:`load_clip` both take that checkpoint.

* A name (``RN50``, ``ViT-B/32``, ... see :data:`~pyiqa_maclip.names.OFFICIAL_CHECKPOINTS`)
  is OpenAI's published file, looked for in ``$PYIQA_MACLIP_WEIGHTS_DIR`` then in pyiqa's
  CLIP cache ``<torch hub dir>/clip``, used only if its SHA-256 is the official one, and
  downloaded (:mod:`.download`) into the first of those folders when missing, unless
  ``$PYIQA_MACLIP_OFFLINE``. ``$PYIQA_MACLIP_MIRROR`` replaces OpenAI's server.
* A path is a local file, read by :mod:`.checkpoint_files`: a state dict (read as data) or
  one of OpenAI's TorchScript archives (recognised by its SHA-256). Any other TorchScript
  archive is code, so it is refused with the one-line command that turns it into a state dict.

:func:`check_environment` and :func:`check_backbone` need no torch: the command line asks
them before anything loads.
"""
from __future__ import annotations

import difflib
import math
import os
import sys
import urllib.parse
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import checkpoint_files
from . import download as downloader
from .download import sha256sum
from .errors import UserError, one_line
from .names import DEADLINE_ENV, MIRROR_ENV, OFFICIAL_CHECKPOINTS, OFFLINE_ENV, WEIGHTS_DIR_ENV

__all__ = ['OFFICIAL_BASE_URL', 'OFFICIAL_CHECKPOINTS', 'DOWNLOAD_DEADLINE', 'Checkpoint', 'WeightsUnavailableError',
           'EnvironmentValueError', 'env_flag', 'check_environment', 'search_dirs', 'official_url', 'sha256sum',
           'find_cached', 'did_you_mean', 'check_backbone', 'resolve', 'download', 'read_state_dict', 'load_clip']

OFFICIAL_BASE_URL = 'https://openaipublic.azureedge.net/clip/models'
DOWNLOAD_DEADLINE = 300.0  # seconds a whole download may take, unless $PYIQA_MACLIP_DOWNLOAD_DEADLINE says


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
    corrupted = []
    for path in _files_named(name, directories):
        if sha256sum(path) == OFFICIAL_CHECKPOINTS[name].sha256:
            return path, corrupted
        corrupted.append(path)
    return None, corrupted


def _files_named(name: str, directories: list[Path] | None = None) -> list[Path]:
    """The files bearing the name of ``name``'s official file in ``directories`` (default
    :func:`search_dirs`), in order, not verified."""
    filename = OFFICIAL_CHECKPOINTS[name].filename
    return [d / filename for d in (search_dirs() if directories is None else directories) if (d / filename).is_file()]


def did_you_mean(name: str) -> str:
    same_letters = [known for known in OFFICIAL_CHECKPOINTS if known.lower() == name.strip().lower()]
    close = same_letters or difflib.get_close_matches(name, OFFICIAL_CHECKPOINTS, n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def check_backbone(backbone) -> str | Path:
    """The official name ``backbone`` is, or the checkpoint file it names; a :class:`UserError` otherwise:
    an unknown name, a file that is not a checkpoint, a name whose file is not cached while
    ``$PYIQA_MACLIP_OFFLINE`` forbids downloading it.

    Reads the file system's entries and a file's first bytes, no torch and no hashing (a
    cached file's SHA-256 is checked when it is resolved), so the command line asks it before
    anything loads.
    """
    found = _identify(backbone)
    if isinstance(found, Path):
        checkpoint_files.check_checkpoint_file(found)
    elif env_flag(OFFLINE_ENV) and not _files_named(found):
        raise _unavailable(found, f'downloads are disabled by {OFFLINE_ENV}')
    return found


def _identify(backbone) -> str | Path:
    """The official name ``backbone`` is, or the existing file it names; a :class:`UserError` otherwise."""
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


def resolve(backbone, *, allow_download: bool = True) -> Checkpoint:
    """The :class:`Checkpoint` of ``backbone`` (a name, a path, or a checkpoint, returned as is).

    A name's cached file is checked against its SHA-256, or downloaded if ``allow_download`` and
    ``$PYIQA_MACLIP_OFFLINE`` does not forbid it; a path is taken as it is (its format checked,
    hashed later if needed).
    """
    if isinstance(backbone, Checkpoint):
        return backbone
    found = _identify(backbone)
    if isinstance(found, Path):
        checkpoint = Checkpoint(found)
        if checkpoint_files.check_checkpoint_file(found) == checkpoint_files.TORCHSCRIPT and not checkpoint.official:
            raise UserError(checkpoint_files.untrusted_torchscript(found))
        return checkpoint
    name = found
    path, corrupted = find_cached(name)
    if path is not None:
        return Checkpoint(path, name)
    for bad in corrupted:
        warnings.warn(f'ignoring {bad}: its SHA-256 does not match the official {name} file')
    why = f'downloads are disabled by {OFFLINE_ENV}' if env_flag(OFFLINE_ENV) else 'downloads are disabled'
    if allow_download and not env_flag(OFFLINE_ENV):
        try:
            return Checkpoint(download(name), name)
        except OSError as error:  # URLError, HTTPError and timeouts are OSErrors
            why = f'the download failed: {one_line(error)}'
    raise _unavailable(name, why, corrupted)


def _unavailable(name: str, why: str, corrupted=()) -> WeightsUnavailableError:
    """The error for official weights that are neither cached intact nor downloadable (``why``; any
    ``corrupted`` copies named), and what to do."""
    official, target = OFFICIAL_CHECKPOINTS[name], search_dirs()[0] / OFFICIAL_CHECKPOINTS[name].filename
    bad_copies = ''.join(f'\n  a corrupted copy (checksum mismatch) is at {p}; delete or replace it' for p in corrupted)
    label = 'mirror URL:' if _mirror() else 'official URL:'
    return WeightsUnavailableError(
        f'CLIP weights for backbone {name!r} are not available ({why}).{bad_copies}\n'
        f'  expected file: {target}\n'
        f'  {label:<14} {official_url(name)}  (SHA-256 {official.sha256})\n'
        f'  to work offline: run `pyiqa-maclip download {name}` on a machine with internet and copy '
        f'{official.filename} into {target.parent} (or into the folder named by ${WEIGHTS_DIR_ENV}), or use a '
        'local checkpoint file: give its path instead of the name.\n'
        '  to try the tools without them: `pyiqa-maclip download --stand-in standin.pth` writes random weights '
        '(their scores are meaningless); give standin.pth as the backbone.')


def download(name: str, directory: str | os.PathLike | None = None, *, progress: bool = True,
             timeout: float | None = None, deadline: float | None = None) -> Path:
    """Download the official file for ``name`` into ``directory`` (default: the first of
    :func:`search_dirs`) and verify it; an intact file already there is kept (:func:`.download.download`).

    ``timeout`` bounds each read (default 15 s), ``deadline`` the whole transfer (default
    ``$PYIQA_MACLIP_DOWNLOAD_DEADLINE`` or 300 s) and the wait for another process's download.
    Raises ``OSError`` (``TimeoutError`` at the deadline; :class:`WeightsUnavailableError` when
    ``$PYIQA_MACLIP_OFFLINE`` forbids downloading) and leaves no partial file.
    """
    if env_flag(OFFLINE_ENV):
        raise WeightsUnavailableError(f'CLIP {name} was not downloaded: {OFFLINE_ENV} forbids downloading')
    directory = search_dirs()[0] if directory is None else Path(directory)
    return downloader.download(official_url(name), directory, OFFICIAL_CHECKPOINTS[name], label=f'CLIP {name}',
                               progress=progress, timeout=timeout,
                               deadline=_download_deadline() if deadline is None else deadline)


# ---------------------------------------------------------------- reading and building


def read_state_dict(backbone) -> dict:
    """The CLIP state dict of a checkpoint (anything :func:`resolve` takes), without running code from it.

    Raises :class:`UserError` for a file that is not a CLIP checkpoint, holds Python objects
    besides tensors or a NaN or infinity, or is a TorchScript archive other than OpenAI's;
    ``OSError`` if unreadable.
    """
    checkpoint = resolve(backbone)
    # Only an archive needs its SHA-256 (is it OpenAI's?); a state dict is read as data, unhashed.
    torchscript = checkpoint_files.file_format(checkpoint.path) == checkpoint_files.TORCHSCRIPT
    return checkpoint_files.read_state_dict(checkpoint.path, trusted=torchscript and checkpoint.official)


def load_clip(backbone='RN50', *, allow_download: bool = True):
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
