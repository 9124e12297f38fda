"""The lean SigV4 client: its signature against botocore's, and what a loopback server that misbehaves on
demand (idle closes, cut bodies, error answers) makes of it."""
from __future__ import annotations

import threading

import pytest

from onnxfn.errors import ObjectMissing


def test_sigv4_matches_botocore(monkeypatch):
    """The lean signer and botocore's sign the same request identically (host and x-amz-* headers signed)."""
    import datetime as dt
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from onnxfn.storage import sigv4
    lean = sigv4.Lean("http://127.0.0.1:8333", "eu-frankfurt-1", "AKID", "SECRET/KEY", "TOKEN", 5)
    when = dt.datetime(2026, 11, 29, 12, 30, 45, tzinfo=dt.timezone.utc)

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return when
    monkeypatch.setattr(sigv4.dt, "datetime", Frozen)
    for method, key, body, extra in [("GET", "a/b c/ü+%/../x.png", b"", {}),
                                     ("PUT", "r/x.json", b'{"a":1}', {"x-amz-meta-source-etag": "abc",
                                                                      "x-amz-meta-note": " a  b\tc "})]:
        path = lean._path("bkt", key)
        mine = lean._sign(method, path, body, extra)
        request = AWSRequest(method=method, url="http://127.0.0.1:8333" + path, data=body,
                             headers={**extra, "X-Amz-Content-Sha256": mine["x-amz-content-sha256"]})
        auth = S3SigV4Auth(Credentials("AKID", "SECRET/KEY", "TOKEN"), "s3", "eu-frankfurt-1")
        request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        auth.add_auth(request)
        theirs = request.headers["Authorization"]
        assert mine["authorization"] == theirs, (method, key)


class _Scripted:
    """A loopback HTTP/1.1 server answering each request with the next scripted (status, headers, body,
    then close?) tuple: for what a real server will not do on demand (cut bodies, idle closes)."""

    def __init__(self, script):
        import socket
        self.script, self.requests, self.connections = list(script), [], 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while self.script:
            conn, _ = self.sock.accept()
            self.connections += 1
            with conn, conn.makefile("rb") as reader:  # both closed, or the socket stays open
                while self.script:
                    head = []
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        head.append(line.decode())
                    if not head:
                        break
                    self.requests.append(head)
                    status, headers, body, close = self.script.pop(0)
                    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
                    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                    if close:
                        break

    def store(self):
        """An S3Store on this server through the lean client (placeholder keys)."""
        from onnxfn.storage import sigv4
        from onnxfn.storage.s3 import S3Store
        store = S3Store("s3://b/p/", "b", "p/", endpoint=self.url)
        store._client = sigv4.Lean(self.url, "r", "k", "s", None, 5)
        return store


def test_lean_client_replaces_a_connection_the_server_closed_while_idle():
    from onnxfn.storage import sigv4
    server = _Scripted([(200, {"Content-Length": "2", "ETag": '"a"'}, b"ok", True),
                        (200, {"Content-Length": "3", "ETag": '"b"'}, b"ok2", False)])
    lean = sigv4.Lean(server.url, "r", "k", "s", None, 5)
    with lean.get("b", "x") as (headers, chunks):
        assert b"".join(chunks) == b"ok" and headers["etag"] == '"a"'
    import time
    time.sleep(0.1)  # the server has closed the kept-alive connection by now
    with lean.get("b", "y") as (headers, chunks):
        assert b"".join(chunks) == b"ok2"
    assert len(server.requests) == 2 and server.requests[1][0].startswith("GET /b/y ")


def test_lean_client_a_body_cut_short_is_unavailable_and_caches_nothing(tmp_path):
    from onnxfn.errors import StorageUnavailable
    server = _Scripted([(200, {"Content-Length": "1000"}, b"x" * 10, True)])
    store = server.store()
    with pytest.raises(StorageUnavailable, match="after 10 of 1,000 bytes"):
        store.read("model.onnx", 1 << 20)


def test_lean_client_errors_carry_the_servers_code():
    from onnxfn.errors import ConfigError, ObjectMissing, PreconditionFailed, StorageUnavailable
    xml = b"<Error><Code>%s</Code><Message>m</Message></Error>"
    server = _Scripted([(403, {"Content-Length": "58"}, xml % b"SignatureDoesNotMatch", False),
                        (404, {"Content-Length": "45"}, xml % b"NoSuchBucket", False),
                        (412, {"Content-Length": "51"}, xml % b"PreconditionFailed", False),
                        (503, {"Content-Length": "49"}, xml % b"SlowDown12345", False)])
    store = server.store()
    with pytest.raises(ConfigError, match="refused authentication"):
        store.read("a", 100)
    with pytest.raises(ObjectMissing, match="bucket 'b' does not exist"):
        store.read("a", 100)
    with pytest.raises(PreconditionFailed):
        store.put("a", b"1", "text/plain", if_none_match=True)
    with pytest.raises(StorageUnavailable, match="503"):
        store.stat("a")


def test_lean_client_keeps_its_connection_after_an_error_answer():
    server = _Scripted([(404, {"Content-Length": "0"}, b"", False), (200, {"Content-Length": "2"}, b"ok", False)])
    store = server.store()
    with pytest.raises(ObjectMissing):
        store.stat("a")  # a HEAD's 404 has no body to read
    assert store.read("a", 100)[0] == b"ok"
    assert server.connections == 1


def test_what_the_callers_block_raises_passes_through_the_lean_client():
    """A full cache disk while downloading is the cache's error, not an unreachable server."""
    server = _Scripted([(200, {"Content-Length": "4"}, b"data", False)])
    store = server.store()
    with pytest.raises(OSError, match="No space"):
        with store.open("a") as download:
            next(download.chunks)
            raise OSError(28, "No space left on device")


def test_lean_client_credentials_and_redirects_are_configuration_errors(monkeypatch):
    from onnxfn.storage import sigv4
    from onnxfn.errors import ConfigError
    assert sigv4.Lean("http://127.0.0.1:1", "r", "k\n", "s", "t\n", 5)._token == "t"  # a stray newline is dropped
    with pytest.raises(ConfigError, match="AWS_SESSION_TOKEN holds spaces") as e:
        sigv4.Lean("http://127.0.0.1:1", "r", "k", "s", "secret\ntoken", 5)
    assert "secret" not in e.value.message
    server = _Scripted([(301, {"Content-Length": "0"}, b"", False)])
    store = server.store()
    with pytest.raises(ConfigError, match="another region or the endpoint is wrong"):
        store.stat("a")

