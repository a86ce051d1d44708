"""A TorchScript archive's weights, read as data: no code in the archive ever runs.

``torch.jit.load`` runs each scripted module's ``__setstate__`` (arbitrary TorchScript,
which can write files). Here ``data.pkl`` is unpickled with a whitelist that rebuilds
only tensors, containers and inert records of the archive's objects, and the names of
each module's parameters and buffers are read from its class's declarations in the
archive's source, which is parsed as text, never run.
"""
from __future__ import annotations

import ast
import collections
import io
import pickle
import re
import sys
import zipfile

import torch

__all__ = ['archive_root', 'is_torchscript', 'read_torchscript_tensors']

_MAX_SOURCE_BYTES = 16 << 20  # each source file of a CLIP archive holds a few kB


def _entry(archive: zipfile.ZipFile, name: str, *, source: bool = False) -> bytes:
    """An entry of a torch archive, read only if its size is bounded by the archive's: torch stores
    data uncompressed and compresses only source files, so no crafted entry can inflate without limit."""
    info = archive.getinfo(name)
    if source and info.file_size > _MAX_SOURCE_BYTES:
        raise ValueError(f'{name} holds {info.file_size} bytes of source code')
    if not source and info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f'{name} is compressed, which torch never does')
    return archive.read(name)  # zipfile stops at the declared size


class _ScriptObject:
    """An object of a TorchScript class, rebuilt as inert data: the class's name and the pickled state."""

    qualified_name = ''
    state = None

    def __setstate__(self, state) -> None:
        self.state = state


_STORAGE_DTYPES = {
    'FloatStorage': torch.float32, 'HalfStorage': torch.float16, 'BFloat16Storage': torch.bfloat16,
    'DoubleStorage': torch.float64, 'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8, 'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad=False, hooks=None,
                    metadata=None) -> torch.Tensor:
    """What ``torch._utils._rebuild_tensor_v2`` builds, as a view of the storage's bytes (bounds checked)."""
    if not isinstance(storage, torch.Tensor) or hooks:
        raise pickle.UnpicklingError('a tensor with backward hooks or without storage')
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript archive's ``data.pkl`` into tensors, plain containers and
    :class:`_ScriptObject`: no class of the archive is instantiated and no function but
    tensor building is called, so the archive's code never runs."""

    def __init__(self, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(_entry(archive, f'{root}data.pkl')))
        self._archive, self._root = archive, root
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == '__torch__' or module.startswith('__torch__.'):
            qualified = f'{module}.{name}'
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (_ScriptObject,), {'qualified_name': qualified})
            return self._classes[qualified]
        if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
            return _rebuild_tensor
        if (module, name) == ('collections', 'OrderedDict'):
            return collections.OrderedDict
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f'it refers to {module}.{name}, which a CLIP archive does not hold')

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f'unexpected storage reference {pid!r:.80}')
        _, dtype, key, _location, numel = pid
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f'storage {key} has {numel!r} elements')
        if key not in self._storages:
            size = numel * dtype.itemsize
            raw = _entry(self._archive, f'{self._root}data/{key}')
            if len(raw) < size:
                raise pickle.UnpicklingError(f'storage {key} holds {len(raw)} bytes, {size} expected')
            self._storages[key] = (torch.frombuffer(bytearray(raw[:size]), dtype=dtype) if size
                                   else torch.empty(0, dtype=dtype))
        return self._storages[key]


_CLASS_LINE = re.compile(r'class (\w+)\(')
_STATE_LINE = re.compile(r'\s+__(parameters|buffers)__ = (\[.*\])\s*$')


def _declared_state(archive: zipfile.ZipFile, root: str, qualified_name: str) -> frozenset[str]:
    """Names of the parameters and buffers of a TorchScript class, read from the
    ``__parameters__`` and ``__buffers__`` lines of its source in the archive (never run)."""
    module, _, name = qualified_name.rpartition('.')
    source = _entry(archive, f'{root}code/{module.replace(".", "/")}.py', source=True).decode('utf-8')
    names, current, found = set(), None, False
    for line in source.splitlines():
        if match := _CLASS_LINE.match(line):
            current = match.group(1)
            found = found or current == name
        elif current == name and (match := _STATE_LINE.match(line)):
            names.update(ast.literal_eval(match.group(2)))
    if not found:
        raise KeyError(f'no definition of {qualified_name}')
    return frozenset(names)


def read_torchscript_tensors(archive: zipfile.ZipFile, root: str) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive, as ``torch.jit.load(path).state_dict()`` gives,
    read without running any of its code.

    A module's state is the dict of its attributes; the names of the ones that are
    parameters or buffers are declared in its class's source. A module whose class
    pickles a state of its own (a custom ``__getstate__``) is skipped: its
    ``__setstate__`` is exactly the code that must not run. CLIP's modules have
    none; were weights of CLIP's hidden in one, building the model names them missing.
    """
    if f'{root}byteorder' in archive.namelist() and _entry(archive, f'{root}byteorder').decode().strip() != sys.byteorder:
        raise ValueError('its tensors are stored in the other byte order')
    declared: dict[str, frozenset[str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def collect(prefix: str, module: _ScriptObject) -> None:
        if id(module) in seen or not isinstance(module.state, dict):
            return
        seen.add(id(module))
        if module.qualified_name not in declared:
            declared[module.qualified_name] = _declared_state(archive, root, module.qualified_name)
        names = declared[module.qualified_name]
        # state_dict's order: the module's own parameters and buffers, then each submodule's.
        tensors.update((f'{prefix}{name}', value) for name, value in module.state.items()
                       if isinstance(value, torch.Tensor) and name in names)
        for name, value in module.state.items():
            if isinstance(value, _ScriptObject):
                collect(f'{prefix}{name}.', value)

    top = _ArchiveUnpickler(archive, root).load()
    if not isinstance(top, _ScriptObject):
        raise ValueError('it holds no TorchScript module')
    collect('', top)
    if not tensors:
        raise ValueError('none of its modules holds parameters stored as data')
    return tensors


def archive_root(archive: zipfile.ZipFile) -> str | None:
    """The top folder (``'name/'``) of a torch zip archive holding ``data.pkl``, or None."""
    for entry in archive.namelist():
        root, _, leaf = entry.rpartition('/')
        if leaf == 'data.pkl' and root and '/' not in root:
            return root + '/'
    return None


def is_torchscript(archive: zipfile.ZipFile, root: str) -> bool:
    """Whether a torch zip archive is TorchScript (it holds code), not a ``torch.save`` file."""
    return any(name.startswith((f'{root}code/', f'{root}constants.pkl')) for name in archive.namelist())
