"""Reading a checkpoint file into a CLIP state dict, without running code from it."""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from ..safe_io import one_line
from .archive import archive_root, is_torchscript, read_torchscript_tensors
from .official import OFFICIAL_CHECKPOINTS, sha256sum

__all__ = ['read_state_dict']


def _conversion_advice(path: Path) -> str:
    return ('if you trust the file, convert it once into a state dict, which is read as data: python -c '
            f'"import torch; torch.save(torch.jit.load({str(path)!r}, map_location=\'cpu\').state_dict(), '
            '\'state_dict.pth\')" and give the path of state_dict.pth')


def _content_hint(path: Path) -> str:
    """What the file looks like, for messages about files that are not checkpoints."""
    with open(path, 'rb') as f:
        head = f.read(512)
    if not head:
        return ' (it is empty)'
    if head.lstrip().startswith(b'<'):
        return ' (it is an HTML or XML page: a web page saved in place of the file?)'
    try:
        head.decode('utf-8')
    except UnicodeDecodeError:
        return ''
    return ' (it is a text file)'


def read_state_dict(path: str | os.PathLike, *, official: bool = False) -> dict[str, torch.Tensor]:
    """The CLIP state dict stored in ``path``: a TorchScript archive or a plain state dict.

    No code in the file runs. An archive is loaded with ``torch.jit.load`` only if it is
    one of OpenAI's official files (``official=True`` when its checksum was verified
    already; otherwise its SHA-256 is computed); any other archive is read as data.
    A state dict is read with ``torch.load(weights_only=True)``.

    Raises:
        ValueError: the file is not a CLIP checkpoint, holds other Python objects, or is
            an archive whose tensors cannot be read without running its code.
        OSError: the file cannot be read.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                root = archive_root(archive)
                if root is not None and is_torchscript(archive, root):
                    return _checked_state(path, _torchscript_state(path, archive, root, official))
        except zipfile.BadZipFile:
            pass  # torch.load says what it is not
    return _checked_state(path, _load_weights_only(path))


def _torchscript_state(path: Path, archive: zipfile.ZipFile, root: str, official: bool) -> dict[str, torch.Tensor]:
    if official or sha256sum(path) in {c.sha256 for c in OFFICIAL_CHECKPOINTS.values()}:
        with warnings.catch_warnings():  # torch's deprecation notice is no news for the user
            warnings.simplefilter('ignore', FutureWarning)
            return torch.jit.load(str(path), map_location='cpu').state_dict()
    try:
        return read_torchscript_tensors(archive, root)
    except (pickle.UnpicklingError, KeyError, ValueError, TypeError, RuntimeError, EOFError, IndexError,
            AttributeError, UnicodeDecodeError, SyntaxError, zipfile.BadZipFile) as error:
        raise ValueError(
            f'{path} is a TorchScript archive whose weights cannot be read without running its code '
            f'({one_line(error)}); {_conversion_advice(path)}'
        ) from None


def _load_weights_only(path: Path):
    not_a_checkpoint = (f'{path} is not a CLIP checkpoint: neither a TorchScript archive nor a state dict '
                        'saved with torch.save')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except MemoryError:
        raise
    except OSError as error:
        raise OSError(f'cannot read {path}: {error.strerror or error}') from None
    except pickle.UnpicklingError as error:
        # torch names the global it refused; its advice to turn the check off must not reach the user.
        if refused := re.search(r'GLOBAL (\S+)', str(error)):
            raise ValueError(
                f'{path} holds Python objects besides tensors (such as {refused.group(1)}), which are not '
                "unpickled since that could run code: save only the weights, with "
                "torch.save(model.state_dict(), 'state_dict.pth')"
            ) from None
        raise ValueError(not_a_checkpoint + _content_hint(path)) from None
    except Exception:  # noqa: BLE001 - torch.load fails on junk in many ways (KeyError, EOFError, ...)
        raise ValueError(not_a_checkpoint + _content_hint(path)) from None
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    return state


def _checked_state(path: Path, state) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f'{path} does not hold a CLIP state dict (a mapping of parameter names to tensors)')
    return dict(state)
