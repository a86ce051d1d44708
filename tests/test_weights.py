"""Weight handling, offline: a local HTTP server on 127.0.0.1 stands in for OpenAI's.

``PYIQA_MACLIP_MIRROR`` points downloads at the local server and the checksum table
entry of the name under test is set to the served file's SHA-256; every other step
(cache lookup, temporary file, hashing, atomic move, loading) is the real code.
"""
import os
import threading
import time

import pyiqa
import pytest
import torch
from pyiqa.archs import clip_model

from local_server import cache_fixture, files_in, server_fixture  # noqa: F401  (fixtures cache, server)

from pyiqa_maclip import MACLIP, weights
from pyiqa_maclip.testing import random_images
from pyiqa_maclip.weights import WeightsUnavailableError


def test_table_matches_pyiqa_urls():
    """Every name pyiqa's CLIP loader knows, with the same official URL (checksum in the path)."""
    assert set(weights.OFFICIAL_CHECKPOINTS) == set(clip_model._MODELS)
    for name, checkpoint in weights.OFFICIAL_CHECKPOINTS.items():
        assert checkpoint.url == clip_model._MODELS[name]


def test_download_is_verified_cached_and_reused(cache, server, tiny_rn):
    path = weights.resolve_checkpoint('RN50')
    assert path == cache / 'RN50.pt'
    assert path.read_bytes() == tiny_rn.read_bytes()
    assert files_in(cache) == ['RN50.pt']  # no temporary file left
    assert weights.resolve_checkpoint('RN50') == path
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
        weights.resolve_checkpoint('RN50')
    assert files_in(cache) == []


def test_interrupted_download_leaves_nothing_and_a_rerun_completes(cache, server, tiny_rn):
    server.mode = 'truncate'
    with pytest.raises(WeightsUnavailableError, match='download failed'):
        weights.resolve_checkpoint('RN50')
    assert files_in(cache) == []
    server.mode = 'ok'
    assert weights.resolve_checkpoint('RN50').read_bytes() == tiny_rn.read_bytes()


def test_corrupted_cache_is_never_loaded_and_gets_replaced(cache, server, tiny_rn):
    cache.mkdir(parents=True)
    (cache / 'RN50.pt').write_bytes(b'not the weights')
    with pytest.warns(UserWarning, match='does not match'):
        path = weights.resolve_checkpoint('RN50')
    assert path.read_bytes() == tiny_rn.read_bytes()


def test_corrupted_cache_offline_is_reported(cache, server, monkeypatch):
    cache.mkdir(parents=True)
    (cache / 'RN50.pt').write_bytes(b'not the weights')
    monkeypatch.setenv(weights.OFFLINE_ENV, '1')
    with pytest.warns(UserWarning), pytest.raises(WeightsUnavailableError) as raised:
        weights.resolve_checkpoint('RN50')
    assert 'corrupted' in str(raised.value) and str(cache / 'RN50.pt') in str(raised.value)
    assert server.requests == 0
    assert (cache / 'RN50.pt').read_bytes() == b'not the weights'  # reported, left for the user


def test_weights_dir_is_searched_first_and_receives_downloads(cache, server, tmp_path, monkeypatch, tiny_rn):
    own = tmp_path / 'my-weights'
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(own))
    assert weights.resolve_checkpoint('RN50') == own / 'RN50.pt'
    assert files_in(cache) == []


def test_no_network_fails_fast_with_a_helpful_message(cache, monkeypatch):
    """What a user without internet sees: backbone, expected path, URL, and how to work offline."""
    monkeypatch.setenv(weights.MIRROR_ENV, 'http://127.0.0.1:9/clip/models')  # discard port: refused
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as raised:
        pyiqa.create_metric('maclip', backbone='ViT-B/32', device='cpu')
    assert time.monotonic() - start < 10
    message = str(raised.value)
    for words in ("'ViT-B/32'", str(cache / 'ViT-B-32.pt'), weights.OFFICIAL_CHECKPOINTS['ViT-B/32'].url,
                  'pyiqa-maclip download ViT-B/32', weights.WEIGHTS_DIR_ENV, 'mirror URL:',
                  'give its path instead of the name'):
        assert words in message, words
    assert 'backbone=' not in message  # what the command's user typed was --backbone


def test_the_url_is_labelled_official_or_mirror(cache, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, 'yes')
    with pytest.raises(WeightsUnavailableError) as raised:
        weights.resolve_checkpoint('RN50')
    assert 'official URL:  https://openaipublic.azureedge.net/clip/models/afeb0e10' in str(raised.value)
    monkeypatch.setenv(weights.MIRROR_ENV, 'http://127.0.0.1:9/clip/models')
    with pytest.raises(WeightsUnavailableError) as raised:
        weights.resolve_checkpoint('RN50')
    assert 'mirror URL:    http://127.0.0.1:9/clip/models/afeb0e10' in str(raised.value)
    assert 'official' not in str(raised.value)


def test_unresponsive_server_times_out(cache, server, monkeypatch):
    server.mode = 'hang'
    monkeypatch.setattr(weights.downloading, 'DOWNLOAD_TIMEOUT', 1.0)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match='timed out'):
        weights.resolve_checkpoint('RN50')
    assert time.monotonic() - start < 10
    assert files_in(cache) == []


def test_offline_switch_never_touches_the_network(cache, server, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, '1')
    with pytest.raises(WeightsUnavailableError, match='downloads are disabled'):
        weights.resolve_checkpoint('RN50')
    assert server.requests == 0


def test_torchscript_and_state_dict_give_identical_scores(checkpoints):
    image = random_images(2, 256, 300)
    scripted = MACLIP(backbone=str(checkpoints('tiny-ViT', 'torchscript')))(image)
    plain = MACLIP(backbone=checkpoints('tiny-ViT', 'state_dict'))(image)  # a pathlib.Path works too
    torch.testing.assert_close(plain, scripted, rtol=0, atol=0)


@pytest.mark.parametrize('backbone, error, words', [
    ('RN5', ValueError, "unknown CLIP backbone 'RN5' \\(did you mean RN50\\?\\)"),
    ('rn50', ValueError, 'did you mean RN50'),
    ('/no/such/file.pt', FileNotFoundError, 'does not exist'),
    ('ViT-B/99', FileNotFoundError, 'ViT-B/32'),
    (50, TypeError, 'backbone must be'),
    (' ', ValueError, 'the backbone is empty'),
])
def test_unknown_backbones(cache, backbone, error, words):
    with pytest.raises(error, match=words):
        weights.resolve_checkpoint(backbone)


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(IsADirectoryError, match='is a folder'):
        weights.resolve_checkpoint(str(tmp_path))


def _counting_sha256(monkeypatch) -> list:
    """Count how many times the weights code starts a SHA-256 over file contents."""
    import hashlib
    calls, real = [], hashlib.sha256
    monkeypatch.setattr(weights.official.hashlib, 'sha256', lambda *a: calls.append(1) or real(*a))
    return calls


def test_an_unchanged_checkpoint_is_hashed_once_per_process(tmp_path, monkeypatch):
    import hashlib
    path = tmp_path / 'weights.bin'
    path.write_bytes(b'x' * 3_000_000)
    monkeypatch.setattr(weights.official, '_HASHED', {})
    later = time.time_ns() + 10_000_000_000  # as if the file had been written 10 s ago
    monkeypatch.setattr(weights.official.time, 'time_ns', lambda: later)
    expected = hashlib.sha256(b'x' * 3_000_000).hexdigest()
    calls = _counting_sha256(monkeypatch)
    assert [weights.sha256sum(path) for _ in range(3)] == [expected] * 3
    assert len(calls) == 1


def test_a_checkpoint_rewritten_in_place_is_hashed_again(tmp_path, monkeypatch):
    """Same size, same inode, modification time set back: its ctime still changed."""
    import hashlib
    path = tmp_path / 'weights.bin'
    path.write_bytes(b'a' * 1000)
    monkeypatch.setattr(weights.official, '_HASHED', {})
    later = time.time_ns() + 10_000_000_000
    monkeypatch.setattr(weights.official.time, 'time_ns', lambda: later)
    assert weights.sha256sum(path) == hashlib.sha256(b'a' * 1000).hexdigest()
    status = path.stat()
    time.sleep(0.01)
    with open(path, 'r+b') as f:
        f.write(b'b' * 1000)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert weights.sha256sum(path) == hashlib.sha256(b'b' * 1000).hexdigest()


def test_a_just_written_checkpoint_is_not_remembered(tmp_path, monkeypatch):
    path = tmp_path / 'weights.bin'
    path.write_bytes(b'c' * 1000)
    monkeypatch.setattr(weights.official, '_HASHED', {})
    calls = _counting_sha256(monkeypatch)
    weights.sha256sum(path)
    weights.sha256sum(path)
    assert len(calls) == 2 and not weights.official._HASHED
