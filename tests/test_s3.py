"""Bundles on a real S3 server (SeaweedFS on loopback): s3:// and oci:// through the real fdk."""
from __future__ import annotations

import contextlib
import threading

import pytest

from conftest import DIGIT, MODELS
from onnxfn import bundle as bundles
from onnxfn.errors import ObjectMissing
from onnxfn.runner import Runner
from onnxfn.settings import Settings



def upload(client, bucket: str, prefix: str, name: str = "digits-cnn") -> None:
    for path in (MODELS / name).iterdir():
        client.put_object(Bucket=bucket, Key=prefix + path.name, Body=path.read_bytes())


def fn_env(s3, tmp_path, uri: str, **extra) -> dict:
    return {**s3.env(), "MODEL_URI": uri, "ONNXFN_CACHE_DIR": str(tmp_path / "cache"),
            "ONNXFN_BAKED_BUNDLE": "", **extra}


def predict(fn, deadline=30.0):
    return fn.call(DIGIT, "image/png", method="POST", url="/predict", deadline=deadline)


@pytest.mark.parametrize("client", ["auto", "boto3"])  # auto: the lean SigV4 client here
def test_cold_start_from_s3(function, s3, s3_client, bucket, tmp_path, client):
    upload(s3_client, bucket, "models/digits/")
    fn = function(fn_env(s3, tmp_path, f"s3://{bucket}/models/digits/", ONNXFN_S3_CLIENT=client))
    answer = predict(fn).json()
    assert answer["result"]["label"] == "7" and answer["runtime"]["source"] == "remote"
    assert predict(fn).json()["cold"] is False
    for secret in (s3.secret_key, s3.access_key):
        assert secret not in fn.logs()


def test_oci_uri_through_the_s3_compatible_api(function, s3, s3_client, bucket, tmp_path):
    upload(s3_client, bucket, "m/")
    env = fn_env(s3, tmp_path, f"oci://{bucket}@testns/m/", ONNXFN_OCI_ENDPOINT=s3.endpoint,
                 ONNXFN_OCI_REGION="us-phoenix-1")
    env.pop("AWS_ENDPOINT_URL_S3", None)  # the oci:// mapping must find the server by itself
    fn = function(env)
    assert predict(fn).json()["result"]["label"] == "7"


def test_oci_endpoint_and_settings_follow_oracle_rules(monkeypatch):
    """Path-style URLs, SigV4 with the OCI region in the scope, no checksum headers: both clients."""
    from onnxfn import s3
    from onnxfn.store import open_store
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ocid-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    store = open_store("oci://scans@examplens/models/digits", oci_region="us-phoenix-1")
    assert store.bucket == "scans" and store.prefix == "models/digits/"
    assert store.endpoint == "https://examplens.compat.objectstorage.us-phoenix-1.oraclecloud.com"
    lean = store.client
    assert isinstance(lean, s3.Lean) and lean.region == "us-phoenix-1"
    assert lean.url("scans", "models/digits/a b+c.onnx") == store.endpoint + "/scans/models/digits/a%20b%2Bc.onnx"
    headers = lean._sign("PUT", "/scans/k", b"data", {"content-type": "text/plain"})
    assert "/us-phoenix-1/s3/aws4_request" in headers["authorization"]
    assert not [h for h in headers if "checksum" in h or h == "content-md5"]
    config = open_store("oci://scans@examplens/m/", oci_region="us-phoenix-1", s3_client="boto3").client.client.meta.config
    assert config.s3["addressing_style"] == "path" and config.signature_version == "s3v4"
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"


def test_boto3_is_used_without_keys_in_the_environment_or_for_aws_itself(monkeypatch):
    from onnxfn import s3
    from onnxfn.errors import ConfigError
    from onnxfn.store import open_store
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(open_store("oci://b@ns/p/", oci_region="us-ashburn-1").client, s3.Boto3)  # e.g. a profile
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert isinstance(open_store("s3://b/p/").client, s3.Boto3)  # AWS S3 itself: virtual hosts, redirects
    with pytest.raises(ConfigError, match="ONNXFN_S3_CLIENT=lean needs an endpoint"):
        _ = open_store("s3://b/p/", s3_client="lean").client


def test_sigv4_matches_botocore(monkeypatch):
    """The lean signer and botocore's sign the same request identically (host and x-amz-* headers signed)."""
    import datetime as dt
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from onnxfn import s3
    lean = s3.Lean("http://127.0.0.1:8333", "eu-frankfurt-1", "AKID", "SECRET/KEY", "TOKEN", 5)
    when = dt.datetime(2026, 11, 29, 12, 30, 45, tzinfo=dt.timezone.utc)

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return when
    monkeypatch.setattr(s3.dt, "datetime", Frozen)
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


def test_oci_region_from_the_resource_principal(monkeypatch):
    from onnxfn.errors import ConfigError
    from onnxfn.store import open_store
    monkeypatch.delenv("OCI_RESOURCE_PRINCIPAL_REGION", raising=False)
    with pytest.raises(ConfigError, match="ONNXFN_OCI_REGION"):
        open_store("oci://b@ns/p/")
    monkeypatch.setenv("OCI_RESOURCE_PRINCIPAL_REGION", "eu-frankfurt-1")
    assert "eu-frankfurt-1" in open_store("oci://b@ns/p/").endpoint


@pytest.mark.parametrize("client", ["auto", "boto3"])
def test_wrong_credentials_name_authentication(function, s3, s3_client, bucket, tmp_path, client):
    upload(s3_client, bucket, "m/")
    fn = function(fn_env(s3, tmp_path, f"s3://{bucket}/m/", AWS_SECRET_ACCESS_KEY="wrong-secret",
                         ONNXFN_S3_CLIENT=client))
    reply = predict(fn)
    assert reply.http_status == 500
    body = reply.json()
    assert body["code"] == "storage_auth_failed" and "authentication" in body["error"]
    assert "AWS_SECRET_ACCESS_KEY" in body["error"] and "wrong-secret" not in fn.logs()


@pytest.mark.parametrize("uri, words", [
    ("s3://no-such-bucket-onnxfn/m/", ["bucket 'no-such-bucket-onnxfn' does not exist"]),
    ("s3://{bucket}/nothing-here/", ["nothing-here/manifest.json", "does not exist"]),
])
def test_missing_bucket_or_key(function, s3, s3_client, bucket, tmp_path, uri, words):
    upload(s3_client, bucket, "m/")
    fn = function(fn_env(s3, tmp_path, uri.format(bucket=bucket)))
    reply = predict(fn)
    assert reply.http_status == 500 and reply.json()["code"] == "bundle_not_found"
    for word in words:
        assert word in reply.json()["error"]


def test_checksum_mismatch_on_s3_is_never_served(function, s3, s3_client, bucket, tmp_path):
    upload(s3_client, bucket, "m/")
    data = bytearray((MODELS / "digits-cnn" / "model.onnx").read_bytes())
    data[500] ^= 0x55
    s3_client.put_object(Bucket=bucket, Key="m/model.onnx", Body=bytes(data))
    fn = function(fn_env(s3, tmp_path, f"s3://{bucket}/m/"))
    reply = predict(fn)
    assert reply.http_status == 500 and reply.json()["code"] == "checksum_mismatch"
    assert not any((tmp_path / "cache" / "blobs").iterdir())


@pytest.mark.parametrize("client", ["auto", "boto3"])
def test_server_down_at_cold_start_then_back(function, s3, s3_client, bucket, tmp_path, client):
    upload(s3_client, bucket, "m/")
    fn = function(fn_env(s3, tmp_path, f"s3://{bucket}/m/", ONNXFN_DEADLINE_MARGIN_MS="200",
                         ONNXFN_STORAGE_TIMEOUT="2", ONNXFN_S3_CLIENT=client))
    s3.stop()
    try:
        reply = predict(fn, deadline=5.0)
        assert reply.http_status == 503 and reply.json()["code"] == "storage_unavailable"
        assert "unreachable" in reply.json()["error"]
    finally:
        s3.start()
    assert predict(fn).json()["result"]["label"] == "7"  # the same process recovers


def test_concurrent_first_loads_download_once(s3, s3_client, bucket, tmp_path, monkeypatch):
    upload(s3_client, bucket, "m/")
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    runner = Runner(Settings(model_uri=f"s3://{bucket}/m/", cache_dir=str(tmp_path / "cache"), baked_bundle="",
                             threads=1))
    results = []
    threads = [threading.Thread(target=lambda: results.append(runner.get())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runner.loads == 1 and len({id(m) for m, _ in results}) == 1
    sha = bundles.load(MODELS / "digits-cnn").manifest.portable.sha256
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == [sha]


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
        from onnxfn import s3
        from onnxfn.store import S3Store
        store = S3Store("s3://b/p/", "b", "p/", endpoint=self.url)
        store._client = s3.Lean(self.url, "r", "k", "s", None, 5)
        return store


def test_lean_client_replaces_a_connection_the_server_closed_while_idle():
    from onnxfn import s3
    server = _Scripted([(200, {"Content-Length": "2", "ETag": '"a"'}, b"ok", True),
                        (200, {"Content-Length": "3", "ETag": '"b"'}, b"ok2", False)])
    lean = s3.Lean(server.url, "r", "k", "s", None, 5)
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
    from onnxfn import s3
    from onnxfn.errors import ConfigError
    assert s3.Lean("http://127.0.0.1:1", "r", "k\n", "s", "t\n", 5)._token == "t"  # a stray newline is dropped
    with pytest.raises(ConfigError, match="AWS_SESSION_TOKEN holds spaces") as e:
        s3.Lean("http://127.0.0.1:1", "r", "k", "s", "secret\ntoken", 5)
    assert "secret" not in e.value.message
    server = _Scripted([(301, {"Content-Length": "0"}, b"", False)])
    store = server.store()
    with pytest.raises(ConfigError, match="another region or the endpoint is wrong"):
        store.stat("a")


def test_the_server_stopping_mid_download_keeps_nothing_and_the_next_call_recovers(s3, s3_client, bucket, tmp_path,
                                                                                 monkeypatch):
    """SeaweedFS is stopped after the first MB of a 48 MB artifact: the download fails as storage unavailable
    (retried until the deadline), no partial or damaged file stays in the cache, and once the server is back
    the same cache downloads and verifies it."""
    import hashlib
    import os
    import time
    from onnxfn.cache import Cache
    from onnxfn.errors import StorageUnavailable
    from onnxfn.manifest import Artifact
    from onnxfn.store import open_store
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    data = os.urandom(48 << 20)
    s3_client.put_object(Bucket=bucket, Key="m/big.bin", Body=data)
    artifact = Artifact("big.bin", hashlib.sha256(data).hexdigest(), len(data))
    store = open_store(f"s3://{bucket}/m/", timeout=2)
    real_open = store.open

    @contextlib.contextmanager
    def open_then_stop(name):
        with real_open(name) as download:
            chunks = download.chunks

            def first_then_stop():
                yield next(chunks)
                if s3.running:
                    s3.stop()
                yield from chunks
            download.chunks = first_then_stop()
            yield download
    monkeypatch.setattr(store, "open", open_then_stop)
    cache = Cache(tmp_path / "cache", 1 << 30)
    try:
        with pytest.raises(StorageUnavailable, match="unreachable"):
            cache.artifact(store, artifact, time.monotonic() + 4, set())
        assert list(cache.blobs.iterdir()) == [] and list(cache.partial.iterdir()) == []
    finally:
        if not s3.running:
            s3.start()
    monkeypatch.setattr(store, "open", real_open)
    path = cache.artifact(store, artifact, time.monotonic() + 30, set())
    assert path.stat().st_size == len(data) and path.name == artifact.sha256
