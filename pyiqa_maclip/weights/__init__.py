"""CLIP weights: official OpenAI checkpoints by name, or local files, loaded in float32.

Names resolve to OpenAI's published files, each checked against its SHA-256
before use. A file is looked for in ``$PYIQA_MACLIP_WEIGHTS_DIR`` (if set) and
then in pyiqa's CLIP cache, ``<torch hub dir>/clip`` (``$TORCH_HOME/hub/clip``,
by default ``~/.cache/torch/hub/clip``); when absent it is downloaded into the
first of those directories.

Downloads always end: besides the socket timeout, an overall deadline
(``$PYIQA_MACLIP_DOWNLOAD_DEADLINE``, default 300 s) shuts the connection down
whatever the server does, and a size cap stops a stream that is longer than the
official file can be. The bytes go to a temporary file in the target directory
that is moved into place only once its checksum matches. Processes that need
the same missing file at once (e.g. ranks of ``accelerate launch``) take turns
on a lock file beside it; a waiting process says so and gives up after a
bounded time, and the next download removes what a killed one left.

No code in a weights file is ever run, except in OpenAI's own archives (their
SHA-256 is the official one), which are loaded with ``torch.jit.load`` as pyiqa
does. Any other TorchScript archive is read as data: its tensors and the
parameter names of its modules, without executing its code. State dicts are
read with ``torch.load(weights_only=True)``.

* :mod:`.environment`: the ``PYIQA_MACLIP_*`` variables, checked;
* :mod:`.official`: the table of official files, the cache folders, checksums;
* :mod:`.downloading`: verified downloads that always end;
* :mod:`.reading` and :mod:`.archive`: files to state dicts, no code run;
* :mod:`.command`: the ``download`` command's handler.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..safe_io import one_line
from .command import download_command
from .downloading import download
from .environment import (DEADLINE_ENV, MIRROR_ENV, OFFLINE_ENV, WEIGHTS_DIR_ENV, EnvironmentValueError,
                          check_environment, env_flag, offline)
from .official import (OFFICIAL_CHECKPOINTS, Checkpoint, find_cached, official_checkpoint, search_dirs,
                       sha256sum)
from .reading import read_state_dict

__all__ = [
    'OFFICIAL_CHECKPOINTS',
    'WEIGHTS_DIR_ENV',
    'OFFLINE_ENV',
    'MIRROR_ENV',
    'DEADLINE_ENV',
    'Checkpoint',
    'WeightsUnavailableError',
    'EnvironmentValueError',
    'env_flag',
    'check_environment',
    'search_dirs',
    'sha256sum',
    'find_cached',
    'download',
    'download_command',
    'resolve_checkpoint',
    'read_state_dict',
    'load_clip',
]


class WeightsUnavailableError(FileNotFoundError):
    """An official checkpoint is neither cached (intact) nor downloadable."""


# ---------------------------------------------------------------- resolving a backbone


def resolve_checkpoint(backbone: str | os.PathLike, *, allow_download: bool | None = None) -> Path:
    """The local file for ``backbone``: an official name via cache or download, else a path."""
    return _resolve(backbone, allow_download)[0]


def _resolve(backbone: str | os.PathLike, allow_download: bool | None) -> tuple[Path, bool]:
    """``(file, official)``: ``official`` when ``backbone`` is a name whose file was checksummed."""
    if not isinstance(backbone, (str, os.PathLike)):
        raise TypeError(
            f'backbone must be a CLIP model name or a checkpoint path, got {type(backbone).__name__}'
        )
    if not os.fspath(backbone).strip():
        raise ValueError(f'the backbone is empty: expected one of {", ".join(OFFICIAL_CHECKPOINTS)}, '
                         'or the path of a local checkpoint file')
    if isinstance(backbone, os.PathLike) or backbone not in OFFICIAL_CHECKPOINTS:
        path = Path(backbone).expanduser()
        if path.is_dir():
            raise IsADirectoryError(f'{str(path)!r} is a folder: expected a CLIP checkpoint file or an official name')
        if path.is_file():
            return path, False
        if isinstance(backbone, os.PathLike) or os.sep in backbone or path.suffix:
            raise FileNotFoundError(
                f'CLIP checkpoint file {str(path)!r} does not exist (nor is it one of the official '
                f'backbone names: {", ".join(OFFICIAL_CHECKPOINTS)})'
            )
    checkpoint = official_checkpoint(backbone)
    found, corrupted = find_cached(backbone)
    if found is not None:
        return found, True
    for path in corrupted:
        warnings.warn(f'ignoring {path}: its SHA-256 does not match the official {backbone} file')
    target = search_dirs()[0] / checkpoint.filename
    why = 'downloads are disabled'
    if allow_download is None:
        allow_download = not offline()
        why += f' by {OFFLINE_ENV}'
    if allow_download:
        try:
            return download(backbone, target.parent), True
        except OSError as error:  # URLError, HTTPError and timeouts are OSErrors
            why = f'the download failed: {error}'
    bad = ''.join(f'\n  a corrupted copy (checksum mismatch) is at {p}; delete or replace it' for p in corrupted)
    raise WeightsUnavailableError(
        f'CLIP weights for backbone {backbone!r} are not available ({why}).{bad}\n'
        f'  expected file: {target}\n'
        f'  {checkpoint.url_label + ":":<14} {checkpoint.url}  (SHA-256 {checkpoint.sha256})\n'
        '  to work offline: run `pyiqa-maclip download '
        f'{backbone}` on a machine with internet and copy {checkpoint.filename} into {target.parent} '
        f'(or into the folder named by ${WEIGHTS_DIR_ENV}), or use a local checkpoint file: '
        'give its path instead of the name.'
    )


def load_clip(backbone: str | os.PathLike = 'RN50', *, allow_download: bool | None = None) -> torch.nn.Module:
    """pyiqa's CLIP model for ``backbone`` (name or path), in float32 on the CPU, in eval mode."""
    from pyiqa.archs.clip_model import build_model

    path, official = _resolve(backbone, allow_download)
    state = read_state_dict(path, official=official)
    try:
        model = build_model(state)
    except KeyError as error:
        raise ValueError(f'{path} is not an OpenAI CLIP checkpoint pyiqa can build: it lacks the tensor '
                         f'{error.args[0] if error.args else "?"}') from None
    except (AssertionError, RuntimeError, ValueError, IndexError, TypeError, AttributeError) as error:
        raise ValueError(f'{path} is not an OpenAI CLIP checkpoint pyiqa can build: '
                         f'{one_line(error) or type(error).__name__}') from None
    return model.float().eval()
