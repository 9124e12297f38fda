"""oci:// with the function's resource principal, through the real fdk, against a loopback server speaking the
native Object Storage API and verifying every request's signature (tests/support/ociserver.py): a cold start,
events read and written conditionally, a token rotated under a running function, a wrong key, the server
down then back."""
from __future__ import annotations

import copy
import json
import time

import pytest

from tests.support.calls import assert_error, predict, remote_env
from tests.support.images import EVENTS
from tests.support.models import DIGIT, MODELS, ROOT
from tests.support.ociserver import OciServer, make_token, new_key, principal_env, write_token

NS = "testns"


@pytest.fixture(scope="module")
def key():
    return new_key()


@pytest.fixture
def oci(key):
    """The native API on loopback, digits-cnn under oci://models@testns/digits/."""
    server = OciServer(key.public_key()).start()
    server.objects.load(NS, "models", MODELS / "digits-cnn", prefix="digits/")
    yield server
    server.stop()


def rp_env(server, tmp_path, key, **extra) -> dict[str, str]:
    """A function with a resource principal (files, as the runtime provides them) and no key pair."""
    token = make_token(time.time() + 900)
    return {**principal_env(tmp_path / "rp", key, token), "ONNXFN_OCI_ENDPOINT": server.url,
            "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", **extra}


def test_cold_start_from_oci_with_a_resource_principal(function, oci, tmp_path, key):
    env = {**remote_env(f"oci://models@{NS}/digits/", tmp_path), **rp_env(oci, tmp_path, key)}
    fn = function(env)
    answer = predict(fn).json()
    assert answer["result"]["label"] == "7" and answer["runtime"]["source"] == "remote" and answer["cold"]
    assert oci.rejected == [] and oci.requests and all(r.endswith(" 200") for r in oci.requests)
    token = (tmp_path / "rp" / "rpst").read_text()
    logs = fn.logs()
    assert token not in logs and token.split(".")[1] not in logs and "Signature" not in logs


def test_a_wrong_key_is_storage_auth_failed_naming_resource_principal_authentication(function, oci, tmp_path):
    env = {**remote_env(f"oci://models@{NS}/digits/", tmp_path), **rp_env(oci, tmp_path, new_key())}
    fn = function(env)
    reply = predict(fn)
    body = assert_error(reply, 500, "storage_auth_failed", "resource principal authentication", "dynamic group")
    token = (tmp_path / "rp" / "rpst").read_text()
    assert token not in body["error"] and token not in fn.logs()


def test_server_down_at_cold_start_then_back(function, oci, tmp_path, key):
    port, objects = oci.server_address[1], oci.objects
    oci.stop()
    env = {**remote_env(f"oci://models@{NS}/digits/", tmp_path, ONNXFN_DEADLINE_MARGIN_MS="200"),
           **rp_env(oci, tmp_path, key)}
    fn = function(env)
    reply = predict(fn, deadline=5.0)
    assert reply.http_status == 503 and reply.json()["code"] == "storage_unavailable"
    back = OciServer(key.public_key(), port=port, objects=objects).start()
    try:
        assert predict(fn).json()["result"]["label"] == "7"  # no restart needed
        assert back.rejected == []
    finally:
        back.stop()


# -- events ---------------------------------------------------------------------------------------------

def oci_event(bucket: str, key: str, kind: str = "createobject", etag: str = "") -> bytes:
    event = json.loads((EVENTS / "oci-createobject.json").read_text())
    event = copy.deepcopy(event)
    event["eventType"] = "com.oraclecloud.objectstorage." + kind
    event["data"]["resourceName"] = key
    event["data"]["resourceId"] = f"/n/{NS}/b/{bucket}/o/{key}"
    event["data"]["additionalDetails"].update(bucketName=bucket, namespace=NS, eTag=etag)
    return json.dumps(event).encode()


@pytest.fixture
def events_fn(function, oci, tmp_path, key):
    def start(**extra):
        env = {**rp_env(oci, tmp_path, key), "MODEL_URI": str(MODELS / "digits-cnn"), "ONNXFN_BAKED_BUNDLE": "",
               "ONNXFN_EVENT_SOURCES": f"oci://inbox@{NS}/", **extra}
        return function(env, entry=ROOT / "functions" / "events.py")
    return start


def test_events_read_and_write_conditionally_with_a_resource_principal(events_fn, oci, tmp_path):
    from tests.support.images import png
    import numpy as np
    etag = oci.objects.put(NS, "inbox", "in/d.png", DIGIT, "image/png")
    fn = events_fn()
    reply = fn.call(oci_event("inbox", "in/d.png", etag=etag), "application/json")
    assert reply.status == 200, reply.body
    summary = reply.json()
    assert summary["written"] == 1, summary
    result = oci.objects.get(NS, "inbox", "results/in/d.png.json")
    document = json.loads(result["data"])
    assert document["result"]["label"] == "7" and document["source"]["etag"] == etag
    assert result["metadata"]["source-etag"] == etag and result["type"] == "application/json"
    puts = [r for r in oci.requests if r.startswith("PUT")]
    assert puts == [f"PUT /n/{NS}/b/inbox/o/results%2Fin%2Fd.png.json 200"]
    # a replay writes nothing: the conditional PUT is refused, the HEAD finds the same version and model
    replay = fn.call(oci_event("inbox", "in/d.png", etag=etag), "application/json").json()
    assert replay["skipped"] == 1 and "already processed" in replay["objects"][0]["reason"]
    assert oci.objects.get(NS, "inbox", "results/in/d.png.json")["etag"] == result["etag"]
    # a new version: the old result is copied aside (GET + PUT), then replaced with If-Match
    held = np.load(MODELS / "data" / "digits-heldout.npz")
    new = oci.objects.put(NS, "inbox", "in/d.png", png(held["images"][int(np.flatnonzero(held["labels"] == 3)[0])]))
    update = fn.call(oci_event("inbox", "in/d.png", "updateobject", etag=new), "application/json").json()
    assert update["written"] == 1, update
    assert json.loads(oci.objects.get(NS, "inbox", "results/in/d.png.json")["data"])["result"]["label"] == "3"
    archived = [n for n in oci.objects.names(NS, "inbox") if n.startswith("results/in/d.png.")
                and n != "results/in/d.png.json"]
    assert archived == [f"results/in/d.png.{etag[:8]}-{document['model']['sha256'][:8]}.json"]
    assert json.loads(oci.objects.get(NS, "inbox", archived[0])["data"])["result"]["label"] == "7"
    assert oci.rejected == []


def test_a_token_rotated_under_a_running_function_is_picked_up(events_fn, oci, tmp_path):
    etag = oci.objects.put(NS, "inbox", "a.png", DIGIT, "image/png")
    fn = events_fn()
    assert fn.call(oci_event("inbox", "a.png", etag=etag), "application/json").json()["written"] == 1
    old = (tmp_path / "rp" / "rpst").read_text()
    write_token(tmp_path / "rp" / "rpst", make_token(time.time() + 1800))
    oci.revoked.add(old)  # the old token is refused from now on
    etag = oci.objects.put(NS, "inbox", "b.png", DIGIT, "image/png")
    assert fn.call(oci_event("inbox", "b.png", etag=etag), "application/json").json()["written"] == 1
    assert oci.rejected == []


def test_an_expired_token_fails_the_event_invocation_for_a_retry(events_fn, oci, tmp_path):
    """The server judges the token expired and the runtime has not rotated it: the invocation fails (502, so the
    platform delivers the event again) with storage_auth_failed, and nothing is written."""
    etag = oci.objects.put(NS, "inbox", "c.png", DIGIT, "image/png")
    fn = events_fn()
    oci.clock_offset = 3600
    reply = fn.call(oci_event("inbox", "c.png", etag=etag), "application/json")
    assert reply.status == 502, reply.body
    body = reply.json()
    assert body["code"] == "storage_auth_failed" and "resource principal authentication" in body["error"]
    assert not any(r.startswith("PUT") for r in oci.requests)
    assert set(oci.rejected) == {"token expired"}
