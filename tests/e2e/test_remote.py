"""Cold starts from a pre-authenticated URL through the real fdk: deadlines, storage down
and back, revalidation, pins and baked bundles."""
from __future__ import annotations

import json
import shutil
import time

from tests.support.models import MODELS
from onnxfn.bundles import bundle as bundles
from tests.support.calls import predict, remote_env
from tests.support.parserver import ParServer


def env(server, tmp_path, **extra):
    return remote_env(server.url, tmp_path, **extra)


def test_cold_start_from_a_par_url(function, served, tmp_path):
    fn = function(env(served, tmp_path))
    answer = predict(fn).json()
    assert answer["result"]["label"] == "7" and answer["runtime"]["source"] == "remote" and answer["cold"]
    assert predict(fn).json()["cold"] is False
    sha = bundles.load(MODELS / "digits-cnn").manifest.portable.sha256
    assert (tmp_path / "cache" / "blobs" / sha).is_file()
    assert "test-token" not in fn.logs()  # a PAR token is a credential: never logged


def test_a_deadline_too_short_answers_503_and_the_load_goes_on(function, served, tmp_path):
    served.faults.bytes_per_s = 130_000  # the 266 KB model takes about 2 s
    fn = function(env(served, tmp_path, ONNXFN_DEADLINE_MARGIN_MS="300"))
    fn.call(b"", "image/png", method="POST", url="/predict")  # imports done: what follows is the deadline logic
    started = time.monotonic()
    reply = predict(fn, deadline=1.0)
    assert time.monotonic() - started < 1.0  # answered before the deadline
    assert reply.http_status == 503 and reply.json()["code"] == "model_loading"
    assert reply.http_headers["retry-after"] == "2"
    answer = predict(fn).json()  # joins the load still under way
    assert answer["result"]["label"] == "7"
    assert sum(r.startswith("GET") and r.endswith("model.onnx") for r in served.faults.requests) == 1


def test_storage_down_at_cold_start_then_back(function, served, tmp_path):
    port, root = served.server_address[1], served.root
    served.stop()
    fn = function(env(served, tmp_path, ONNXFN_DEADLINE_MARGIN_MS="200"))
    reply = predict(fn, deadline=5.0)
    assert reply.http_status == 503 and reply.json()["code"] == "storage_unavailable"
    assert "unreachable" in reply.json()["error"]
    back = ParServer(root, port=port).start()
    try:
        assert predict(fn).json()["result"]["label"] == "7"  # no restart needed
    finally:
        back.stop()


def test_revalidation_swaps_to_a_new_version_without_blocking(function, served, tmp_path):
    fn = function(env(served, tmp_path, ONNXFN_REVALIDATE_SECONDS="1"))
    assert predict(fn).json()["model"]["name"] == "digits-cnn"
    shutil.rmtree(served.root)
    shutil.copytree(MODELS / "digits-sklearn", served.root)
    time.sleep(1.1)
    names = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        started = time.monotonic()
        names.append(predict(fn).json()["model"]["name"])
        assert time.monotonic() - started < 1.0  # calls are never blocked by the check
        if names[-1] == "digits-sklearn":
            break
        time.sleep(0.1)
    assert names[0] == "digits-cnn" and names[-1] == "digits-sklearn"
    assert '"event":"model_swapped"' in fn.logs()


def test_a_pinned_bundle_never_revalidates(function, served, tmp_path):
    pin = bundles.load(MODELS / "digits-cnn").manifest_sha256
    fn = function(env(served, tmp_path, ONNXFN_REVALIDATE_SECONDS="1", MODEL_SHA256=pin))
    assert predict(fn).json()["model"]["name"] == "digits-cnn"
    count = len(served.faults.requests)
    time.sleep(1.2)
    for _ in range(3):
        assert predict(fn).json()["model"]["name"] == "digits-cnn"
    time.sleep(0.3)
    assert len(served.faults.requests) == count


def test_a_pin_that_does_not_match_is_refused(function, served, tmp_path):
    fn = function(env(served, tmp_path, MODEL_SHA256="a" * 64))
    reply = predict(fn)
    assert reply.http_status == 500 and reply.json()["code"] == "pin_mismatch"


def test_a_baked_bundle_is_used_first(function, served, tmp_path):
    baked = tmp_path / "image" / "bundle"
    shutil.copytree(MODELS / "digits-sklearn", baked)
    fn = function(env(served, tmp_path, ONNXFN_BAKED_BUNDLE=str(baked)))
    answer = predict(fn).json()
    assert answer["model"]["name"] == "digits-sklearn" and answer["runtime"]["source"] == "baked"
    assert served.faults.requests == []


def test_a_baked_bundle_that_does_not_match_the_pin_is_skipped(function, served, tmp_path):
    baked = tmp_path / "image" / "bundle"
    shutil.copytree(MODELS / "digits-sklearn", baked)
    pin = bundles.load(MODELS / "digits-cnn").manifest_sha256
    fn = function(env(served, tmp_path, ONNXFN_BAKED_BUNDLE=str(baked), MODEL_SHA256=pin))
    answer = predict(fn).json()
    assert answer["model"]["name"] == "digits-cnn" and answer["runtime"]["source"] == "remote"
    assert '"event":"baked_bundle_ignored"' in fn.logs()


def test_a_damaged_remote_artifact_is_a_500_and_never_served(function, served, tmp_path):
    manifest = json.loads((served.root / "manifest.json").read_text())
    (served.root / "model.onnx").write_bytes(b"\0" * manifest["artifacts"][0]["size"])
    fn = function(env(served, tmp_path))
    reply = predict(fn)
    assert reply.http_status == 500 and reply.json()["code"] == "checksum_mismatch"
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []
    shutil.copy(MODELS / "digits-cnn" / "model.onnx", served.root / "model.onnx")
    assert predict(fn).json()["result"]["label"] == "7"
