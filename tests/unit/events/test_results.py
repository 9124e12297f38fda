"""events/results.py against a real S3 server (SeaweedFS): a DICOM result (SEG or SR) is written beside the
JSON under the JSON's rules: DICOM first and the JSON naming it, a replay writes nothing, a new object version
archives the previous DICOM object before replacing it."""
from __future__ import annotations

import json
import time

import pytest

from onnxfn.codecs.dicom_result import Encoded
from onnxfn.events.envelopes import ObjectRef
from onnxfn.events.results import RESULT_SUFFIXES, Results
from onnxfn.storage.s3 import S3Store

ANSWER = {"task": "segmentation", "result": {"classes": []}, "model": {"name": "m", "version": "1", "sha256": "s"}}
SHA = "b" * 64


@pytest.fixture
def output(s3, bucket, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return S3Store(f"s3://{bucket}/results/", bucket, "results/", endpoint=s3.endpoint, region="us-east-1")


def keys(s3_client, bucket) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_a_dicom_result_is_written_beside_the_json_then_replayed_and_archived(output, s3_client, bucket):
    ref = ObjectRef(action="created", bucket=bucket, key="in/ct 1.dcm")
    results = Results(output, time.monotonic() + 30)
    seg = Encoded(b"DICM-first", ".seg.dcm")
    written = results.answer(ref, ANSWER, {"source-etag": "e1", "model-sha256": SHA}, seg)
    assert written == ("results/in/ct 1.dcm.seg.dcm", "results/in/ct 1.dcm.json")  # the JSON last
    document = json.loads(s3_client.get_object(Bucket=bucket, Key="results/in/ct 1.dcm.json")["Body"].read())
    assert document["dicom"] == {"key": "results/in/ct 1.dcm.seg.dcm", "media_type": "application/dicom"}
    stored = s3_client.get_object(Bucket=bucket, Key="results/in/ct 1.dcm.seg.dcm")
    assert stored["Body"].read() == b"DICM-first" and stored["ContentType"] == "application/dicom"
    assert stored["Metadata"] == {"source-etag": "e1", "model-sha256": SHA}

    again = Encoded(b"DICM-replay", ".seg.dcm")  # new UIDs each time: the tag, not the bytes, decides
    assert results.answer(ref, ANSWER, {"source-etag": "e1", "model-sha256": SHA}, again) == ()
    assert s3_client.get_object(Bucket=bucket, Key="results/in/ct 1.dcm.seg.dcm")["Body"].read() == b"DICM-first"

    newer = Encoded(b"DICM-second", ".seg.dcm")
    assert len(results.answer(ref, ANSWER, {"source-etag": "e2", "model-sha256": SHA}, newer)) == 2
    archive = f"results/in/ct 1.dcm.e1-{SHA[:8]}.seg.dcm"
    assert archive in keys(s3_client, bucket) and archive.endswith(RESULT_SUFFIXES)  # loop-safe
    assert s3_client.get_object(Bucket=bucket, Key=archive)["Body"].read() == b"DICM-first"
    assert s3_client.get_object(Bucket=bucket, Key="results/in/ct 1.dcm.seg.dcm")["Body"].read() == b"DICM-second"


def test_a_skipped_dicom_result_is_explained_in_the_json(output, s3_client, bucket):
    ref = ObjectRef(action="created", bucket=bucket, key="in/d.png")
    written = Results(output, time.monotonic() + 30).answer(
        ref, ANSWER, {"source-etag": "e1", "model-sha256": SHA}, None, "the input is not DICOM")
    assert written == ("results/in/d.png.json",)
    document = json.loads(s3_client.get_object(Bucket=bucket, Key="results/in/d.png.json")["Body"].read())
    assert document["dicom"] == {"skipped": "the input is not DICOM"}


def test_dicom_result_names_are_results_not_inputs():
    assert "a.seg.dcm".endswith(RESULT_SUFFIXES) and "a.sr.dcm".endswith(RESULT_SUFFIXES)
    assert not "a.dcm".endswith(RESULT_SUFFIXES)
