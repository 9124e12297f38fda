"""Bundles on a real S3 server (SeaweedFS on loopback): s3:// and oci:// through the real fdk."""
from __future__ import annotations

import threading

import pytest

from conftest import MODELS, ROOT
from onnxfn import bundle as bundles
from onnxfn.runner import Runner
from onnxfn.settings import Settings

DIGIT = (ROOT / "samples" / "digit-7.png").read_bytes()


def upload(client, bucket: str, prefix: str, name: str = "digits-cnn") -> None:
    for path in (MODELS / name).iterdir():
        client.put_object(Bucket=bucket, Key=prefix + path.name, Body=path.read_bytes())


def fn_env(s3, tmp_path, uri: str, **extra) -> dict:
    return {**s3.env(), "MODEL_URI": uri, "ONNXFN_CACHE_DIR": str(tmp_path / "cache"),
            "ONNXFN_BAKED_BUNDLE": "", **extra}


def predict(fn, deadline=30.0):
    return fn.call(DIGIT, "image/png", method="POST", url="/predict", deadline=deadline)


def test_cold_start_from_s3(function, s3, s3_client, bucket, tmp_path):
    upload(s3_client, bucket, "models/digits/")
    fn = function(fn_env(s3, tmp_path, f"s3://{bucket}/models/digits/"))
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


def test_oci_endpoint_and_settings_follow_oracle_rules():
    from onnxfn.store import open_store
    store = open_store("oci://scans@examplens/models/digits", oci_region="us-phoenix-1")
    assert store.bucket == "scans" and store.prefix == "models/digits/"
    assert store.endpoint == "https://examplens.compat.objectstorage.us-phoenix-1.oraclecloud.com"
    config = store.client.meta.config
    assert config.s3["addressing_style"] == "path" and config.signature_version == "s3v4"
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert store.client.meta.endpoint_url == store.endpoint


def test_oci_region_from_the_resource_principal(monkeypatch):
    from onnxfn.errors import ConfigError
    from onnxfn.store import open_store
    monkeypatch.delenv("OCI_RESOURCE_PRINCIPAL_REGION", raising=False)
    with pytest.raises(ConfigError, match="ONNXFN_OCI_REGION"):
        open_store("oci://b@ns/p/")
    monkeypatch.setenv("OCI_RESOURCE_PRINCIPAL_REGION", "eu-frankfurt-1")
    assert "eu-frankfurt-1" in open_store("oci://b@ns/p/").endpoint


def test_wrong_credentials_name_authentication(function, s3, s3_client, bucket, tmp_path):
    upload(s3_client, bucket, "m/")
    fn = function(fn_env(s3, tmp_path, f"s3://{bucket}/m/", AWS_SECRET_ACCESS_KEY="wrong-secret"))
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


def test_server_down_at_cold_start_then_back(function, s3, s3_client, bucket, tmp_path):
    upload(s3_client, bucket, "m/")
    fn = function(fn_env(s3, tmp_path, f"s3://{bucket}/m/", ONNXFN_DEADLINE_MARGIN_MS="200",
                         ONNXFN_STORAGE_TIMEOUT="2"))
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
