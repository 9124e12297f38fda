"""Storage requests end with the call's deadline: a black-holed server (one that accepts and never answers, one
that never accepts, one that stops mid-body) and a slow or failing DNS make the lean client, the PAR client and
boto3 give up as the deadline arrives, and without a deadline they keep to the storage timeout. Loopback only:
no test sends a packet to any address but 127.0.0.1 (DNS is replaced, never asked)."""
from __future__ import annotations

import contextvars
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from onnxfn.errors import StorageUnavailable
from onnxfn.storage import deadline

PAR_PREFIX = "/p/secret-token/n/ns/b/models/o/"


# -- black holes on loopback -------------------------------------------------------------------------

class _Hole:
    """A loopback server that misbehaves one way: `silent` accepts and never answers, `full` never accepts (its
    backlog is full, so a connect hangs), `stall` answers 200 with a Content-Length of 1,000 and sends 10 bytes."""

    def __init__(self, kind: str):
        self.kind, self.held, self.stop = kind, [], threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0 if kind == "full" else 8)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if kind == "full":  # one connection fills a backlog of 0: the next SYN is dropped, the connect hangs
            for _ in range(4):
                filler = socket.socket()
                filler.settimeout(0.3)
                try:
                    filler.connect(("127.0.0.1", self.port))
                except OSError:
                    filler.close()
                    break
                self.held.append(filler)
            else:
                raise AssertionError("the backlog never filled")
        else:
            self.sock.settimeout(0.1)
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)
            if self.kind == "stall":
                threading.Thread(target=self._stall, args=(conn,), daemon=True).start()

    def _stall(self, conn):
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                piece = conn.recv(4096)
                if not piece:
                    return
                data += piece
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"e\"\r\n\r\n" + b"x" * 10)
        except OSError:
            pass

    def close(self):
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def hole(request):
    server = _Hole(request.param)
    yield server
    server.close()


@pytest.fixture
def keys(monkeypatch, tmp_path):
    """Placeholder keys for the S3 clients, and nothing that would send boto3 elsewhere (no profile, no instance
    metadata)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "placeholder")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "placeholder")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


def _store(kind: str, url: str, timeout: float):
    """The store a client speaks through: `lean` and `boto3` an S3Store on `url`, `par` an HttpStore."""
    from onnxfn.storage import s3, sigv4
    from onnxfn.storage.par import HttpStore
    if kind == "par":
        return HttpStore(url + PAR_PREFIX, timeout=timeout)
    store = s3.S3Store("s3://b/p/", "b", "p/", endpoint=url, timeout=timeout)
    store._client = (sigv4.Lean(url, "us-east-1", "placeholder", "placeholder", None, timeout) if kind == "lean"
                     else s3.Boto3(url, "us-east-1", timeout))
    return store


def _fails(action) -> tuple[float, StorageUnavailable]:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as e:
        action()
    return time.monotonic() - started, e.value


CLIENTS = ["lean", "par", "boto3"]


@pytest.mark.parametrize("hole", ["silent", "full"], indirect=True)
@pytest.mark.parametrize("client", CLIENTS)
def test_a_black_holed_server_answers_by_the_deadline(client, hole, keys):
    """Deadline 1 s, storage timeout 20 s: the HEAD (PAR: a GET) gives up as the deadline arrives."""
    store = _store(client, hole.url, 20)
    action = (lambda: store.read("model.onnx", 1 << 20)) if client == "par" else (lambda: store.stat("model.onnx"))
    with deadline.within(time.monotonic() + 1.0):
        elapsed, error = _fails(action)
    assert 0.8 < elapsed < 2.0, elapsed
    assert error.code == "storage_unavailable" and error.status == 503
    assert "secret-token" not in error.message


@pytest.mark.parametrize("hole", ["silent", "full"], indirect=True)
@pytest.mark.parametrize("client", CLIENTS)
def test_without_a_deadline_the_storage_timeout_bounds_the_request(client, hole, keys):
    """No deadline set, storage timeout 1 s: the same requests give up after about that second, not sooner."""
    assert deadline.current() is None
    store = _store(client, hole.url, 1)
    action = (lambda: store.read("model.onnx", 1 << 20)) if client == "par" else (lambda: store.stat("model.onnx"))
    elapsed, error = _fails(action)
    # botocore's retries={"max_attempts": 1} counts retries, not attempts: it tries twice, each bounded
    assert 0.8 < elapsed < (3.5 if client == "boto3" else 2.0), elapsed
    assert error.code == "storage_unavailable"


@pytest.mark.parametrize("hole", ["stall"], indirect=True)
@pytest.mark.parametrize("client", CLIENTS)
def test_a_body_that_stops_coming_is_cut_at_the_deadline(client, hole, keys):
    """Each read of a body is bounded too: the headers and 10 bytes come at once, the rest never does."""
    store = _store(client, hole.url, 20)
    with deadline.within(time.monotonic() + 1.0):
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as e:
            with store.open("model.onnx") as download:
                assert time.monotonic() - started < 0.5  # the headers came at once
                for _ in download.chunks:
                    pass
        elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 2.0, elapsed
    assert e.value.code == "storage_unavailable"


def test_the_lean_client_still_keeps_its_connection_under_a_deadline():
    from tests.unit.storage.test_sigv4 import _Scripted
    server = _Scripted([(200, {"Content-Length": "2", "ETag": '"a"'}, b"ok", False),
                        (200, {"Content-Length": "3", "ETag": '"b"'}, b"ok2", False)])
    store = server.store()
    with deadline.within(time.monotonic() + 5):
        assert store.read("a", 100)[0] == b"ok"
        assert store.read("b", 100)[0] == b"ok2"
    assert server.connections == 1


def test_a_deadline_already_gone_sends_nothing(keys):
    """No time left: a prompt StorageUnavailable, and no connection is even tried."""
    hole = _Hole("silent")
    try:
        for client in CLIENTS:
            store = _store(client, hole.url, 20)
            with deadline.within(time.monotonic() - 0.001):
                elapsed, error = _fails(lambda: store.stat("model.onnx"))
            assert elapsed < 0.5 and "deadline leaves no time" in error.message, (client, error.message)
        time.sleep(0.2)
        assert hole.held == []
    finally:
        hole.close()


# -- DNS ---------------------------------------------------------------------------------------------

@pytest.fixture
def dns(monkeypatch):
    """getaddrinfo replaced: IP literals resolve as ever; `nothing.invalid` is NXDOMAIN at once; `slow.invalid`
    hangs until the test ends (then fails: the lookup left behind never reaches a network)."""
    real, release = socket.getaddrinfo, threading.Event()

    def fake(host, port, *args, **kwargs):
        if host == "slow.invalid":
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host == "nothing.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        try:
            socket.inet_pton(socket.AF_INET, host)
        except (OSError, TypeError):
            raise AssertionError(f"a test asked DNS for {host!r}") from None
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield
    release.set()


def test_resolve_gives_up_on_a_slow_dns_and_names_the_host(dns):
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="'slow.invalid' was not resolved within 0.5 s") as e:
        deadline.resolve("slow.invalid", 443, 0.5)
    assert 0.4 < time.monotonic() - started < 1.0 and e.value.code == "storage_unavailable"
    started = time.monotonic()  # a second caller waits for the same lookup: one thread per host at most
    threads = threading.active_count()
    with pytest.raises(StorageUnavailable):
        deadline.resolve("slow.invalid", 443, 0.2)
    assert threading.active_count() == threads


def test_an_unresolvable_host_is_prompt_and_named(dns):
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="'nothing.invalid' could not be resolved: Name or service"):
        deadline.resolve("nothing.invalid", 443, 5)
    assert time.monotonic() - started < 0.5
    assert deadline.resolve("127.0.0.1", 80, 0.0) == ["127.0.0.1"]  # a literal needs no lookup


@pytest.mark.parametrize("host", ["slow.invalid", "nothing.invalid"])
@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_answers_within_the_deadline_when_dns_fails(client, host, dns, keys):
    store = _store(client, f"http://{host}:9", 20)
    with deadline.within(time.monotonic() + 1.0):
        elapsed, error = _fails(lambda: store.stat("model.onnx"))
    assert elapsed < (2.0 if host == "slow.invalid" else 0.5), elapsed
    assert error.code == "storage_unavailable"
    if client != "boto3":  # boto3 names the endpoint its own way, or not at all when it is abandoned
        assert host in error.message


# -- TLS ---------------------------------------------------------------------------------------------

@pytest.fixture
def tls(tmp_path, monkeypatch):
    """A loopback TLS server for `storage.test` (a self-signed certificate the lean client is made to trust;
    `storage.test` and `other.test` resolve to 127.0.0.1 here) answering `200 ok`, or, with `silent`, never
    starting the handshake."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    from onnxfn.storage import http as plumbing
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", tmp_path / "key.pem", "-out", tmp_path / "cert.pem", "-days", "1",
                    "-subj", "/CN=storage.test", "-addext", "subjectAltName=DNS:storage.test"],
                   check=True, capture_output=True, timeout=30)
    trusted = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    monkeypatch.setattr(plumbing, "_tls", trusted)
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host in ("storage.test", "other.test"):
            host = "127.0.0.1"
        socket.inet_pton(socket.AF_INET, host)  # anything else would be a lookup: refuse it
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    state = {"silent": False, "stop": False, "held": []}

    def serve():
        while not state["stop"]:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            state["held"].append(conn)
            if state["silent"]:
                continue
            try:
                conn.settimeout(5)
                wrapped = server.wrap_socket(conn, server_side=True)
                state["held"].append(wrapped)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += wrapped.recv(4096)
                wrapped.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: \"t\"\r\n\r\nok")
            except (OSError, ssl.SSLError):
                pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    state["port"] = listener.getsockname()[1]
    yield state
    state["stop"] = True
    thread.join(2)
    for conn in state["held"]:
        conn.close()
    listener.close()


def test_tls_is_verified_for_the_endpoints_name_and_its_handshake_is_bounded(tls):
    from onnxfn.errors import ConfigError
    from onnxfn.storage import sigv4
    from onnxfn.storage.s3 import S3Store

    def store(host):
        url = f"https://{host}:{tls['port']}"
        made = S3Store("s3://b/p/", "b", "p/", endpoint=url, timeout=20)
        made._client = sigv4.Lean(url, "us-east-1", "placeholder", "placeholder", None, 20)
        return made
    with deadline.within(time.monotonic() + 5):
        assert store("storage.test").read("a", 100) == (b"ok", '"t"')  # SNI and the check: storage.test
        with pytest.raises(ConfigError, match="certificate of other.test"):
            store("other.test").read("a", 100)
    tls["silent"] = True  # TCP accepted, the handshake never answered
    with deadline.within(time.monotonic() + 1.0):
        elapsed, error = _fails(lambda: store("storage.test").stat("a"))
    assert 0.8 < elapsed < 2.0, elapsed
    assert error.code == "storage_unavailable"


# -- the context variable --------------------------------------------------------------------------

def test_timeout_is_the_limit_or_what_the_deadline_leaves():
    assert deadline.current() is None and deadline.timeout(20) == 20
    with deadline.within(time.monotonic() + 3):
        assert 2.5 < deadline.timeout(20) <= 3 and deadline.timeout(1) == 1
        with deadline.within(None):
            assert deadline.timeout(20) == 20
        assert deadline.current() is not None
    assert deadline.current() is None
    with deadline.within(time.monotonic()):
        with pytest.raises(StorageUnavailable, match="deadline leaves no time") as e:
            deadline.timeout(20)
    assert e.value.code == "storage_unavailable" and e.value.status == 503


def test_the_deadline_belongs_to_its_context_not_to_threads_started_in_it():
    seen = []
    with deadline.within(time.monotonic() + 3):
        thread = threading.Thread(target=lambda: seen.append(deadline.current()))
        thread.start()
        thread.join()
        copied = contextvars.copy_context().run(deadline.current)
    assert seen == [None] and copied is not None


# -- who sets it -------------------------------------------------------------------------------------

def test_the_background_load_and_revalidation_run_within_their_deadlines(monkeypatch):
    """The load thread retries until the budget of the call that began it (its deadline less the margin), but its
    requests are not cut at that deadline (the call stops waiting; the load goes on for the next call); a
    revalidation's requests end within the revalidation's own 300 s."""
    from types import SimpleNamespace
    from onnxfn.runtime import loader
    from onnxfn.settings import Settings
    seen = {}

    def load(settings, budget=None, warmup=True, **kwargs):
        seen["load"] = (deadline.current(), budget)
        raise StorageUnavailable("recorded")
    monkeypatch.setattr(loader, "load", load)
    runner = loader.Runner(Settings(model_uri="/nowhere", threads=1, deadline_margin_ms=500))
    call = time.monotonic() + 5
    with pytest.raises(StorageUnavailable, match="recorded"):
        runner.get(deadline=call)
    assert seen["load"] == (None, call - 0.5)

    class Store:
        def stat(self, name):
            seen["stat"] = deadline.current()
            raise StorageUnavailable("recorded")
    monkeypatch.setattr(loader, "store_for", lambda settings: Store())
    started = time.monotonic()
    runner._revalidate(SimpleNamespace(bundle=None))
    assert started + 299 < seen["stat"] < time.monotonic() + 300.1 and deadline.current() is None


def test_the_par_client_follows_redirects_as_urllib_did_and_never_shows_its_token():
    from onnxfn.errors import ConfigError
    from onnxfn.storage.par import HttpStore
    from tests.unit.storage.test_sigv4 import _Scripted
    server = _Scripted([(302, {"Location": "/elsewhere/m.onnx", "Content-Length": "0"}, b"", False),
                        (200, {"Content-Length": "2", "ETag": '"r"'}, b"ok", False),
                        (403, {"Content-Length": "0"}, b"", False)])
    store = HttpStore(server.url + PAR_PREFIX, timeout=5)
    with deadline.within(time.monotonic() + 5):
        assert store.read("m.onnx", 100) == (b"ok", '"r"')
        with pytest.raises(ConfigError, match="expired or been revoked") as e:
            store.stat("m.onnx")
    assert [r[0].split()[1] for r in server.requests] == [PAR_PREFIX + "m.onnx", "/elsewhere/m.onnx",
                                                          PAR_PREFIX + "m.onnx"]
    assert "secret-token" not in e.value.message
