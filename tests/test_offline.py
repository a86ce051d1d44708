"""Offline means offline (issue 28 point 5): with PYIQA_MACLIP_OFFLINE set, no command opens a network
connection, whoever would open it (this package's downloader is tested in test_weights.py; here, pyiqa's own
downloads of another metric's weights)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pyiqa_maclip.app.offline import leaves_this_machine

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('event, args, host', [
    ('socket.getaddrinfo', ('huggingface.co', 443, 0, 1, 6), 'huggingface.co'),
    ('socket.getaddrinfo', ('localhost', 8080, 0, 1, 6), None),
    ('socket.getaddrinfo', (None, 0, 0, 1, 6), None),
    ('socket.connect', (None, ('93.184.216.34', 443)), '93.184.216.34'),
    ('socket.connect', (None, ('127.0.0.1', 29500)), None),  # accelerate's processes meet on the loopback
    ('socket.connect', (None, ('::1', 8080, 0, 0)), None),
    ('socket.connect', (None, ('2001:db8::1', 443, 0, 0)), '2001:db8::1'),
    ('socket.connect', (None, '/run/some.sock'), None),  # a Unix socket is no network
    ('socket.sendto', (None, b'x', ('8.8.8.8', 53)), '8.8.8.8'),
    ('open', ('/etc/hosts', 'r', 0), None),
])
def test_which_socket_events_leave_the_machine(event, args, host):
    assert leaves_this_machine(event, args) == host


@pytest.mark.slow  # a fresh interpreter loads pyiqa
def test_another_metric_cannot_download_its_weights_offline(tmp_path):
    """pyiqa's MUSIQ fetches its weights itself (torch.hub): offline, that is one line and exit 2, no connection."""
    photos = tmp_path / 'photos'
    shutil.copytree(Path(sysconfig.get_paths()['purelib']) / 'ResultsCalibra' / 'dist_dir', photos)
    env = {**os.environ, 'PYIQA_MACLIP_OFFLINE': '1', 'TORCH_HOME': str(tmp_path / 'hub')}
    run = subprocess.run([sys.executable, '-m', 'pyiqa_maclip', 'score', str(photos), '-o', str(tmp_path / 'm.csv'),
                          '--metric', 'musiq', '--no-progress'], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    errors = [line for line in run.stderr.splitlines() if 'error' in line]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(errors) == 1 and 'PYIQA_MACLIP_OFFLINE is set, so nothing is downloaded and no connection to' in errors[0]
    assert 'Traceback' not in run.stderr and not (tmp_path / 'm.csv').exists()
