"""events/processor.py in-process: crafted envelopes are refused per object before anything is built from
their names. A loopback listener stands in for object storage and records every connection: a refused
object makes none; an allowed one (the control) does."""
from __future__ import annotations

import copy
import json
import logging
import socket
import threading

import pytest

from onnxfn.events.processor import Processor
from onnxfn.service import Service
from onnxfn.settings import Settings
from tests.support.images import EVENTS
from tests.support.models import MODELS

OCI = json.loads((EVENTS / "oci-createobject.json").read_text())
S3 = json.loads((EVENTS / "s3-put-and-delete.json").read_text())


class Listener:
    """127.0.0.1: counts connections and answers every request 404 (the object is gone)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    while conn.recv(65536):
                        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass


@pytest.fixture(scope="module")
def listener():
    server = Listener()
    yield server
    server.sock.close()


@pytest.fixture
def processor(listener, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                       "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{listener.port}"}.items():
        monkeypatch.setenv(key, value)
    settings = Settings(model_uri=str(MODELS / "digits-cnn"), baked_bundle="", threads=1,
                        oci_endpoint=f"http://127.0.0.1:{listener.port}", oci_region="us-phoenix-1",
                        event_sources="oci://scans@tenancy/incoming/,s3://uploads/")
    return Processor(Service(settings), settings)


def oci(namespace="tenancy", bucket="scans", key="incoming/a.dcm") -> dict:
    event = copy.deepcopy(OCI)
    event["data"]["resourceName"] = key
    event["data"]["additionalDetails"].update(bucketName=bucket, namespace=namespace)
    return event


def s3(*pairs: tuple[str, str]) -> dict:
    records = []
    for bucket, key in pairs:
        record = copy.deepcopy(S3["Records"][0])
        record["s3"]["bucket"]["name"], record["s3"]["object"]["key"] = bucket, key
        records.append(record)
    return {"Records": records}


CRAFTED_OCI = [
    ("127.0.0.1:{port}/x?", "scans", "incoming/a.dcm", "namespace"),
    ("127.0.0.1:{port}/x#", "scans", "incoming/a.dcm", "namespace"),
    ("a@127.0.0.1:{port}/#", "scans", "incoming/a.dcm", "namespace"),
    ("tenancy:{port}", "scans", "incoming/a.dcm", "namespace"),
    ("127.0.0.1", "scans", "incoming/a.dcm", "namespace"),
    ("", "scans", "incoming/a.dcm", "namespace"),
    ("  ", "scans", "incoming/a.dcm", "namespace"),
    ("ténancy", "scans", "incoming/a.dcm", "namespace"),
    ("tenancy", "", "incoming/a.dcm", "bucket name is empty"),
    ("tenancy", "sc ans", "incoming/a.dcm", "bucket name"),
    ("tenancy", "../scans", "incoming/a.dcm", "bucket name"),
    ("tenancy", "s" * 300, "incoming/a.dcm", "bucket name"),
    ("tenancy", "scans", "incoming/a\nb.dcm", "control characters"),
    ("tenancy", "scans", "incoming/" + "k" * 1100, "over the limit"),
    ("tenancy", "scans", "", "object name is empty"),
    ("tenancy", "scans", "elsewhere/a.dcm", "not among the event sources"),
    ("tenancy", "scans2", "incoming/a.dcm", "not among the event sources"),
    ("other", "scans", "incoming/a.dcm", "not among the event sources"),
]


@pytest.mark.parametrize("namespace, bucket, key, words", CRAFTED_OCI)
def test_crafted_oci_envelopes_are_refused_without_a_connection(processor, listener, caplog, namespace, bucket,
                                                                 key, words):
    before = listener.connections
    caplog.set_level(logging.INFO, logger="onnxfn")
    logging.getLogger("onnxfn").propagate = True
    try:
        answer = processor.handle(oci(namespace.format(port=listener.port), bucket, key), None)
    finally:
        logging.getLogger("onnxfn").propagate = False
    [outcome] = answer["objects"]
    assert outcome["outcome"] == "refused" and words in outcome["reason"] and answer["refused"] == 1
    assert listener.connections == before
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert '"event_object_refused"' in logged and (not key or key not in logged)
    if words != "not among the event sources":  # a name that failed validation is never repeated
        bad = {"namespace": namespace.format(port=listener.port), "bucket": bucket}.get(words.split()[0], key)
        assert len(bad.strip()) < 3 or bad not in json.dumps(answer)


def test_s3_records_are_judged_one_by_one(processor, listener):
    before = listener.connections
    answer = processor.handle(s3(("127.0.0.1", "a.png"), ("evil-bucket", "a.png"), ("UPPER", "a.png"),
                                 ("uploads", "a\x00.png")), None)
    assert [o["outcome"] for o in answer["objects"]] == ["refused"] * 4 and listener.connections == before
    reasons = [o["reason"] for o in answer["objects"]]
    assert "not a valid S3 bucket name" in reasons[0] and "not among the event sources" in reasons[1]
    assert "'s3://evil-bucket'" in reasons[1] and "control characters" in reasons[3]


def test_an_allowed_object_is_fetched_the_control(processor, listener):
    """The same listener sees the function's requests for an allow-listed object (here it answers 404)."""
    before = listener.connections
    answer = processor.handle(s3(("uploads", "scan.png")), None)
    assert answer["objects"][0] == {"bucket": "uploads", "key": "scan.png", "outcome": "skipped",
                                    "reason": "the object no longer exists"}
    assert listener.connections > before
    before = listener.connections
    answer = processor.handle(oci(key="incoming/a.dcm"), None)
    assert answer["objects"][0]["outcome"] == "skipped" and listener.connections > before


def test_dicom_results_are_not_taken_for_inputs(processor, listener):
    """A `.seg.dcm` / `.sr.dcm` (and an archived one) ends in .dcm, an input type: it is skipped as a result
    without a request, so writing DICOM results beside their inputs cannot trigger the function again."""
    before = listener.connections
    answer = processor.handle(s3(("uploads", "a.seg.dcm"), ("uploads", "a.sr.dcm"),
                                 ("uploads", "a.e1-bbbbbbbb.seg.dcm")), None)
    assert [o["outcome"] for o in answer["objects"]] == ["skipped"] * 3 and listener.connections == before
    assert all(".seg.dcm" in o["reason"] for o in answer["objects"])


def test_no_sources_configured_is_a_configuration_error_naming_the_variable(listener):
    settings = Settings(model_uri=str(MODELS / "digits-cnn"), baked_bundle="", threads=1)
    from onnxfn.errors import ConfigError
    with pytest.raises(ConfigError, match="ONNXFN_EVENT_SOURCES"):
        Processor(Service(settings), settings).handle(s3(("uploads", "a.png")), None)
