"""Storage faults between the function and its bundle: a fault proxy (tests/support/faultproxy.py) in front of the
real SeaweedFS, the function under the real fdk loading s3:// through it. Whatever the fault (latency, a reset
mid-body, 503 SlowDown bursts, a black hole), every call is answered before its Fn-Deadline (503 with Retry-After,
never a hang or a 500), the cache holds only artifacts that match their sha256, and once the fault clears the same
process recovers. Events too: a result whose last write fails is not complete (its JSON, written last, is missing)
and the event's redelivery completes it."""
from __future__ import annotations

import datetime as dt
import hashlib
import time
from pathlib import Path

import pytest

from tests.support.calls import predict, remote_env
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.models import MODELS, ROOT

DEADLINE = 3.0  # seconds each faulty call is given


@pytest.fixture
def proxy(s3):
    """A fault proxy in front of the session's S3 server."""
    with FaultProxy(s3.endpoint) as p:
        yield p


@pytest.fixture
def served(function, s3, s3_client, bucket, proxy, tmp_path):
    """start(**env) -> a function serving digits-cnn from s3:// through the proxy (storage timeout 1 s)."""
    for path in (MODELS / "digits-cnn").iterdir():
        s3_client.put_object(Bucket=bucket, Key="m/" + path.name, Body=path.read_bytes())

    def start(**extra: str):
        env = {**s3.env(), **remote_env(f"s3://{bucket}/m/", tmp_path, ONNXFN_STORAGE_TIMEOUT="1",
                                        ONNXFN_DEADLINE_MARGIN_MS="300", **extra),
               "AWS_ENDPOINT_URL_S3": proxy.endpoint}
        return function(env)
    return start


def cache_problems(root: Path) -> list[str]:
    """Cached artifacts whose sha256 is not their name, and downloads left behind."""
    problems = [f"{p.name} does not match its sha256" for p in (root / "blobs").glob("*")
                if hashlib.sha256(p.read_bytes()).hexdigest() != p.name]
    return problems + [f"partial download {p.name} left" for p in (root / "tmp").glob("*")]


def timed(fn, deadline: float = DEADLINE):
    """One /predict call; its reply and whether it came before its Fn-Deadline."""
    end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=deadline)
    reply = predict(fn, deadline=deadline)
    return reply, dt.datetime.now(dt.timezone.utc) < end


def assert_unavailable(reply, in_time: bool, *codes: str) -> dict:
    """A 503 naming one of `codes`, with Retry-After, answered before the deadline."""
    assert in_time, "answered after the call's deadline"
    body = reply.json()
    assert reply.http_status == 503 and body["code"] in codes, body
    assert reply.http_headers.get("retry-after"), reply.http_headers
    return body


def recovers(fn, calls: int = 3) -> int:
    """The number of calls (deadline 10 s) until a 200; fails after `calls`."""
    for n in range(1, calls + 1):
        reply = predict(fn, deadline=10.0)
        if reply.http_status == 200:
            assert reply.json()["result"]["label"] == "7"
            return n
        assert reply.http_status == 503, reply.body
    pytest.fail(f"no 200 within {calls} calls after the fault cleared: {reply.body!r}")


def test_latency_within_the_deadline_is_served(served, proxy, tmp_path):
    proxy.set(Fault.latency(0.3))
    fn = served()
    reply, in_time = timed(fn, deadline=10.0)
    assert in_time and reply.http_status == 200 and reply.json()["result"]["label"] == "7", reply.body
    assert proxy.injected("latency") >= 2, proxy.log  # the manifest and the model, each late
    assert cache_problems(tmp_path / "cache") == []


@pytest.mark.parametrize("fault", [Fault.blackhole(), Fault.latency(30.0)], ids=["blackhole", "latency-30s"])
def test_no_answer_from_storage_is_a_503_before_the_deadline(served, proxy, tmp_path, fault):
    proxy.set(fault)
    fn = served()
    for _ in range(2):
        assert_unavailable(*timed(fn), "model_loading", "storage_unavailable")
    assert fn.alive and cache_problems(tmp_path / "cache") == []
    proxy.clear()
    # the first call after the fault: a load still stuck on it fails for lack of an earlier call's time,
    # and this call starts a fresh one within its own
    assert recovers(fn) == 1
    assert fn.alive and cache_problems(tmp_path / "cache") == []


@pytest.mark.parametrize("client", ["auto", "boto3"])  # auto: the lean SigV4 client here
def test_a_reset_mid_body_keeps_nothing_and_the_next_call_recovers(served, proxy, tmp_path, client):
    proxy.set(Fault.reset(4096))  # the manifest (1.8 KB) passes, the model (254 KB) is cut
    fn = served(ONNXFN_S3_CLIENT=client)
    body = assert_unavailable(*timed(fn), "storage_unavailable", "model_loading")
    assert proxy.injected("reset") >= 1
    if body["code"] == "storage_unavailable":
        assert "model.onnx" in body["error"], body
    sha = hashlib.sha256((MODELS / "digits-cnn" / "model.onnx").read_bytes()).hexdigest()
    assert not (tmp_path / "cache" / "blobs" / sha).exists()
    proxy.clear()
    recovers(fn)
    assert (tmp_path / "cache" / "blobs" / sha).exists() and cache_problems(tmp_path / "cache") == []


def test_a_short_503_burst_is_absorbed_by_the_retries(served, proxy, tmp_path):
    proxy.set(Fault.slowdown(3))
    fn = served()
    reply, in_time = timed(fn, deadline=10.0)
    assert in_time and reply.http_status == 200, reply.body
    assert proxy.injected("slowdown") == 3
    assert cache_problems(tmp_path / "cache") == []


def test_503s_until_cleared_are_a_503_naming_them_then_recovery(served, proxy, tmp_path):
    proxy.set(Fault.slowdown())
    fn = served()
    body = assert_unavailable(*timed(fn), "storage_unavailable")
    assert "SlowDown" in body["error"] and "manifest.json" in body["error"], body
    assert proxy.injected("slowdown") >= 2  # retried before giving up
    proxy.clear()
    assert recovers(fn) == 1
    assert cache_problems(tmp_path / "cache") == []


def test_a_warm_model_keeps_answering_while_storage_is_black_holed(served, proxy, tmp_path):
    fn = served(ONNXFN_REVALIDATE_SECONDS="1")
    assert predict(fn).http_status == 200
    proxy.set(Fault.blackhole())
    for _ in range(40):  # until the background revalidation has met the black hole
        reply, in_time = timed(fn)
        assert in_time and reply.http_status == 200, reply.body
        if proxy.injected("blackhole"):
            break
        time.sleep(0.1)
    assert proxy.injected("blackhole") >= 1
    reply, in_time = timed(fn)
    assert in_time and reply.http_status == 200 and reply.json()["cold"] is False
    assert cache_problems(tmp_path / "cache") == []


def test_an_event_whose_json_write_fails_leaves_no_complete_looking_result_and_redelivery_completes_it(
        function, s3, s3_client, bucket, proxy, tmp_path):
    """The mask is written, then every write of the JSON gets 503 SlowDown: the invocation fails (502, so the
    platform delivers the event again) before its deadline, with no JSON (the mark of a complete result); once the
    fault clears, the same event writes the JSON, which points at the mask already there."""
    import io
    import json
    from models.train.phantoms import make_phantom, write_png16
    hu, _ = make_phantom(3, (96, 96))
    write_png16(tmp_path / "p.png", hu)
    s3_client.put_object(Bucket=bucket, Key="ct/p.png", Body=(tmp_path / "p.png").read_bytes())
    env = {**s3.env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint, "MODEL_URI": str(MODELS / "lesion-unet"),
           "ONNXFN_BAKED_BUNDLE": "", "ONNXFN_EVENT_SOURCES": f"s3://{bucket}/", "ONNXFN_STORAGE_TIMEOUT": "1",
           "ONNXFN_DEADLINE_MARGIN_MS": "300"}
    fn = function(env, entry=ROOT / "functions" / "events.py")
    event = json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": bucket}, "object": {"key": "ct/p.png"}}}]}).encode()
    proxy.set(Fault.slowdown(match=r"^PUT .*/results/ct/p\.png\.json$"))
    end = time.monotonic() + DEADLINE
    reply = fn.call(event, "application/json", deadline=DEADLINE)
    assert time.monotonic() < end and reply.status == 502, reply.body
    assert proxy.injected("slowdown") >= 2  # retried before giving up
    written = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="results/").get("Contents", [])}
    assert "results/ct/p.png.mask.png" in written and "results/ct/p.png.json" not in written
    proxy.clear()
    summary = fn.call(event, "application/json", deadline=10.0).json()
    assert summary["written"] == 1, summary
    result = json.loads(s3_client.get_object(Bucket=bucket, Key="results/ct/p.png.json")["Body"].read())
    from PIL import Image
    mask = Image.open(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=result["result"]["mask"]["key"])["Body"].read()))
    assert mask.size == (96, 96)
