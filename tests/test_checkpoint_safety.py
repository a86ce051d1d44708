"""No code runs from a weights file.

A TorchScript archive is a program: ``torch.jit.load`` runs each scripted module's
``__setstate__``. The archives here carry one that writes a file (``torch.from_file(...,
shared=True)`` creates it); ``torch.jit.load`` is shown to run it, this package never does.
Only files whose SHA-256 is an official one reach ``torch.jit.load``; any other archive is
refused with the command that turns it into a state dict, which is read with
``torch.load(weights_only=True)``.
"""
import os
import warnings
from pathlib import Path
from typing import Tuple

import pytest
import torch
from pyiqa.archs.clip_model import convert_weights

from pyiqa_maclip import weights
from pyiqa_maclip.errors import UserError
from pyiqa_maclip.testing import make_clip, save_state_dict, save_torchscript


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


def _official(monkeypatch, path: Path, name: str = 'RN50') -> None:
    """Make ``path``'s SHA-256 the official one of ``name``."""
    monkeypatch.setitem(weights.OFFICIAL_CHECKPOINTS, name,
                        weights.OFFICIAL_CHECKPOINTS[name]._replace(sha256=weights.sha256sum(path)))


@pytest.mark.parametrize('planted', [True, False])
def test_an_archive_other_than_openais_is_refused_with_the_conversion(planted_clip, tmp_path, marker, jit_loads,
                                                                     planted):
    path = planted_clip if planted else tmp_path / 'code.pt'
    if not planted:
        torch.jit.script(Planted(str(marker))).save(str(path))
    with pytest.raises(UserError) as raised:
        weights.load_clip(str(path))
    message = str(raised.value)
    assert "is a TorchScript archive other than OpenAI's, and loading one runs the code it holds" in message
    assert f"torch.save(torch.jit.load('{path}', map_location='cpu').state_dict(), 'state_dict.pth')" in message
    assert '\n' not in message
    assert not marker.exists() and jit_loads == []


def test_the_conversion_it_names_gives_a_file_that_loads(planted_clip, tmp_path, monkeypatch):
    """The advice works: the state dict of a trusted archive is read as data."""
    monkeypatch.chdir(tmp_path)
    model = make_clip('tiny-RN')
    archive = save_torchscript(model, tmp_path / 'mine.pt')
    torch.save(torch.jit.load(str(archive), map_location='cpu').state_dict(), 'state_dict.pth')
    loaded = weights.read_state_dict(tmp_path / 'state_dict.pth')
    assert list(loaded) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    weights.load_clip(tmp_path / 'state_dict.pth')


def test_an_archive_with_an_official_checksum_is_loaded_by_torch(planted_clip, marker, jit_loads, monkeypatch):
    """OpenAI's own files keep torch.jit.load, as in pyiqa; the table decides what is official."""
    _official(monkeypatch, planted_clip)
    weights.read_state_dict(planted_clip)
    assert jit_loads == [str(planted_clip)] and marker.exists()


def test_half_precision_archives_like_openai_files(tmp_path, monkeypatch):
    """OpenAI's files hold float16 weights beside float32 LayerNorms; the model is built in float32."""
    model = make_clip('tiny-ViT')
    convert_weights(model)
    path = tmp_path / 'half.pt'
    tokens = torch.zeros(1, model.context_length, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the tracer's notes about shapes taken as constants
        torch.jit.trace_module(model, {'encode_text': tokens}, check_trace=False).save(str(path))
    _official(monkeypatch, path, 'ViT-B/32')
    found = weights.read_state_dict(path)
    assert {t.dtype for t in found.values()} == {torch.float16, torch.float32}
    assert {p.dtype for p in weights.load_clip(path).parameters()} == {torch.float32}


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
    (b'', r'is not a CLIP checkpoint: neither a state dict saved with torch.save nor an official OpenAI file \(it is empty\)'),
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
    with pytest.raises(UserError, match=words) as raised:
        weights.load_clip(str(path))
    message = str(raised.value)
    assert message.startswith(str(path)) and '\n' not in message
    assert 'weights_only' not in message


def test_a_truncated_state_dict_is_not_a_checkpoint(tiny_rn, tmp_path):
    path = tmp_path / 'cut.pt'
    path.write_bytes(tiny_rn.read_bytes()[: 100_000])
    with pytest.raises(UserError, match='is not a CLIP checkpoint'):
        weights.load_clip(str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads any file')
def test_an_unreadable_file_is_an_os_error(tiny_rn, tmp_path):
    path = tmp_path / 'locked.pt'
    path.write_bytes(tiny_rn.read_bytes())
    path.chmod(0)
    with pytest.raises(PermissionError):
        weights.load_clip(str(path))


@pytest.fixture(scope='module')
def damaged_clip():
    """A tiny CLIP with one NaN in its first convolution (the issue's case)."""
    model = make_clip('tiny-RN')
    with torch.no_grad():
        model.visual.conv1.weight[0, 0, 0, 0] = float('nan')
    return model


def test_a_state_dict_with_a_nan_is_refused_naming_the_tensor(damaged_clip, tmp_path):
    """The tensor by name, in one line (issue 27, point 5): scoring with it gave finite, wrong numbers."""
    path = save_state_dict(damaged_clip, tmp_path / 'nan.pth')
    with pytest.raises(UserError) as raised:
        weights.load_clip(path)
    message = str(raised.value)
    assert message.startswith(f'{path} holds non-finite weights: the tensor visual.conv1.weight has 1 NaN or '
                              f'infinite value of {damaged_clip.visual.conv1.weight.numel()}')
    assert '\n' not in message


def test_an_official_archive_with_an_infinity_is_refused_too(tmp_path, monkeypatch):
    model = make_clip('tiny-RN')
    with torch.no_grad():
        model.text_projection[1, 2] = float('inf')
    path = save_torchscript(model, tmp_path / 'inf.pt')
    _official(monkeypatch, path)
    with pytest.raises(UserError, match=f'^{path} holds non-finite weights: the tensor text_projection has 1 NaN'):
        weights.read_state_dict(path)


def test_a_damaged_checkpoint_stops_the_metric_before_any_score(damaged_clip, tmp_path):
    from pyiqa_maclip import MACLIP

    path = save_state_dict(damaged_clip, tmp_path / 'nan.pth')
    with pytest.raises(UserError, match='visual.conv1.weight'):
        MACLIP(backbone=str(path))


def test_half_precision_weights_out_of_range_are_not_finite(tmp_path):
    """A float32 value above 65504 becomes an infinity when a file is saved in float16, as OpenAI's are."""
    state = make_clip('tiny-RN').state_dict()
    state['visual.attnpool.c_proj.weight'] = (state['visual.attnpool.c_proj.weight'] * 1e6).half()
    torch.save(state, tmp_path / 'overflow.pth')
    with pytest.raises(UserError, match='the tensor visual.attnpool.c_proj.weight has [0-9]+ NaN or infinite values'):
        weights.read_state_dict(tmp_path / 'overflow.pth')
