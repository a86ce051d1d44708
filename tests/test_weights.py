"""Weight handling, offline: a local HTTP server on 127.0.0.1 stands in for OpenAI's.

``PYIQA_MACLIP_MIRROR`` points downloads at the local server and the checksum table
entry of the name under test is set to the served file's SHA-256; every other step
(cache lookup, temporary file, hashing, atomic move, loading) is the real code.
"""
import hashlib
import os
import subprocess
import sys
import threading
import time

import pyiqa
import pytest
import torch
from pyiqa.archs import clip_model

from local_server import cache_fixture, files_in, server_fixture  # noqa: F401  (fixtures cache, server)

from pyiqa_maclip import MACLIP, safe_io, weights
from pyiqa_maclip import download as downloader
from pyiqa_maclip.app import cli
from pyiqa_maclip.app.scorers import Recipe
from pyiqa_maclip.errors import UserError
from pyiqa_maclip.testing import random_images
from pyiqa_maclip.weights import WeightsUnavailableError


def test_table_matches_pyiqa_urls():
    """Every name pyiqa's CLIP loader knows, with the same official URL (checksum in the path)."""
    assert set(weights.OFFICIAL_CHECKPOINTS) == set(clip_model._MODELS)
    for name in weights.OFFICIAL_CHECKPOINTS:
        assert weights.official_url(name) == clip_model._MODELS[name]


def test_download_is_verified_cached_and_reused(cache, server, tiny_rn):
    path = weights.resolve('RN50').path
    assert path == cache / 'RN50.pt'
    assert path.read_bytes() == tiny_rn.read_bytes()
    assert files_in(cache) == ['RN50.pt']  # no temporary file left
    assert weights.resolve('RN50').path == path
    assert server.requests == 1  # the second call used the verified cache


def test_concurrent_downloads_fetch_the_file_once(cache, server, tiny_rn):
    """Processes starting together (e.g. accelerate ranks) take turns: one download, all get the file."""
    server.mode = 'slow'
    results, errors = [], []

    def fetch():
        try:
            results.append(weights.download('RN50', cache, progress=False))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results == [cache / 'RN50.pt'] * 3
    assert server.requests == 1
    assert (cache / 'RN50.pt').read_bytes() == tiny_rn.read_bytes()
    assert files_in(cache) == ['RN50.pt']


def test_metric_by_name_after_download_scores_like_the_local_file(cache, server, tiny_rn):
    image = random_images(2, 240, 300)
    by_name = pyiqa.create_metric('maclip', backbone='RN50', device='cpu')(image)
    torch.testing.assert_close(by_name, MACLIP(backbone=str(tiny_rn))(image), rtol=0, atol=0)


def test_checksum_mismatch_is_discarded(cache, server):
    server.payload = server.payload[:-1] + b'x'
    with pytest.raises(WeightsUnavailableError, match='SHA-256'):
        weights.resolve('RN50')
    assert files_in(cache) == []


def test_interrupted_download_leaves_nothing_and_a_rerun_completes(cache, server, tiny_rn):
    server.mode = 'truncate'
    with pytest.raises(WeightsUnavailableError, match='download failed'):
        weights.resolve('RN50')
    assert files_in(cache) == []
    server.mode = 'ok'
    assert weights.resolve('RN50').path.read_bytes() == tiny_rn.read_bytes()


def test_corrupted_cache_is_never_loaded_and_gets_replaced(cache, server, tiny_rn):
    cache.mkdir(parents=True)
    (cache / 'RN50.pt').write_bytes(b'not the weights')
    with pytest.warns(UserWarning, match='does not match'):
        path = weights.resolve('RN50').path
    assert path.read_bytes() == tiny_rn.read_bytes()


def test_corrupted_cache_offline_is_reported(cache, server, monkeypatch):
    cache.mkdir(parents=True)
    (cache / 'RN50.pt').write_bytes(b'not the weights')
    monkeypatch.setenv(weights.OFFLINE_ENV, '1')
    with pytest.warns(UserWarning), pytest.raises(WeightsUnavailableError) as raised:
        weights.resolve('RN50')
    assert 'corrupted' in str(raised.value) and str(cache / 'RN50.pt') in str(raised.value)
    assert server.requests == 0
    assert (cache / 'RN50.pt').read_bytes() == b'not the weights'  # reported, left for the user


def test_weights_dir_is_searched_first_and_receives_downloads(cache, server, tmp_path, monkeypatch, tiny_rn):
    own = tmp_path / 'my-weights'
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(own))
    assert weights.resolve('RN50').path == own / 'RN50.pt'
    assert files_in(cache) == []


def test_no_network_fails_fast_with_a_helpful_message(cache, monkeypatch, tiny_rn):
    """What a user without internet sees: backbone, expected path, URL, and how to work offline. Failing
    takes no longer than building the metric from a local file (a limit scaled from this machine: a
    retry or a wait would take far longer)."""
    start = time.monotonic()
    pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu')
    building = time.monotonic() - start
    monkeypatch.setenv(weights.MIRROR_ENV, 'http://127.0.0.1:9/clip/models')  # discard port: refused
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as raised:
        pyiqa.create_metric('maclip', backbone='ViT-B/32', device='cpu')
    assert time.monotonic() - start < 3 * building + 1
    message = str(raised.value)
    for words in ("'ViT-B/32'", str(cache / 'ViT-B-32.pt'), weights.official_url('ViT-B/32'),
                  'pyiqa-maclip download ViT-B/32', weights.WEIGHTS_DIR_ENV, 'mirror URL:',
                  'give its path instead of the name', 'pyiqa-maclip download --stand-in standin.pth'):
        assert words in message, words
    assert 'backbone=' not in message  # what the command's user typed was --backbone


def test_the_url_is_labelled_official_or_mirror(cache, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, 'yes')
    with pytest.raises(WeightsUnavailableError) as raised:
        weights.resolve('RN50')
    assert 'official URL:  https://openaipublic.azureedge.net/clip/models/afeb0e10' in str(raised.value)
    monkeypatch.setenv(weights.MIRROR_ENV, 'http://127.0.0.1:9/clip/models')
    with pytest.raises(WeightsUnavailableError) as raised:
        weights.resolve('RN50')
    assert 'mirror URL:    http://127.0.0.1:9/clip/models/afeb0e10' in str(raised.value)
    assert 'official' not in str(raised.value)


@pytest.mark.slow  # waits for a wall-clock timeout
def test_unresponsive_server_times_out(cache, server, monkeypatch):
    server.mode = 'hang'
    monkeypatch.setattr(downloader, 'DOWNLOAD_TIMEOUT', 1.0)
    with pytest.raises(WeightsUnavailableError, match='timed out'):  # the socket's timeout ended it: no hang
        weights.resolve('RN50')
    assert files_in(cache) == []


def test_offline_switch_never_touches_the_network(cache, server, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, '1')
    with pytest.raises(WeightsUnavailableError, match='downloads are disabled'):
        weights.resolve('RN50')
    with pytest.raises(WeightsUnavailableError, match='downloads are disabled'):
        weights.resolve('RN50', allow_download=True)  # offline means offline, whatever the caller asks
    with pytest.raises(WeightsUnavailableError, match=f'CLIP RN50 was not downloaded: {weights.OFFLINE_ENV} forbids'):
        weights.download('RN50', cache)
    assert server.requests == 0 and server.connections == 0
    assert not cache.exists()


def test_offline_download_command_checks_the_cache_and_connects_nowhere(cache, server, monkeypatch, capsys):
    """Issue 28, point 5: `download` in offline mode reports as --verify does, and says why it did not download."""
    monkeypatch.setenv(weights.OFFLINE_ENV, '1')
    assert cli.main(['download', 'RN50']) == 1
    out, err = capsys.readouterr()
    assert out == f'RN50: MISSING (expected {cache / "RN50.pt"})\n'
    assert err == (f'pyiqa-maclip download: {weights.OFFLINE_ENV} is set: offline mode forbids downloading, so the '
                   'cached files are only checked\n')
    assert server.connections == 0 and not cache.exists()  # not even the folder

    monkeypatch.delenv(weights.OFFLINE_ENV)
    assert cli.main(['download', 'RN50']) == 0
    monkeypatch.setenv(weights.OFFLINE_ENV, 'yes')
    capsys.readouterr()
    assert cli.main(['download', 'RN50']) == 0  # everything asked for is there
    assert capsys.readouterr().out == f'RN50: ok {cache / "RN50.pt"}\n'
    (cache / 'RN50.pt').write_bytes(b'damaged')
    assert cli.main(['download', 'RN50']) == 1
    assert capsys.readouterr().out == (f'RN50: CORRUPTED {cache / "RN50.pt"} (SHA-256 mismatch; {weights.OFFLINE_ENV} '
                                       'forbids replacing it)\n')
    assert server.connections == 1  # the one download made online


def test_an_official_torchscript_archive_and_its_state_dict_give_identical_scores(checkpoints, monkeypatch):
    """OpenAI's files are TorchScript archives (loaded by torch.jit.load, recognised by SHA-256)."""
    scripted = checkpoints('tiny-ViT', 'torchscript')
    monkeypatch.setitem(weights.OFFICIAL_CHECKPOINTS, 'ViT-B/32', weights.OFFICIAL_CHECKPOINTS['ViT-B/32']._replace(
        sha256=weights.sha256sum(scripted)))
    image = random_images(2, 256, 300)
    by_archive = MACLIP(backbone=str(scripted))(image)
    plain = MACLIP(backbone=checkpoints('tiny-ViT', 'state_dict'))(image)  # a pathlib.Path works too
    torch.testing.assert_close(plain, by_archive, rtol=0, atol=0)


@pytest.mark.parametrize('backbone, words', [
    ('RN5', "unknown CLIP backbone 'RN5' \\(did you mean RN50\\?\\)"),
    ('rn50', 'did you mean RN50'),
    ('vit-b/32', "unknown CLIP backbone 'vit-b/32' \\(did you mean ViT-B/32\\?\\)"),
    ('/no/such/file.pt', 'does not exist'),
    ('ViT-B/99', 'ViT-B/32'),
    (50, 'backbone must be'),
    (' ', 'the backbone is empty'),
])
def test_unknown_backbones(cache, backbone, words):
    with pytest.raises(UserError, match=words):
        weights.resolve(backbone)
    assert not cache.exists()  # nothing downloaded or created


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match='is a folder'):
        weights.resolve(str(tmp_path))


def _counting_sha256(monkeypatch) -> list:
    """The files the weights code hashes from now on."""
    calls, real = [], weights.sha256sum
    monkeypatch.setattr(weights, 'sha256sum', lambda path: calls.append(path) or real(path))
    return calls


def test_a_run_reads_and_hashes_a_local_checkpoint_once(tiny_rn, monkeypatch):
    """The fingerprint and the loader take the same resolved checkpoint (issue 20, point 4)."""
    hashed = _counting_sha256(monkeypatch)
    read = []
    load = torch.load
    monkeypatch.setattr(torch, 'load', lambda f, *a, **k: read.append(f) or load(f, *a, **k))
    recipe = Recipe('maclip', {'backbone': str(tiny_rn)})
    assert recipe.fingerprint['checkpoint_sha256'] == hashlib.sha256(tiny_rn.read_bytes()).hexdigest()
    recipe.build('cpu')
    assert hashed == [tiny_rn] and read == [tiny_rn]


def test_loading_a_local_state_dict_hashes_nothing(tiny_rn, monkeypatch):
    """Only a TorchScript archive is hashed (to know whether it is OpenAI's); a state dict is data."""
    hashed = _counting_sha256(monkeypatch)
    weights.load_clip(tiny_rn)
    assert hashed == []


def test_a_run_hashes_an_official_file_once(cache, server, monkeypatch):
    weights.resolve('RN50')  # downloaded and verified
    hashed = _counting_sha256(monkeypatch)
    recipe = Recipe('maclip', {})
    assert recipe.fingerprint['checkpoint_sha256'] == weights.OFFICIAL_CHECKPOINTS['RN50'].sha256
    recipe.build('cpu')
    assert hashed == [cache / 'RN50.pt']


# ---- what the command line asks before torch loads (issue 28, point 3)


@pytest.mark.parametrize('content, kind', [
    (b'\x89PNG\r\n\x1a\n' + bytes(64), 'a PNG image'),
    (b'\xff\xd8\xff\xe0' + bytes(64), 'a JPEG image'),
    (b'%PDF-1.7\n%\xe2\xe3\xcf\xd3\n', 'a PDF document'),
    (b'PK\x03\x04' + bytes(64), 'a zip archive that torch.save did not write, or one cut short'),
])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, content, kind):
    path = tmp_path / 'weights.pt'
    path.write_bytes(content)
    with pytest.raises(UserError, match=f'^{path} is not a CLIP checkpoint: .*\\(it is {kind}\\)$'):
        weights.check_backbone(path)


def test_every_kind_of_checkpoint_file_passes_the_torch_free_check(checkpoints, tmp_path):
    model = torch.nn.Linear(2, 2)
    torch.save(model.state_dict(), tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    for path in (checkpoints('tiny-RN'), checkpoints('tiny-RN', 'torchscript'), tmp_path / 'legacy.pth'):
        assert weights.check_backbone(str(path)) == path


def test_offline_without_the_file_is_answered_by_check_backbone(cache, monkeypatch):
    """No hashing: a file of the right name is enough here; its SHA-256 is checked when it is resolved."""
    monkeypatch.setenv(weights.OFFLINE_ENV, '1')
    with pytest.raises(WeightsUnavailableError, match=f"'RN50' are not available \\(downloads are disabled by "
                                                      f"{weights.OFFLINE_ENV}\\)"):
        weights.check_backbone('RN50')
    cache.mkdir(parents=True)
    (cache / 'RN50.pt').write_bytes(b'not checked yet')
    assert weights.check_backbone('RN50') == 'RN50'
    monkeypatch.delenv(weights.OFFLINE_ENV)
    assert weights.check_backbone('ViT-B/32') == 'ViT-B/32'  # online: downloaded when resolved


_COMMAND = '''\
import sys
from pyiqa_maclip.app.cli import main
status = main(sys.argv[1:])
print('loaded:', sorted({'torch', 'pyiqa'} & {name.split('.')[0] for name in sys.modules}))
sys.exit(status)
'''


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize('offline, args, words', [
    ('', ['score', '{image}', '-o', '{tmp}/s.csv', '--backbone', '{image}'],
     '--backbone {image}: {image} is not a CLIP checkpoint: neither a state dict saved with torch.save nor an '
     'official OpenAI file (it is a PNG image)'),
    ('', ['explain', '{image}', '-o', '{tmp}/x', '--backbone', '{text}'], 'is not a CLIP checkpoint'),
    ('1', ['score', '{image}', '-o', '{tmp}/s.csv', '--backbone', 'RN50'],
     f"'RN50' are not available (downloads are disabled by {weights.OFFLINE_ENV})."),
    ('1', ['explain', '{image}', '-o', '{tmp}/x'], "'RN50' are not available"),
])
def test_weights_mistakes_are_answered_before_torch_loads(cache, tmp_path, offline, args, words):
    """One line, exit status 2, neither torch nor pyiqa imported."""
    from PIL import Image

    fill = {'tmp': tmp_path, 'image': tmp_path / 'a.png', 'text': tmp_path / 'notes.pt'}
    Image.new('RGB', (8, 8)).save(fill['image'])
    fill['text'].write_text('fine-tuned on my photos\n')
    env = {**os.environ, 'TORCH_HOME': str(cache.parent.parent), weights.OFFLINE_ENV: offline}
    run = subprocess.run([sys.executable, '-c', _COMMAND, *[a.format(**fill) for a in args]], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'pyiqa-maclip {args[0]}: error: '), run.stderr[-2000:]
    assert words.format(**fill) in lines[0]
    assert run.stdout == 'loaded: []\n'


# ---- stand-in weights for a first run without the official file (issue 28, point 4)


def test_stand_in_weights_are_written_said_to_be_meaningless_and_score(tmp_path, capsys):
    path = tmp_path / 'standin.pth'
    assert cli.main(['download', 'tiny-RN', '--stand-in', str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'tiny-RN: stand-in written to {path}: RANDOM weights') and 'MEANINGLESS' in out
    assert [p.name for p in tmp_path.iterdir()] == ['standin.pth']  # no temporary file left
    assert (path.stat().st_mode & 0o777) == 0o666 & ~safe_io.current_umask()
    scores = MACLIP(backbone=str(path))(random_images(2, 240, 300))
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


@pytest.mark.parametrize('args, words', [
    (['RN51', '--stand-in', '{new}'], '--stand-in {new}: expected one architecture to imitate, one of RN50, '
                                      'ViT-B/32, tiny-RN, tiny-ViT; got RN51'),
    (['RN50', 'ViT-B/32', '--stand-in', '{new}'], 'expected one architecture'),
    (['--stand-in', '{mine}'], '--stand-in {mine}: it exists; delete it or choose another file name'),
    (['--stand-in', '{tmp}/nowhere/w.pth'], 'the folder {tmp}/nowhere does not exist'),
    (['--verify', '--stand-in', '{new}'], 'it takes neither --verify nor --dir'),
])
def test_stand_in_mistakes(tmp_path, capsys, args, words):
    fill = {'tmp': tmp_path, 'new': tmp_path / 'w.pth', 'mine': tmp_path / 'mine.pth'}
    fill['mine'].write_text('my notes\n')
    assert cli.main(['download', *[a.format(**fill) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith('pyiqa-maclip download: error: ') and err.count('\n') == 1 and words.format(**fill) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine.pth'] and fill['mine'].read_text() == 'my notes\n'
