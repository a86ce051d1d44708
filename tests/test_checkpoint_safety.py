"""No code runs from a weights file.

A TorchScript archive is a program: ``torch.jit.load`` runs each scripted module's
``__setstate__``. The archives here carry one that writes a file (``torch.from_file(...,
shared=True)`` creates it); ``torch.jit.load`` is shown to run it, this package never does.
Only files whose SHA-256 is an official one reach ``torch.jit.load``.
"""
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch
from pyiqa.archs.clip_model import convert_weights

from pyiqa_maclip import MACLIP, weights
from pyiqa_maclip.testing import make_clip, random_images, save_torchscript


class Planted(torch.nn.Module):
    """A module whose loading writes the file named by ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.written = torch.zeros(1)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        self.written = torch.from_file(self.path, shared=True, size=16)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / 'written-by-the-archive'


@pytest.fixture
def planted_clip(tmp_path, marker):
    """A working tiny CLIP archive with a planted module, and the proof that loading it runs code."""
    model = make_clip('tiny-RN')
    model.planted = torch.jit.script(Planted(str(marker)))
    path = save_torchscript(model, tmp_path / 'planted.pt')
    assert not marker.exists()
    torch.jit.load(str(path))  # what pyiqa's loader and torch.jit.load do
    assert marker.stat().st_size == 64  # 16 float32: the archive's code ran
    marker.unlink()
    return path


@pytest.fixture
def jit_loads(monkeypatch):
    """Paths given to torch.jit.load from now on."""
    calls = []
    load = torch.jit.load

    def spy(f, *args, **kwargs):
        calls.append(str(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch.jit, 'load', spy)
    return calls


def test_a_planted_archive_scores_without_running_its_code(planted_clip, tiny_rn, marker, jit_loads):
    image = random_images(1, 224, 256)
    scores = MACLIP(backbone=str(planted_clip))(image)
    assert not marker.exists() and jit_loads == []
    # Its weights are the clean archive's: the same scores exactly.
    torch.testing.assert_close(scores, MACLIP(backbone=str(tiny_rn))(image), rtol=0, atol=0)


def test_an_archive_of_code_alone_is_refused_with_the_conversion(tmp_path, marker, jit_loads):
    path = tmp_path / 'code.pt'
    torch.jit.script(Planted(str(marker))).save(str(path))
    with pytest.raises(ValueError) as raised:
        weights.load_clip(str(path))
    message = str(raised.value)
    assert 'cannot be read without running its code' in message
    assert f"torch.save(torch.jit.load('{path}', map_location='cpu').state_dict(), 'state_dict.pth')" in message
    assert '\n' not in message
    assert not marker.exists() and jit_loads == []


def test_an_archive_with_an_official_checksum_is_loaded_by_torch(planted_clip, marker, jit_loads, monkeypatch):
    """OpenAI's own files keep torch.jit.load, as in pyiqa; the table decides what is official."""
    monkeypatch.setitem(weights.OFFICIAL_CHECKPOINTS, 'RN50', weights.Checkpoint('RN50.pt', weights.sha256sum(planted_clip)))
    weights.read_state_dict(planted_clip)
    assert jit_loads == [str(planted_clip)] and marker.exists()


@pytest.mark.parametrize('architecture', ['tiny-RN', 'tiny-ViT'])
def test_archives_read_as_data_equal_torch_jit_load(checkpoints, architecture):
    path = checkpoints(architecture)
    expected = torch.jit.load(str(path), map_location='cpu').state_dict()
    found = weights.read_state_dict(path)
    assert list(found) == list(expected)
    for name, tensor in expected.items():
        assert found[name].dtype == tensor.dtype and torch.equal(found[name], tensor), name


def test_half_precision_archives_like_openai_files(tmp_path):
    """OpenAI's files hold float16 weights beside float32 LayerNorms."""
    model = make_clip('tiny-ViT')
    convert_weights(model)
    path = tmp_path / 'half.pt'
    tokens = torch.zeros(1, model.context_length, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the tracer's notes about shapes taken as constants
        torch.jit.trace_module(model, {'encode_text': tokens}, check_trace=False).save(str(path))
    expected = torch.jit.load(str(path), map_location='cpu').state_dict()
    found = weights.read_state_dict(path)
    assert {t.dtype for t in found.values()} == {torch.float16, torch.float32}
    assert list(found) == list(expected) and all(torch.equal(found[k], expected[k]) for k in expected)


def _rewritten(source: Path, target: Path, replace: dict, compress: str = '') -> Path:
    """A copy of the archive ``source`` with some entries replaced (by their name's ending),
    and the entries ending with ``compress`` deflated."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, 'w') as new:
        for entry in old.namelist():
            ending = next((e for e in replace if entry.endswith(e)), None)
            new.writestr(entry, replace[ending] if ending is not None else old.read(entry),
                         zipfile.ZIP_DEFLATED if compress and entry.endswith(compress) else zipfile.ZIP_STORED)
    return target


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_an_archive_whose_data_calls_a_function_is_refused(tiny_rn, tmp_path, marker):
    path = _rewritten(tiny_rn, tmp_path / 'calls.pt', {'/data.pkl': pickle.dumps(_RunsCommand(marker), protocol=2)})
    with pytest.raises(ValueError, match='refers to posix.system, which a CLIP archive does not hold'):
        weights.read_state_dict(path)
    assert not marker.exists()


def test_an_archive_with_a_compressed_storage_is_refused(tiny_rn, tmp_path):
    """A deflated entry could inflate without bound (a zip bomb); torch never compresses data."""
    path = _rewritten(tiny_rn, tmp_path / 'deflated.pt', {'/data/0': bytes(1 << 20)}, compress='/data/0')
    with pytest.raises(ValueError, match='data/0 is compressed, which torch never does'):
        weights.read_state_dict(path)


def test_an_archive_with_a_short_storage_is_refused(tiny_rn, tmp_path):
    path = _rewritten(tiny_rn, tmp_path / 'short.pt', {'/data/0': b'\0' * 8})
    with pytest.raises(ValueError, match='storage 0 holds 8 bytes'):
        weights.read_state_dict(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


class _Model(torch.nn.Module):
    pass


def _save(content, path):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)


@pytest.mark.parametrize('content, words', [
    (b'', r'is not a CLIP checkpoint: neither a TorchScript archive nor a state dict saved with torch.save \(it is empty\)'),
    (b'<!DOCTYPE html><html><body>Access denied</body></html>\n', 'is not a CLIP checkpoint: .* HTML'),
    (b'RN50 weights\nfrom the shared drive\n', 'is not a CLIP checkpoint: .* text file'),  # was KeyError: 174812789
    (bytes(range(256)) * 8, 'is not a CLIP checkpoint'),
    ({'visual.proj': _Payload()}, r'holds Python objects besides tensors \(such as posix.system\)'),
    (_Model(), 'holds Python objects besides tensors'),
    ({'x': 1}, 'does not hold a CLIP state dict'),
    ({'visual.conv1.weight': torch.zeros(1)}, 'is not an OpenAI CLIP checkpoint pyiqa can build: it lacks the tensor'),
])
def test_files_that_are_not_checkpoints(tmp_path, content, words):
    """One sentence naming the file, and never torch's advice to turn weights_only off."""
    path = tmp_path / 'bad.pt'
    _save(content, path)
    with pytest.raises(ValueError, match=words) as raised:
        weights.load_clip(str(path))
    message = str(raised.value)
    assert message.startswith(str(path)) and '\n' not in message
    assert 'weights_only' not in message


def test_a_truncated_archive_is_not_a_checkpoint(tiny_rn, tmp_path):
    path = tmp_path / 'cut.pt'
    path.write_bytes(tiny_rn.read_bytes()[: 100_000])
    with pytest.raises(ValueError, match='is not a CLIP checkpoint'):
        weights.load_clip(str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads any file')
def test_an_unreadable_file_is_an_os_error(tiny_rn, tmp_path):
    path = tmp_path / 'locked.pt'
    path.write_bytes(tiny_rn.read_bytes())
    path.chmod(0)
    with pytest.raises(PermissionError):
        weights.load_clip(str(path))
