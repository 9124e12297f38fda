"""Typed event envelopes, read from real-shaped payloads in tests/data/events/."""
from __future__ import annotations

import json

import pytest

from tests.support.images import EVENTS

from onnxfn.events import envelopes as events
from onnxfn.errors import BadRequest



def load(name: str):
    return json.loads((EVENTS / name).read_text())


def test_oci_create_event():
    [ref] = events.parse(load("oci-createobject.json"))
    assert ref == events.ObjectRef("created", "scans", "incoming/2026/11/chest-0001.dcm",
                                   "c2f1a0a4-8a0e-4a6e-9a61-0c5c7b0f1e9d", None, "examplens",
                                   "5b1d2a7e-0c44-4f57-9e0b-2a9c1f7d6e11", "oci")


def test_oci_update_and_delete():
    assert events.parse(load("oci-updateobject.json"))[0].action == "updated"
    assert events.parse(load("oci-deleteobject.json"))[0].action == "deleted"


def test_s3_records_each_on_its_own_with_keys_decoded():
    created, removed = events.parse(load("s3-put-and-delete.json"))
    assert created.action == "created" and created.key == "incoming/ward 7/scané +1.png"
    assert created.size == 1024 and created.etag == "d41d8cd98f00b204e9800998ecf8427e" and created.source == "s3"
    assert removed.action == "deleted" and removed.key == "old/scan.png" and removed.size is None


@pytest.mark.parametrize("document, words", [
    (load("oci-createbucket.json"), ["createbucket", "createobject"]),
    (load("oci-missing-bucket.json"), ["data.additionalDetails.bucketName"]),
    ({"eventType": "com.oraclecloud.objectstorage.createobject"}, ["data"]),
    ({"Records": []}, ["Records"]),
    ({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}, ["Records[0].s3.object"]),
    ({"Records": [{"eventName": "ObjectRestore:Post", "s3": {}}]}, ["ObjectRestore:Post"]),
    ({"Records": ["x"]}, ["Records[0]"]),
    ({"something": 1}, ["unknown event envelope"]),
    ([1, 2], ["JSON object"]),
])
def test_malformed_envelopes_name_the_field(document, words):
    with pytest.raises(BadRequest) as e:
        events.parse(document)
    assert e.value.status == 400
    for word in words:
        assert word in e.value.message


@pytest.mark.parametrize("odd", ["x", 1, [], None])
def test_optional_fields_of_any_shape_are_ignored(odd):
    # found by the fuzzer: a string where an object was expected raised AttributeError (a 500)
    oci = load("oci-createobject.json")
    oci["data"]["additionalDetails"] = {"bucketName": "scans", "namespace": [odd], "eTag": {"odd": odd}}
    assert (events.parse(oci)[0].namespace, events.parse(oci)[0].etag) == (None, None)
    s3 = {"Records": [{"eventName": "ObjectCreated:Put", "responseElements": odd,
                       "s3": {"bucket": {"name": "b"}, "object": {"key": "k", "eTag": [odd], "size": "7"}}}]}
    ref = events.parse(s3)[0]
    assert (ref.key, ref.etag, ref.size, ref.event_id) == ("k", None, None, None)
    s3["Records"][0]["s3"]["object"] = odd
    with pytest.raises(BadRequest, match="s3.object"):
        events.parse(s3)


def test_is_event():
    assert events.is_event(load("oci-createobject.json")) and events.is_event(load("s3-put-and-delete.json"))
    assert not events.is_event({"inputs": []}) and not events.is_event("x")


def test_null_detail_objects_are_named_not_crashed_on():
    """`null` where an object is expected is an absent field, never an AttributeError."""
    oci = {"eventType": "com.oraclecloud.objectstorage.createobject", "eventID": "e",
           "data": {"resourceName": "a.png", "additionalDetails": None}}
    with pytest.raises(BadRequest, match="additionalDetails"):
        [ref.namespace for ref in events.parse(oci)]
    s3 = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": None}}]}
    with pytest.raises(BadRequest, match="object"):
        events.parse(s3)
