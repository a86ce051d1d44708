"""Downloads end: against hostile servers on 127.0.0.1, every download stops in bounded time,
stops early when the stream is longer than the file can be, and the lock and temporary files
of a killed download do not block or clutter the next one.

Time bounds are generous (a loaded CI machine), but far below what the server would take:
a trickle of the 14 MB test checkpoint at a byte per 0.2 s would last 33 days.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from local_server import cache_fixture, files_in, server_fixture  # noqa: F401  (fixtures cache, server)

from pyiqa_maclip import weights
from pyiqa_maclip.weights import WeightsUnavailableError

ROOT = Path(__file__).resolve().parents[1]


def _timed_failure(call, error=OSError):
    """(seconds, message) of a call that must raise ``error``. The seconds serve only as a lower bound (a
    deadline is not cut short); which limit ended a download is told by its message, never by a
    wall-clock upper bound, which a busy machine could break."""
    start = time.monotonic()
    with pytest.raises(error) as raised:
        call()
    return time.monotonic() - start, str(raised.value)


@pytest.mark.slow  # waits for a wall-clock deadline
@pytest.mark.parametrize('mode', ['trickle', 'trickle-headers', 'hang'])
def test_a_slow_server_is_abandoned_at_the_deadline(cache, server, mode):
    """A byte every 0.2 s never trips a 30 s socket timeout; the 1.5 s deadline ends it, in the
    body, in the status line and headers, or before the first byte."""
    server.mode = mode
    took, message = _timed_failure(
        lambda: weights.download('RN50', cache, progress=False, timeout=30, deadline=1.5), TimeoutError)
    assert took > 1.4, took  # not before the deadline; the message says the deadline ended it, not the socket
    assert 'did not finish within 1.5 s' in message and weights.DEADLINE_ENV in message
    assert files_in(cache) == []  # the temporary file went with it


@pytest.mark.slow  # waits for a wall-clock deadline
def test_a_stalled_tls_handshake_is_abandoned_at_the_deadline(cache, monkeypatch):
    """An https server that accepts the connection and says nothing: the handshake is cut too."""
    listener = socket.create_server(('127.0.0.1', 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    monkeypatch.setenv(weights.MIRROR_ENV, f'https://127.0.0.1:{listener.getsockname()[1]}/clip/models')
    try:
        took, message = _timed_failure(
            lambda: weights.download('RN50', cache, progress=False, timeout=30, deadline=1.5), TimeoutError)
    finally:
        listener.close()
        for connection, _ in accepted:
            connection.close()
    assert accepted and took > 1.4, took
    assert 'did not finish within 1.5 s' in message


@pytest.mark.slow  # waits for a wall-clock deadline
def test_the_deadline_comes_from_the_environment(cache, server, monkeypatch):
    server.mode = 'trickle'
    monkeypatch.setenv(weights.DEADLINE_ENV, '1.5')
    took, message = _timed_failure(lambda: weights.resolve('RN50'), WeightsUnavailableError)
    assert took > 1.4 and 'did not finish within 1.5 s' in message


@pytest.mark.parametrize('value', ['0', '-3', 'soon', 'inf', 'nan'])
def test_a_bad_deadline_value_is_refused(cache, server, monkeypatch, value):
    monkeypatch.setenv(weights.DEADLINE_ENV, value)
    with pytest.raises(weights.EnvironmentValueError, match=f"{weights.DEADLINE_ENV}='{value}' is not a number"):
        weights.resolve('RN50')
    assert server.requests == 0


def test_an_endless_stream_stops_at_the_size_cap(cache, server, monkeypatch):
    """No Content-Length and no end: stopped once past the largest size the file can have."""
    server.mode = 'endless'
    checkpoint = weights.OFFICIAL_CHECKPOINTS['RN50']
    monkeypatch.setitem(weights.OFFICIAL_CHECKPOINTS, 'RN50', checkpoint._replace(max_bytes=4 << 20))
    _, message = _timed_failure(lambda: weights.download('RN50', cache, progress=False, deadline=60))
    assert 'sent more than 4194304 bytes' in message  # the cap ended it, not the 60 s deadline
    assert files_in(cache) == []


def test_an_announced_size_over_the_cap_is_refused_before_reading(cache, server):
    server.mode = 'huge'
    _, message = _timed_failure(lambda: weights.download('RN50', cache, progress=False, deadline=60))
    assert 'announces 1000000000000 bytes' in message  # refused on the header, not by the 60 s deadline
    assert files_in(cache) == []


def test_official_size_caps_are_above_the_files_and_bounded():
    """Caps leave room over the files' published sizes (RN50 244 MiB, RN50x64 1.26 GiB, as OpenAI's
    downloader shows them) but stop a runaway stream well before the disk fills."""
    mib = 1 << 20
    assert weights.OFFICIAL_CHECKPOINTS['RN50'].max_bytes > 244 * mib
    assert weights.OFFICIAL_CHECKPOINTS['RN50x64'].max_bytes > 1.26 * 1024 * mib
    assert all(c.max_bytes <= 2 * 1024 * mib for c in weights.OFFICIAL_CHECKPOINTS.values())


@pytest.mark.slow  # waits for a wall-clock deadline
def test_a_waiting_process_is_told_and_gives_up(cache, server, capsys):
    """Another process holds the lock and never finishes: the waiter says so, then gives up."""
    cache.mkdir(parents=True)
    holder = FileLock(cache / '.RN50.pt.lock')
    holder.acquire()
    try:
        took, message = _timed_failure(
            lambda: weights.download('RN50', cache, progress=True, timeout=0.5, deadline=1.0))
    finally:
        holder.release()
    assert took > 1.4  # the message says the wait for the lock, not the socket, ended it
    assert 'another process has been downloading CLIP RN50 for more than 1.5 s' in message
    waiting = capsys.readouterr().err
    assert 'another process is downloading it' in waiting and 'at most 1.5 s' in waiting
    assert server.requests == 0


_DOWNLOADER = """
import sys
from pyiqa_maclip import weights
weights.OFFICIAL_CHECKPOINTS['RN50'] = weights.OFFICIAL_CHECKPOINTS['RN50']._replace(sha256=sys.argv[1])
weights.download('RN50', sys.argv[2], progress=False, deadline=600)
"""


@pytest.mark.slow  # kill -9 of a fresh interpreter mid-download
def test_a_killed_download_is_taken_over_and_its_leftovers_removed(cache, server, tiny_rn):
    """kill -9 during a download: a process waiting for it takes over at once (the OS frees the
    lock), removes the temporary file the killed one left, and gets the verified file."""
    server.modes = ['trickle']  # the first request trickles; the next is served in full
    server.interval = 0.05
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    victim = subprocess.Popen([sys.executable, '-c', _DOWNLOADER, weights.OFFICIAL_CHECKPOINTS['RN50'].sha256,
                               str(cache)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        start = time.monotonic()
        while not any(name.endswith('.part') for name in files_in(cache)):
            assert victim.poll() is None, victim.stderr.read().decode()
            assert time.monotonic() - start < 120, 'the download in the other process did not start'
            time.sleep(0.1)
        leftover = [name for name in files_in(cache) if name.endswith('.part')]

        result, errors = [], []
        waiter = threading.Thread(target=lambda: _collect(result, errors, cache))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive()  # waiting for the lock
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        waiter.join(60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
    assert errors == [] and result == [cache / 'RN50.pt']
    assert (cache / 'RN50.pt').read_bytes() == tiny_rn.read_bytes()
    assert leftover and files_in(cache) == ['RN50.pt']  # the killed one's temporary file is gone
    assert server.requests == 2


def _collect(result, errors, cache):
    try:
        result.append(weights.download('RN50', cache, progress=False, deadline=60))
    except Exception as error:  # noqa: BLE001 - reported by the test
        errors.append(error)


def test_only_leftovers_of_this_file_are_removed(cache, server):
    """Temporary files of other checkpoints (perhaps being downloaded now) and the user's files stay."""
    cache.mkdir(parents=True)
    mine = cache / '.RN50.pt.k3j2h1g0.part'
    others = [cache / '.RN101.pt.a1b2c3d4.part', cache / 'RN50.pt.part', cache / 'notes.txt']
    for path in [mine, *others]:
        path.write_bytes(b'x')
    weights.download('RN50', cache, progress=False)
    assert not mine.exists() and all(path.exists() for path in others)
