"""DICOM results under the real fdk: `Accept: application/dicom` answers a DICOM SEG (segmentation) or SR
(classification) that highdicom reads back and that matches the JSON answer, on the gateway route and by
direct invocation; a non-DICOM input is a 406; an event with ONNXFN_RESULT_FORMATS=json,dicom writes the
DICOM object beside the JSON on SeaweedFS; the function's log carries none of the files' patient or study values."""
from __future__ import annotations

import base64
import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from onnxfn.codecs.dicom_result import PATIENT, STUDY
from tests.e2e.test_processor import oci_event
from tests.support.calls import assert_error, gateway
from tests.support.images import pydicom_file
from tests.support.models import DIGIT, MODELS, ROOT

PHANTOM = (ROOT / "samples" / "phantom.dcm").read_bytes()
CT = pydicom_file("CT_small.dcm").read_bytes()
DICOM = "application/dicom"


def mask(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["result"]["mask"]["data"]))))


def assert_seg_is_the_mask(data: bytes, source: bytes, expected: np.ndarray) -> None:
    """The SEG references `source` and its segments, combined into a label map, are the JSON answer's mask."""
    ds = pydicom.dcmread(io.BytesIO(source))
    seg = hd.seg.segread(io.BytesIO(data))
    assert seg.StudyInstanceUID == ds.StudyInstanceUID and seg.PatientID == ds.PatientID
    labels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], combine_segments=True)
    assert np.array_equal(labels[0], expected)


def private_values(*files: bytes) -> set[str]:
    """Every patient and study value of the files (and the instance UIDs), long enough to be told apart."""
    values = set()
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        for keyword in PATIENT + STUDY + ("SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            value = str(ds.get(keyword) or "")
            if len(value) >= 4:
                values.add(value)
    return values


@pytest.fixture
def events_unet(function, s3, bucket):
    """The events entry point serving the lesion U-Net, writing JSON and DICOM results, the test's bucket allowed."""
    return function({**s3.env(), "MODEL_URI": str(MODELS / "lesion-unet"), "ONNXFN_OCI_ENDPOINT": s3.endpoint,
                     "ONNXFN_OCI_REGION": "us-phoenix-1", "ONNXFN_BAKED_BUNDLE": "",
                     "ONNXFN_EVENT_SOURCES": f"oci://{bucket}@testns/", "ONNXFN_RESULT_FORMATS": "json,dicom"},
                    entry=ROOT / "functions" / "events.py")


@pytest.fixture
def unet(function):
    return function({"MODEL_URI": str(MODELS / "lesion-unet")})


def test_a_seg_on_the_gateway_route_and_by_direct_invocation_is_the_json_mask(unet):
    expected = mask(gateway(unet, "POST", "/predict", PHANTOM, DICOM).json())
    assert expected.any()  # the phantom's lesion: an empty mask would prove little
    routed = gateway(unet, "POST", "/predict", PHANTOM, DICOM, Accept="application/json;q=0.5, application/dicom")
    assert routed.http_status == 200 and routed.http_headers["content-type"] == DICOM
    assert_seg_is_the_mask(routed.body, PHANTOM, expected)
    direct = unet.call(PHANTOM, DICOM, headers={"Accept": DICOM})
    assert direct.status == 200 and direct.headers["content-type"] == DICOM
    assert_seg_is_the_mask(direct.body, PHANTOM, expected)
    assert gateway(unet, "POST", "/predict", PHANTOM, DICOM, Accept="*/*").json()["task"] == "segmentation"
    refused = gateway(unet, "POST", "/predict", DIGIT, "image/png", Accept=DICOM)
    assert_error(refused, 406, "not_acceptable", "DICOM input", "png", "application/json")
    body = unet.call(DIGIT, "image/png", headers={"Accept": DICOM}).json()  # a direct invocation: 200, body 406
    assert (body["status"], body["code"]) == (406, "not_acceptable")
    assert [v for v in private_values(PHANTOM, routed.body) if v in unet.logs()] == []


def test_an_sr_names_the_label_and_its_probability(function):
    fn = function({"MODEL_URI": str(MODELS / "digits-cnn")})
    answer = gateway(fn, "POST", "/predict", CT, DICOM).json()
    reply = gateway(fn, "POST", "/predict", CT, DICOM, Accept=DICOM)
    assert reply.http_status == 200 and reply.http_headers["content-type"] == DICOM
    sr = hd.sr.srread(io.BytesIO(reply.body))
    assert sr.StudyInstanceUID == pydicom.dcmread(io.BytesIO(CT)).StudyInstanceUID
    best = sr.content.get_image_measurement_groups()[0]
    assert best.finding_type.meaning == answer["result"]["label"]
    assert best.get_measurements()[0].value == pytest.approx(answer["result"]["probability"])
    leaked = [v for v in private_values(CT, reply.body) if v in fn.logs()]
    assert leaked == []


def test_an_event_writes_the_seg_beside_the_json(events_unet, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="incoming/phantom.dcm", Body=PHANTOM)
    s3_client.put_object(Bucket=bucket, Key="incoming/d7.png", Body=DIGIT)
    fn = events_unet
    for key in ("incoming/phantom.dcm", "incoming/d7.png"):
        assert fn.call(oci_event(bucket, key), "application/json").json()["written"] == 1
    document = json.loads(s3_client.get_object(Bucket=bucket, Key="results/incoming/phantom.dcm.json")["Body"].read())
    assert document["dicom"] == {"key": "results/incoming/phantom.dcm.seg.dcm", "media_type": DICOM}
    seg = s3_client.get_object(Bucket=bucket, Key=document["dicom"]["key"])
    png = s3_client.get_object(Bucket=bucket, Key=document["result"]["mask"]["key"])["Body"].read()
    assert_seg_is_the_mask(seg["Body"].read(), PHANTOM, np.asarray(Image.open(io.BytesIO(png))))
    assert seg["ContentType"] == DICOM and seg["Metadata"]["model-sha256"] == document["model"]["sha256"]
    other = json.loads(s3_client.get_object(Bucket=bucket, Key="results/incoming/d7.png.json")["Body"].read())
    assert other["dicom"] == {"skipped": "the input is not DICOM"}  # a PNG gets its JSON, and why no DICOM
    again = fn.call(oci_event(bucket, "incoming/phantom.dcm"), "application/json").json()
    assert (again["written"], again["skipped"]) == (0, 1)  # a replay writes neither the JSON nor the SEG
    assert [v for v in private_values(PHANTOM) if v in fn.logs()] == []
