"""Plays the Fn agent: starts a function under the real fdk on a unix socket and sends it
calls exactly as Fn does (POST /call, Fn-* headers, one call at a time). Used by
`onnxfn serve`, `onnxfn demo`, the tests and the benchmarks."""
from __future__ import annotations

import datetime as dt
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
ENTRY = ROOT / "functions" / "func.py"
_FDK = "import sys; from fdk.scripts.fdk import main; sys.argv[0] = 'fdk'; main()"


@dataclass
class Response:
    """What the fdk answered the agent for one call."""
    status: int              # the status the fdk gave the agent (200, 502 or 504)
    headers: dict[str, str]  # lower-case names, as the fdk sent them
    body: bytes

    @property
    def http_status(self) -> int:
        """The status a gateway client sees: Fn-Http-Status when present."""
        return int(self.headers.get("fn-http-status", self.status))

    @property
    def http_headers(self) -> dict[str, str]:
        """The headers a gateway client sees."""
        out = {k[len("fn-http-h-"):]: v for k, v in self.headers.items() if k.startswith("fn-http-h-")}
        if "content-type" in self.headers:
            out["content-type"] = self.headers["content-type"]
        return out

    def json(self):
        import json
        return json.loads(self.body)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to end the function when its agent dies, so that a killed
    `onnxfn serve` or test run leaves no orphan behind."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Function:
    """One function container: the real fdk process, and the agent's side of its socket."""

    def __init__(self, entry: Path = ENTRY, handler: str = "handler", env: dict[str, str] | None = None,
                 timeout: float = 60.0, command: list[str] | None = None, inherit_env: bool = True):
        """`command` runs the fdk script (entry and handler are appended; default: this Python); with
        inherit_env false, `env` is the whole environment (an emulated interpreter must not see ours)."""
        self.entry, self.handler, self.timeout = Path(entry), handler, timeout
        self.command = command or [sys.executable, "-c", _FDK]
        self.env = {**(os.environ if inherit_env else {}), **(env or {})}
        self._dir = Path(tempfile.mkdtemp(prefix="onnxfn-fn-"))
        self.socket = self._dir / "lsnr.sock"
        self.log_path = self._dir / "function.log"
        self.process: subprocess.Popen | None = None
        self._conn: _UnixConnection | None = None
        self._lock = threading.Lock()
        self.started_at = 0.0

    def start(self, wait: float = 15.0) -> "Function":
        env = {**self.env, "FN_FORMAT": "http-stream", "FN_LISTENER": f"unix:{self.socket}"}
        self._dir.mkdir(exist_ok=True)  # a stopped function can be started again
        self._log = open(self.log_path, "ab")
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen([*self.command, str(self.entry), self.handler],
                                        env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + wait
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the function exited with {self.process.returncode} before listening:\n"
                                   + self.logs()[-2000:])
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the function did not open {self.socket} within {wait} s")
            time.sleep(0.005)
        return self

    def call(self, body: bytes = b"", content_type: str | None = None, *, method: str | None = None,
             url: str | None = None, headers: dict[str, str] | None = None, deadline: float = 30.0) -> Response:
        """Send one call. With `method`/`url` it is an API Gateway call (Fn-Intent: httprequest),
        whose original HTTP headers travel as Fn-Http-H-*; otherwise a direct invocation."""
        call_id = uuid.uuid4().hex
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=deadline)
        sent = {"Fn-Call-Id": call_id, "Fn-Deadline": when.isoformat().replace("+00:00", "Z"),
                "Content-Type": content_type or "application/octet-stream"}
        if method is not None:
            sent.update({"Fn-Intent": "httprequest", "Fn-Http-Method": method, "Fn-Http-Request-Url": url or "/"})
            original = dict(headers or {})
            if content_type:
                original.setdefault("Content-Type", content_type)
            for name, value in original.items():
                sent["Fn-Http-H-" + name] = value
        else:
            sent.update(headers or {})
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    conn.request("POST", "/call", body=body, headers=sent)
                    response = conn.getresponse()
                    data = response.read()
                    return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
                except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
                    self._close()
                    if attempt == 2 or not self.alive:
                        raise
                except BaseException:
                    self._close()
                    raise
        raise AssertionError("unreachable")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _connection(self) -> _UnixConnection:
        if self._conn is None:
            self._conn = _UnixConnection(str(self.socket), self.timeout)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stop(self) -> None:
        self._close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)  # the socket and the log: read logs() before stop()

    def __enter__(self) -> "Function":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
