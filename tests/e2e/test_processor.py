"""Object Storage events through the real fdk against a real S3 server (SeaweedFS): uploaded
images become stored results; replays, loops, poison objects, storage faults and odd keys."""
from __future__ import annotations

import copy
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.models import DIGIT, MODELS, ROOT
from tests.support.images import EVENTS
from models.train import phantoms
from onnxfn.events.results import result_name

OCI = json.loads((EVENTS / "oci-createobject.json").read_text())
S3 = json.loads((EVENTS / "s3-put-and-delete.json").read_text())


def oci_event(bucket: str, key: str, kind: str = "createobject") -> bytes:
    event = copy.deepcopy(OCI)
    event["eventType"] = "com.oraclecloud.objectstorage." + kind
    event["data"]["resourceName"] = key
    event["data"]["resourceId"] = f"/n/testns/b/{bucket}/o/{key}"
    event["data"]["additionalDetails"].update(bucketName=bucket, namespace="testns")
    return json.dumps(event).encode()


def s3_event(bucket: str, *records: tuple[str, str], client=None) -> bytes:
    """An S3 notification; with `client`, size and eTag are the objects' own, as S3 sends them."""
    from urllib.parse import quote_plus
    out = []
    for name, key in records:
        record = copy.deepcopy(S3["Records"][0])
        record["eventName"] = name
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        head = None
        if client is not None:
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except Exception:
                pass
        if head is None:
            record["s3"]["object"].pop("size", None), record["s3"]["object"].pop("eTag", None)
        else:
            record["s3"]["object"].update(size=head["ContentLength"], eTag=head["ETag"].strip('"'))
        out.append(record)
    return json.dumps({"Records": out}).encode()


@pytest.fixture
def events_fn(function, s3, tmp_path, bucket):
    """Start the events entry point; the test's bucket (in both services' forms) is the allowed source."""
    def start(model="digits-cnn", **extra):
        env = {**s3.env(), "MODEL_URI": str(MODELS / model), "ONNXFN_OCI_ENDPOINT": s3.endpoint,
               "ONNXFN_OCI_REGION": "us-phoenix-1", "ONNXFN_BAKED_BUNDLE": "",
               "ONNXFN_EVENT_SOURCES": f"oci://{bucket}@testns/,s3://{bucket}/", **extra}
        return function(env, entry=ROOT / "functions" / "events.py")
    return start


def keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def get_json(client, bucket: str, key: str) -> dict:
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_classification_result_is_written_beside_the_upload(events_fn, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="incoming/d7.png", Body=DIGIT)
    fn = events_fn()
    reply = fn.call(oci_event(bucket, "incoming/d7.png"), "application/json")
    assert reply.status == 200
    summary = reply.json()
    assert (summary["written"], summary["skipped"], summary["failed"]) == (1, 0, 0)
    assert summary["objects"][0]["outputs"] == ["results/incoming/d7.png.json"]
    assert set(summary["objects"][0]["timings_ms"]) >= {"fetch", "decode", "inference", "write", "total"}
    result = get_json(s3_client, bucket, "results/incoming/d7.png.json")
    etag = s3_client.head_object(Bucket=bucket, Key="incoming/d7.png")["ETag"].strip('"')
    assert result["result"]["label"] == "7" and result["source"] == {"bucket": bucket, "key": "incoming/d7.png",
                                                                      "etag": etag}
    assert result["model"]["sha256"] == summary["model"]["sha256"]


def test_segmentation_writes_the_mask_png_from_a_dicom(events_fn, s3_client, bucket):
    hu, truth = phantoms.make_phantom(123456, (144, 112))
    with tempfile.TemporaryDirectory() as tmp:
        phantoms.write_dicom(Path(tmp) / "p.dcm", hu)
        s3_client.put_object(Bucket=bucket, Key="ct/p.dcm", Body=(Path(tmp) / "p.dcm").read_bytes())
    fn = events_fn("lesion-unet")
    summary = fn.call(s3_event(bucket, ("ObjectCreated:Put", "ct/p.dcm"), client=s3_client), "application/json").json()
    assert summary["written"] == 1
    assert summary["objects"][0]["outputs"] == ["results/ct/p.dcm.mask.png", "results/ct/p.dcm.json"]
    result = get_json(s3_client, bucket, "results/ct/p.dcm.json")
    assert result["result"]["mask"]["key"] == "results/ct/p.dcm.mask.png" and "data" not in result["result"]["mask"]
    from PIL import Image
    mask = np.asarray(Image.open(io.BytesIO(s3_client.get_object(Bucket=bucket, Key="results/ct/p.dcm.mask.png")
                                            ["Body"].read()))) > 0
    assert mask.shape == truth.shape
    dice = 2 * (mask & (truth > 0)).sum() / (mask.sum() + (truth > 0).sum())
    assert dice > 0.9


@pytest.mark.parametrize("client", ["auto", "boto3"])  # auto: the lean SigV4 client here
def test_replay_writes_nothing_and_a_new_version_keeps_the_old_result(events_fn, s3_client, bucket, client):
    s3_client.put_object(Bucket=bucket, Key="d.png", Body=DIGIT)
    fn = events_fn(ONNXFN_S3_CLIENT=client)
    event = oci_event(bucket, "d.png")
    assert fn.call(event, "application/json").json()["written"] == 1
    before = s3_client.head_object(Bucket=bucket, Key="results/d.png.json")
    replay = fn.call(event, "application/json").json()
    assert replay["skipped"] == 1 and "already processed" in replay["objects"][0]["reason"]
    after = s3_client.head_object(Bucket=bucket, Key="results/d.png.json")
    assert after["ETag"] == before["ETag"] and after["LastModified"] == before["LastModified"]
    held = np.load(MODELS / "data" / "digits-heldout.npz")
    from tests.support.images import png
    other = png(held["images"][int(np.flatnonzero(held["labels"] == 3)[0])])
    old_etag = s3_client.head_object(Bucket=bucket, Key="d.png")["ETag"].strip('"')
    s3_client.put_object(Bucket=bucket, Key="d.png", Body=other)
    assert fn.call(oci_event(bucket, "d.png", "updateobject"), "application/json").json()["written"] == 1
    assert get_json(s3_client, bucket, "results/d.png.json")["result"]["label"] == "3"
    archived = [k for k in keys(s3_client, bucket) if k.startswith("results/d.png.") and k != "results/d.png.json"]
    assert archived == [f"results/d.png.{old_etag[:8]}-{before['Metadata']['model-sha256'][:8]}.json"]
    assert get_json(s3_client, bucket, archived[0])["result"]["label"] == "7"


def test_loops_deletes_and_non_inputs_are_skipped(events_fn, s3_client, bucket):
    for key in ("results/d.png.json", "results/d.png", "notes.txt", "x.png.mask.png"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=DIGIT)
    fn = events_fn()
    body = s3_event(bucket, ("ObjectCreated:Put", "results/d.png"), ("ObjectCreated:Put", "results/d.png.json"),
                    ("ObjectCreated:Put", "notes.txt"), ("ObjectCreated:Put", "x.png.mask.png"),
                    ("ObjectRemoved:Delete", "gone.png"))
    before = keys(s3_client, bucket)
    summary = fn.call(body, "application/json").json()
    assert summary["skipped"] == 5 and summary["written"] == 0
    reasons = [o["reason"] for o in summary["objects"]]
    assert "output prefix" in reasons[0] and "output prefix" in reasons[1] and "not an input type" in reasons[2]
    assert "result" in reasons[3] and "delete event" in reasons[4]
    assert keys(s3_client, bucket) == before
    assert fn.logs().count('"event":"event_object_skipped"') == 5


def test_a_poison_object_gets_an_error_record_and_the_invocation_succeeds(events_fn, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="bad.png", Body=DIGIT[:40])
    fn = events_fn()
    reply = fn.call(oci_event(bucket, "bad.png"), "application/json")
    assert reply.status == 200 and reply.json()["failed"] == 1
    error = get_json(s3_client, bucket, "results/bad.png.error.json")
    assert error["status"] == 400 and error["code"] == "invalid_image" and error["source"]["key"] == "bad.png"
    assert fn.call(oci_event(bucket, "bad.png"), "application/json").json()["skipped"] == 1  # not retried forever


def test_a_missing_object_is_skipped(events_fn, s3_client, bucket):
    summary = events_fn().call(oci_event(bucket, "never-uploaded.png"), "application/json").json()
    assert summary["skipped"] == 1 and "no longer exists" in summary["objects"][0]["reason"]
    assert keys(s3_client, bucket) == []


def test_objects_over_the_limit_are_refused_without_download(events_fn, s3_client, bucket):
    big = bytes(200_000)
    s3_client.put_object(Bucket=bucket, Key="big.png", Body=big)
    summary = events_fn(ONNXFN_MAX_BODY_BYTES="100000").call(oci_event(bucket, "big.png"), "application/json").json()
    assert summary["failed"] == 1
    error = get_json(s3_client, bucket, "results/big.png.error.json")
    assert error["status"] == 413 and "not downloaded" in error["error"]


def test_storage_down_fails_the_invocation_then_recovers(events_fn, s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="d.png", Body=DIGIT)
    fn = events_fn(ONNXFN_STORAGE_TIMEOUT="2")
    fn.call(b'{"inputs": []}', "application/json")  # warm the model up first (no storage involved)
    s3.stop()
    try:
        reply = fn.call(oci_event(bucket, "d.png"), "application/json")
        assert reply.status == 502  # the platform delivers the event again
        assert reply.json()["code"] == "storage_unavailable"
    finally:
        s3.start()
    assert fn.call(oci_event(bucket, "d.png"), "application/json").json()["written"] == 1


LONG = "deep/" + "/".join(["k" * 200] * 4) + "-near-the-limit.png"  # about 1,024 bytes; segments <= 255
KEYS = ["/leading.png", "dir//double.png", "ünïcødé/画像 ✓.png", "with space.png", "plus+sign.png",
        "per%25cent%2F.png", LONG]
DOTS = ["../escape.png", "a/../../b.png", "./dot.png", "results/../up.png"]  # S3 servers may refuse such keys


def test_keys_are_data_and_results_stay_under_the_prefix(events_fn, s3_client, bucket):
    fn = events_fn()
    for key in KEYS:
        s3_client.put_object(Bucket=bucket, Key=key, Body=DIGIT)
    stored = set(keys(s3_client, bucket))
    summary = fn.call(s3_event(bucket, *[("ObjectCreated:Put", k) for k in KEYS + DOTS], client=s3_client),
                      "application/json").json()
    outcomes = [o["outcome"] for o in summary["objects"]]
    assert outcomes[:len(KEYS)] == ["written"] * len(KEYS), summary
    assert all(o in ("skipped", "failed") for o in outcomes[len(KEYS):])  # this server stores no dot segments
    outputs = [out for o in summary["objects"] for out in o.get("outputs", [])]
    assert len(set(outputs)) == len(outputs)
    new = set(keys(s3_client, bucket)) - stored
    assert new == set(outputs) and all(k.startswith("results/") and len(k.encode()) <= 1024 for k in new)
    for key, o in zip(KEYS, summary["objects"]):
        assert get_json(s3_client, bucket, o["outputs"][0])["source"]["key"] == key
    assert result_name(LONG, ".json").startswith("_long/") or len(result_name(LONG, ".json")) < 1024


def test_a_batch_with_mixed_outcomes(events_fn, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="ok.png", Body=DIGIT)
    s3_client.put_object(Bucket=bucket, Key="poison.png", Body=b"\x89PNG\r\n\x1a\nbroken")
    summary = events_fn().call(s3_event(bucket, ("ObjectCreated:Put", "ok.png"), ("ObjectCreated:Put", "poison.png"),
                                        ("ObjectRemoved:Delete", "old.png"), ("ObjectCreated:Put", "ghost.png"),
                                        client=s3_client),
                               "application/json").json()
    assert [o["outcome"] for o in summary["objects"]] == ["written", "failed", "skipped", "skipped"]
    assert (summary["written"], summary["failed"], summary["skipped"]) == (1, 1, 2)


@pytest.mark.parametrize("body, words", [
    (b"not json", ["not valid JSON"]),
    (json.dumps({"eventType": "com.oraclecloud.objectstorage.createobject", "data": {}}).encode(),
     ["data.resourceName"]),
    (json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}).encode(), ["Records[0].s3"]),
    (json.dumps({"cloudEventsVersion": "0.1", "eventType": "com.example.other"}).encode(), ["com.example.other"]),
])
def test_malformed_envelopes_write_nothing(events_fn, s3_client, bucket, body, words):
    s3_client.put_object(Bucket=bucket, Key="d.png", Body=DIGIT)
    reply = events_fn().call(body, "application/json")
    assert reply.status == 200 and reply.json()["status"] == 400
    for word in words:
        assert word in reply.json()["error"]
    assert keys(s3_client, bucket) == ["d.png"]


def test_an_output_uri_without_prefix_is_refused(events_fn, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="d.png", Body=DIGIT)
    reply = events_fn(OUTPUT_URI=f"s3://{bucket}/").call(oci_event(bucket, "d.png"), "application/json")
    assert reply.json()["code"] == "configuration_error" and "OUTPUT_URI" in reply.json()["error"]
    assert keys(s3_client, bucket) == ["d.png"]


def test_results_to_another_bucket(events_fn, s3, s3_client, bucket):
    out = s3.new_bucket("results-elsewhere")
    try:
        s3_client.put_object(Bucket=bucket, Key="d.png", Body=DIGIT)
        summary = events_fn(OUTPUT_URI=f"s3://{out}/onnx/").call(oci_event(bucket, "d.png"), "application/json").json()
        assert summary["objects"][0]["outputs"] == ["onnx/d.png.json"]
        assert keys(s3_client, out) == ["onnx/d.png.json"]
    finally:
        s3.delete_bucket(out)


def test_events_for_a_bucket_not_allowed_are_refused_and_touch_nothing(events_fn, s3, s3_client, bucket):
    other = s3.new_bucket("not-allowed")
    try:
        s3_client.put_object(Bucket=other, Key="d.png", Body=DIGIT)
        fn = events_fn()
        summary = fn.call(oci_event(other, "d.png"), "application/json").json()
        assert summary["refused"] == 1 and summary["objects"][0]["outcome"] == "refused"
        assert "ONNXFN_EVENT_SOURCES" in summary["objects"][0]["reason"]
        assert keys(s3_client, other) == ["d.png"]  # nothing read into a result, nothing written
        assert "d.png" not in fn.logs()
        s3_client.put_object(Bucket=bucket, Key="d.png", Body=DIGIT)  # the allowed bucket still works
        assert fn.call(oci_event(bucket, "d.png"), "application/json").json()["written"] == 1
    finally:
        s3.delete_bucket(other)


def test_without_sources_or_output_uri_an_event_is_a_configuration_error(function, s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="d.png", Body=DIGIT)
    fn = function({**s3.env(), "MODEL_URI": str(MODELS / "digits-cnn"), "ONNXFN_BAKED_BUNDLE": ""},
                  entry=ROOT / "functions" / "events.py")
    reply = fn.call(s3_event(bucket, ("ObjectCreated:Put", "d.png")), "application/json")
    assert reply.status == 502 and reply.json()["code"] == "configuration_error"  # 502: the platform retries
    assert "ONNXFN_EVENT_SOURCES" in reply.json()["error"] and keys(s3_client, bucket) == ["d.png"]


def test_a_black_holed_storage_server_is_answered_within_the_calls_deadline(function, tmp_path):
    """Object storage that accepts connections and never answers: the event fails (502, so the platform
    delivers it again) before its Fn-Deadline, not after the 20 s storage timeout."""
    import socket
    import time
    hole = socket.create_server(("127.0.0.1", 0))  # listens, never accepts nor answers
    try:
        endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}"
        fn = function({"MODEL_URI": str(MODELS / "digits-cnn"), "ONNXFN_BAKED_BUNDLE": "",
                       "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL_S3": endpoint,
                       "ONNXFN_EVENT_SOURCES": "s3://uploads/", "ONNXFN_DEADLINE_MARGIN_MS": "500"},
                      entry=ROOT / "functions" / "events.py")
        fn.call(s3_event("uploads", ("ObjectRemoved:Delete", "warm.png")), "application/json")  # load the model
        started = time.monotonic()
        reply = fn.call(s3_event("uploads", ("ObjectCreated:Put", "a.png")), "application/json", deadline=4.0)
        elapsed = time.monotonic() - started
        assert reply.status == 502 and reply.json()["code"] == "storage_unavailable", reply.body
        assert elapsed < 4.0, elapsed
    finally:
        hole.close()


def test_a_non_event_body_is_refused_by_the_events_entry_point(events_fn):
    fn = events_fn()
    assert fn.call(DIGIT, "image/png").json()["code"] == "invalid_json"
    assert fn.call(b'{"inputs": []}', "application/json").json()["code"] == "event_expected"


@pytest.mark.parametrize("key, name", [
    ("a/b.png", "a/b.png.json"), ("../x.png", "%2E%2E/x.png.json"), ("/x.png", "%00/x.png.json"),
    ("a//b", "a/%00/b.json"), ("50%.png", "50%25.png.json"), ("./x", "%2E/x.json"),
])
def test_result_names(key, name):
    assert result_name(key, ".json") == name


def test_long_keys_become_hashes():
    name = result_name("k" * 1000, ".error.json")
    assert name.startswith("_long/") and name.endswith(".error.json") and len(name) < 100


def test_a_key_storage_refuses_is_not_retried_until_the_deadline(events_fn, s3_client, bucket):
    fn = events_fn()
    reply = fn.call(s3_event(bucket, ("ObjectCreated:Put", "../../etc/passwd")), "application/json", deadline=20)
    [outcome] = reply.json()["objects"]
    assert outcome["outcome"] == "failed" and "refused" in outcome["reason"], outcome
    assert "gave up" not in outcome["reason"]  # a 400 is an answer, not a fault to wait out
    assert outcome["outputs"][0].startswith("results/%2E%2E/%2E%2E/")
