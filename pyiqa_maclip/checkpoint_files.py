"""What a checkpoint file holds: its format recognised without torch, its tensors read without
running code, and refused when one of them is not finite.

A CLIP checkpoint is a state dict saved by ``torch.save`` (a zip archive holding ``data.pkl``,
or before torch 1.6 a bare pickle stream) or a TorchScript archive (a zip archive holding
``code/``), as OpenAI's files are. Only a TorchScript archive the caller trusts (OpenAI's, known
by its SHA-256) is loaded with ``torch.jit.load``, which runs the code it holds; a state dict
is read with ``torch.load(weights_only=True)``, which runs none.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

from .errors import UserError

__all__ = ['STATE_DICT', 'LEGACY_STATE_DICT', 'TORCHSCRIPT', 'file_format', 'check_checkpoint_file',
           'not_a_checkpoint', 'untrusted_torchscript', 'read_state_dict', 'check_finite']

STATE_DICT, LEGACY_STATE_DICT, TORCHSCRIPT = 'state dict', 'legacy state dict', 'TorchScript archive'

#: First bytes of files often given by mistake, and what to call them.
_MAGIC = ((b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'), (b'GIF8', 'a GIF image'),
          (b'BM', 'a BMP image'), (b'II*\x00', 'a TIFF image'), (b'MM\x00*', 'a TIFF image'),
          (b'%PDF', 'a PDF document'), (b'\x1f\x8b', 'a gzip file'))


def file_format(path: str | os.PathLike) -> str | None:
    """:data:`STATE_DICT`, :data:`LEGACY_STATE_DICT` or :data:`TORCHSCRIPT` by the file's first
    bytes and, for a zip archive, its table of contents; None for anything else. Needs no torch."""
    with open(path, 'rb') as f:
        head = f.read(4)
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):  # a pickle stream
        return LEGACY_STATE_DICT
    if head != b'PK\x03\x04':
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [entry.split('/') for entry in archive.namelist()]
    except zipfile.BadZipFile:  # cut short: its table of contents, at the end, is missing
        return None
    if any(len(parts) >= 3 and parts[1] == 'code' for parts in entries):
        return TORCHSCRIPT
    return STATE_DICT if any(parts[1:] == ['data.pkl'] for parts in entries) else None


def check_checkpoint_file(path: str | os.PathLike) -> str:
    """The :func:`file_format` of ``path``; a :class:`UserError` saying what the file looks like
    if it is none. ``OSError`` if it cannot be read."""
    found = file_format(path)
    if found is None:
        raise UserError(not_a_checkpoint(path))
    return found


def not_a_checkpoint(path: str | os.PathLike) -> str:
    """The message for a file that is not a checkpoint, with what it looks like when that can be told."""
    with open(path, 'rb') as f:
        head = f.read(512)
    hint = ''
    if not head:
        hint = ' (it is empty)'
    elif head.lstrip().startswith(b'<'):
        hint = ' (it is an HTML or XML page: a web page saved in place of the file?)'
    elif _is_text(head):
        hint = ' (it is a text file)'
    else:
        kind = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
        if kind is None and head.startswith(b'PK\x03\x04'):
            kind = 'a zip archive that torch.save did not write, or one cut short'
        hint = f' (it is {kind})' if kind else ''
    return f'{path} is not a CLIP checkpoint: neither a state dict saved with torch.save nor an official OpenAI file{hint}'


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are UTF-8 text (a character cut at the end of ``head`` allowed)."""
    try:
        head.decode('utf-8')
    except UnicodeDecodeError as error:
        return b'\x00' not in head and error.start > len(head) - 4 and error.reason == 'unexpected end of data'
    return b'\x00' not in head


def untrusted_torchscript(path: str | os.PathLike) -> str:
    """The message refusing a TorchScript archive that is not OpenAI's, with the command that converts it."""
    return (f'{path} is a TorchScript archive other than OpenAI\'s, and loading one runs the code it holds; if '
            'you trust it, convert it once into a state dict, which is read as data: python -c "import torch; '
            f'torch.save(torch.jit.load({str(path)!r}, map_location=\'cpu\').state_dict(), \'state_dict.pth\')" '
            'and give the path of state_dict.pth')


def read_state_dict(path: str | os.PathLike, *, trusted: bool) -> dict:
    """The state dict in the checkpoint file ``path``, every tensor finite.

    A TorchScript archive is loaded only if ``trusted`` (one of OpenAI's files); any other file
    is read as data. Raises :class:`UserError` for a file that is not a CLIP checkpoint, holds
    Python objects besides tensors, an untrusted archive or a non-finite tensor; ``OSError`` if
    it cannot be read.
    """
    import torch

    path = Path(path)
    if check_checkpoint_file(path) == TORCHSCRIPT:
        if not trusted:
            raise UserError(untrusted_torchscript(path))
        with warnings.catch_warnings():  # torch's deprecation notice is no news for the user
            warnings.simplefilter('ignore', FutureWarning)
            state = torch.jit.load(str(path), map_location='cpu').state_dict()
    else:
        state = _load_tensors(path)
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f'{path} does not hold a CLIP state dict (a mapping of parameter names to tensors)')
    check_finite(state, path)
    return dict(state)


def _load_tensors(path: Path):
    """``torch.load(weights_only=True)`` of ``path``, its failures told as what the file is."""
    import torch

    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except OSError as error:
        raise OSError(f'cannot read {path}: {error.strerror or error}') from None
    except pickle.UnpicklingError as error:
        # torch names the global it refused; its advice to turn the check off must not reach the user.
        if refused := re.search(r'GLOBAL (\S+)', str(error)):
            raise UserError(f'{path} holds Python objects besides tensors (such as {refused[1]}), which are not '
                            'unpickled since that could run code: save only the weights, with '
                            "torch.save(model.state_dict(), 'state_dict.pth')") from None
        raise UserError(not_a_checkpoint(path)) from None
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - torch.load fails on junk in many ways (KeyError, EOFError, ...)
        raise UserError(not_a_checkpoint(path)) from None


def check_finite(state: dict, path: str | os.PathLike) -> None:
    """A :class:`UserError` naming the first floating-point tensor of ``state`` holding a NaN or an
    infinity: the model would compute numbers from it, none of them right."""
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if bad:
                raise UserError(f'{path} holds non-finite weights: the tensor {name} has {bad} NaN or infinite '
                                f'value{"s" if bad > 1 else ""} of {tensor.numel()}, so every score computed with '
                                'it would be wrong; use an intact checkpoint')
