"""Bundles on a real S3 server (SeaweedFS on loopback): s3:// and oci:// through the real fdk."""
from __future__ import annotations

import contextlib
import threading

import pytest

from tests.support.calls import predict, remote_env
from tests.support.models import MODELS
from onnxfn.bundles import bundle as bundles
from onnxfn.runtime.loader import Runner
from onnxfn.settings import Settings


def upload(client, bucket: str, prefix: str, name: str = "digits-cnn") -> None:
    for path in (MODELS / name).iterdir():
        client.put_object(Bucket=bucket, Key=prefix + path.name, Body=path.read_bytes())


def fn_env(s3, tmp_path, uri: str, **extra) -> dict:
    return {**s3.env(), **remote_env(uri, tmp_path, **extra)}


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


def test_the_server_stopping_mid_download_keeps_nothing_and_the_next_call_recovers(s3, s3_client, bucket, tmp_path,
                                                                                 monkeypatch):
    """SeaweedFS is stopped after the first MB of a 48 MB artifact: the download fails as storage unavailable
    (retried until the deadline), no partial or damaged file stays in the cache, and once the server is back
    the same cache downloads and verifies it."""
    import hashlib
    import os
    import time
    from onnxfn.bundles.cache import Cache
    from onnxfn.errors import StorageUnavailable
    from onnxfn.bundles.manifest import Artifact
    from onnxfn.storage.store import open_store
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
