"""A pre-authenticated-request (PAR) style HTTP server on loopback for tests: serves a folder
under /p/<token>/n/<ns>/b/<bucket>/o/, with faults the tests switch on: answer 503 a number
of times, cut the connection mid-body, throttle, refuse (403), or go away entirely."""
from __future__ import annotations

import hashlib
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.support.loopback import LoopbackServer

PREFIX = "/p/test-token/n/testns/b/models/o/"


class Faults:
    def __init__(self):
        self.fail_503 = 0          # answer 503 this many times
        self.cut_after = None      # bytes sent before the connection is cut (once)
        self.bytes_per_s = None    # throttle bodies
        self.forbidden = False
        self.requests: list[str] = []


class ParServer(LoopbackServer):
    """Serves `root` under PREFIX with the switched-on `faults`."""

    def __init__(self, root: Path, port: int = 0):
        self.root, self.faults = Path(root), Faults()
        super().__init__(_Handler, port)

    @property
    def url(self) -> str:
        """The bundle's PAR-style URL, for MODEL_URI."""
        return self.base + PREFIX


_etags: dict[tuple, str] = {}


def _etag(path: Path, data: bytes) -> str:
    """The file's MD5, as object stores give it, computed once per version: a remote server's own work
    must not be charged to the function's cold start in bench/coldstart.py."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _etags:
        _etags[key] = '"' + hashlib.md5(data).hexdigest() + '"'
    return _etags[key]


class _Handler(BaseHTTPRequestHandler):
    server: ParServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        faults = self.server.faults
        faults.requests.append(f"{self.command} {self.path}")
        if faults.forbidden:
            return self._status(403)
        if faults.fail_503 > 0:
            faults.fail_503 -= 1
            return self._status(503)
        if not self.path.startswith(PREFIX):
            return self._status(404)
        path = self.server.root / unquote(self.path[len(PREFIX):])
        if not path.is_file():
            return self._status(404)
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", _etag(path, data))
        self.end_headers()
        if not body:
            return
        if faults.cut_after is not None:
            self.wfile.write(data[:faults.cut_after])
            self.wfile.flush()
            faults.cut_after = None
            self.close_connection = True
            self.connection.shutdown(2)
            return
        step = 64 * 1024 if faults.bytes_per_s else 1 << 20
        for i in range(0, len(data), step):
            self.wfile.write(data[i:i + step])
            if faults.bytes_per_s:
                time.sleep(step / faults.bytes_per_s)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def served(tmp_path):
    """A ParServer serving a copy of the digits-cnn bundle (tests may damage or replace it)."""
    import shutil
    root = tmp_path / "served"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "digits-cnn", root)
    server = ParServer(root).start()
    yield server
    server.stop()
