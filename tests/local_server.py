"""An HTTP server on 127.0.0.1 that stands in for OpenAI's, well-behaved or hostile (no internet needed),
and the fixtures of the download tests: ``cache`` (an empty one) and ``server`` (serving a tiny CLIP as RN50)."""
from __future__ import annotations

import hashlib
import http.server
import threading
import time

import pytest
import torch

from pyiqa_maclip.names import DEADLINE_ENV, MIRROR_ENV, OFFICIAL_CHECKPOINTS, OFFLINE_ENV, WEIGHTS_DIR_ENV

#: What the server does with a request:
#: 'ok' serves the payload; 'slow' waits 0.5 s first; 'truncate' sends half of it and closes;
#: 'hang' sends nothing; 'trickle' announces the payload and sends a byte every ``interval`` s;
#: 'trickle-headers' sends its status line a byte every ``interval`` s; 'endless' sends zeros
#: without a Content-Length until the client leaves; 'huge' announces a terabyte.
MODES = ('ok', 'slow', 'truncate', 'hang', 'trickle', 'trickle-headers', 'endless', 'huge')


class LocalServer:
    """Serves ``payload`` at every path, as ``mode`` says; ``modes`` (a list) overrides
    ``mode`` for the first requests, one entry each."""

    def __init__(self, payload: bytes = b''):
        self.payload = payload
        self.mode = 'ok'
        self.modes: list[str] = []
        self.interval = 0.2
        self.requests = 0
        self.connections = 0  # accepted, whether or not a request followed
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def do_GET(self):
                server.requests += 1
                mode = server.modes.pop(0) if server.modes else server.mode
                try:
                    getattr(self, f'_{mode.replace("-", "_")}')()
                except OSError:  # the client went away: what a hostile server may expect
                    pass
                self.close_connection = True

            def _ok(self, length=None, body=None):
                body = server.payload if body is None else body
                self.send_response(200)
                self.send_header('Content-Length', str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def _slow(self):
                time.sleep(0.5)
                self._ok()

            def _truncate(self):
                self._ok(length=len(server.payload), body=server.payload[: len(server.payload) // 2])

            def _hang(self):
                server.stop.wait(60)

            def _trickle(self):
                self.send_response(200)
                self.send_header('Content-Length', str(len(server.payload)))
                self.end_headers()
                for i in range(len(server.payload)):
                    if server.stop.wait(server.interval):
                        return
                    self.wfile.write(server.payload[i:i + 1])
                    self.wfile.flush()

            def _trickle_headers(self):
                for byte in b'HTTP/1.1 200 OK\r\nX-Padding: ' + b'x' * 10_000:
                    if server.stop.wait(server.interval):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()

            def _endless(self):
                self.send_response(200)
                self.end_headers()
                block = bytes(1 << 16)
                while not server.stop.is_set():
                    self.wfile.write(block)

            def _huge(self):
                self.send_response(200)
                self.send_header('Content-Length', str(10 ** 12))
                self.end_headers()
                self.wfile.write(server.payload)
                server.stop.wait(60)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def process_request(self, request, client_address):
                server.connections += 1
                super().process_request(request, client_address)

        self.httpd = Server(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        # shutdown() waits up to one poll interval (0.5 s by default) for the serving loop to notice
        threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.02}, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- fixtures of the download tests: import cache_fixture and server_fixture into a test module to use them


@pytest.fixture(name='cache')
def cache_fixture(tmp_path, monkeypatch):
    """An empty torch hub directory and no PYIQA_MACLIP_* variable from the environment."""
    hub = tmp_path / 'hub'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(hub))
    for name in (WEIGHTS_DIR_ENV, OFFLINE_ENV, MIRROR_ENV, DEADLINE_ENV):
        monkeypatch.delenv(name, raising=False)
    return hub / 'clip'


@pytest.fixture(name='server')
def server_fixture(tiny_rn, monkeypatch):
    """A local server serving the tiny checkpoint as 'RN50', registered under that name's checksum."""
    s = LocalServer(tiny_rn.read_bytes())
    monkeypatch.setenv(MIRROR_ENV, s.url + '/clip/models')
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, 'RN50',
                        OFFICIAL_CHECKPOINTS['RN50']._replace(sha256=hashlib.sha256(s.payload).hexdigest()))
    yield s
    s.close()


def files_in(directory) -> list[str]:
    """The files in ``directory`` but the lock files downloads leave (empty, never loaded)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith('.lock'))
