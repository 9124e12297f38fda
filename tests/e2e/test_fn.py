"""The function under the real fdk, spoken to as the Fn agent does: direct invocations
and API Gateway calls, every route and every bad input. After each bad input the
process is still up and the next call succeeds."""
from __future__ import annotations

import base64
import json
import shutil
import struct
import zlib

import numpy as np
import pytest

from tests.support.calls import assert_error, gateway
from tests.support.models import DIGIT, MODELS

from tests.support.images import encode, oip, png, pydicom_file



@pytest.fixture
def digits(function):
    return function({"MODEL_URI": str(MODELS / "digits-cnn")})


def huge_png_header(width=10_000, height=5_000) -> bytes:
    """A PNG whose header declares width x height pixels, with a tiny IDAT: decoding it would fail,
    so a 413 proves the size was refused before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))


# -- direct invocation -----------------------------------------------------------------------

def test_direct_invocation_classifies_and_reports_everything(digits):
    first = digits.call(DIGIT, "image/png")
    second = digits.call(DIGIT, "image/png")
    assert first.status == 200 and second.status == 200
    a, b = first.json(), second.json()
    assert a["result"]["label"] == "7" and a["result"]["top"][0]["probability"] > 0.9
    assert a["cold"] is True and b["cold"] is False
    assert a["model"]["name"] == "digits-cnn" and len(a["model"]["sha256"]) == 64
    from onnxfn.runtime import cpu
    assert a["runtime"] == {"arch": "x86_64", "cpu_features": cpu.describe()["features"],
                            "provider": "CPUExecutionProvider", "artifact": "model.onnx", "artifact_kind": "portable",
                            "threads": 1, "tuned": False, "source": "local"}
    steps = {"load", "decode", "preprocess", "inference", "postprocess", "total"}
    assert set(a["timings_ms"]) == steps | {"load_fetch", "load_engine_import", "load_session", "load_warmup",
                                           "load_memory"}
    assert set(b["timings_ms"]) == steps  # the load's phases are told on the cold call only
    assert a["timings_ms"]["load"] > 0 and b["timings_ms"]["load"] == 0


def test_direct_invocation_carries_errors_in_a_200_body(digits):
    reply = digits.call(b"not an image at all", "text/plain")
    assert reply.status == 200  # Fn would turn anything else into 200 anyway
    assert reply.json()["code"] == "unsupported_content_type" and reply.json()["status"] == 415
    assert digits.call(DIGIT, "image/png").json()["result"]["label"] == "7"


def test_direct_invocation_of_oip_json(function, bundles):
    fn = function({"MODEL_URI": str(bundles["adder"])})
    body = oip(("a", "FP32", [1, 3], [1, 2, 3]), ("b", "FP32", [1, 3], [10, 20, 30]),
               ("count", "INT32", [2], [4, 5]), id="r1")
    answer = fn.call(body, "application/json").json()
    assert answer["id"] == "r1" and answer["model_name"] == "adder"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["sum"] == {"name": "sum", "datatype": "FP32", "shape": [1, 3], "data": [11.0, 22.0, 33.0]}
    assert outputs["count_out"]["datatype"] == "INT64" and outputs["count_out"]["data"] == [4, 5]


@pytest.mark.parametrize("body, ctype", [
    (lambda: DIGIT, None), (lambda: DIGIT, "application/octet-stream"),
    (lambda: json.dumps({"image": base64.b64encode(DIGIT).decode()}).encode(), "application/json"),
    (lambda: b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
             b"Content-Type: image/png\r\n\r\n" + DIGIT + b"\r\n--XyZ--\r\n", "multipart/form-data; boundary=XyZ"),
])
def test_every_way_to_send_an_image(digits, body, ctype):
    reply = gateway(digits, "POST", "/predict", body(), ctype)
    assert reply.http_status == 200, reply.body
    assert reply.json()["result"]["label"] == "7"


def test_other_image_formats_give_the_same_answer(digits):
    pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(MODELS.parent / "samples" / "digit-7.png"))
    for fmt, ctype in (("TIFF", "image/tiff"), ("BMP", "image/bmp")):
        answer = gateway(digits, "POST", "/predict", encode(pixels, fmt), ctype).json()
        assert answer["result"]["label"] == "7" and answer["image"]["format"] == fmt.lower()
    rgba = np.dstack([pixels, pixels, pixels, np.full_like(pixels, 255)])
    assert gateway(digits, "POST", "/predict", png(rgba), "image/png").json()["result"]["label"] == "7"


# -- gateway routes ----------------------------------------------------------------------------

def test_gateway_routes(digits):
    assert gateway(digits, "GET", "/v2/health/live").json() == {"live": True}
    ready = gateway(digits, "GET", "/v2/health/ready")
    assert ready.http_status == 200 and ready.json()["ready"] is True
    assert gateway(digits, "GET", "/v2/models/digits-cnn/ready").http_status == 200
    meta = gateway(digits, "GET", "/v2/models/digits-cnn").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["versions"] == ["1.0.0"] and meta["platform"] == "onnxruntime_onnx"
    assert gateway(digits, "GET", "/v2/models/digits-cnn/versions/1.0.0").http_status == 200
    assert gateway(digits, "GET", "/v2").json()["name"] == "onnxfn"


def test_gateway_infer_returns_oip_outputs(digits):
    pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(MODELS.parent / "samples" / "digit-7.png"))
    data = (pixels.astype(np.float32) / 255).reshape(-1).tolist()
    reply = gateway(digits, "POST", "/v2/models/digits-cnn/infer",
                    oip(("image", "FP32", [1, 1, 8, 8], data)), "application/json")
    assert reply.http_status == 200
    answer = reply.json()
    logits = answer["outputs"][0]
    assert logits["name"] == "logits" and logits["shape"] == [1, 10] and int(np.argmax(logits["data"])) == 7
    assert answer["parameters"]["provider"] == "CPUExecutionProvider"
    assert gateway(digits, "POST", "/v2/models/digits-cnn/versions/1.0.0/infer",
                   oip(("image", "FP32", [1, 1, 8, 8], data)), "application/json").http_status == 200


def test_base_path_is_removed_before_routing(function):
    fn = function({"MODEL_URI": str(MODELS / "digits-cnn"), "ONNXFN_BASE_PATH": "/imaging"})
    assert gateway(fn, "POST", "/imaging/predict?trace=1", DIGIT, "image/png").json()["result"]["label"] == "7"
    assert gateway(fn, "GET", "/imaging/v2/health/live").http_status == 200


@pytest.mark.parametrize("method, url, status, code", [
    ("GET", "/nowhere", 404, "route_not_found"),
    ("GET", "/predict", 405, "method_not_allowed"),
    ("DELETE", "/v2/models/digits-cnn/infer", 405, "method_not_allowed"),
    ("GET", "/v2/models/other", 404, "model_not_found"),
    ("POST", "/v2/models/other/infer", 404, "model_not_found"),
    ("GET", "/v2/models/digits-cnn/versions/9/ready", 404, "version_not_found"),
])
def test_gateway_statuses(digits, method, url, status, code):
    reply = gateway(digits, method, url, b"{}", "application/json")
    assert reply.status == 200  # the fdk's answer to the agent ...
    assert_error(reply, status, code)  # ... and the real status in Fn-Http-Status
    if status == 405:
        assert reply.http_headers["allow"] in ("POST", "GET")


# -- bad input: right status, clear message, process stays up -----------------------------------

def _truncated(fmt):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    data = encode(pixels, fmt)
    return data[: len(data) // 2]


BAD = [
    ("empty body", lambda: b"", "image/png", 400, "empty_body", ["empty"]),
    ("unknown bytes", lambda: b"\x01\x02garbage" * 10, None, 415, "unrecognised_body", ["recognisable"]),
    ("unknown type", lambda: b"hello", "text/plain", 415, "unsupported_content_type", ["text/plain"]),
    ("truncated png", lambda: _truncated("PNG"), "image/png", 400, "invalid_image", ["PNG"]),
    ("truncated jpeg", lambda: _truncated("JPEG"), "image/jpeg", 400, "invalid_image", ["JPEG"]),
    ("truncated tiff", lambda: _truncated("TIFF"), "image/tiff", 400, "invalid_image", ["TIFF"]),
    ("corrupt png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", 400, "invalid_image", ["PNG"]),
    ("pixel bomb", huge_png_header, "image/png", 413, "too_many_pixels", ["10000x5000", "ONNXFN_MAX_PIXELS"]),
    ("pillow bomb", lambda: huge_png_header(100_000, 100_000), "image/png", 413, "too_many_pixels",
     ["ONNXFN_MAX_PIXELS"]),
    ("malformed json", lambda: b'{"image": ', "application/json", 400, "invalid_json", ["JSON"]),
    ("bad base64", lambda: b'{"image": "***"}', "application/json", 400, "invalid_base64", ["base64"]),
    ("dicom without pixels", lambda: pydicom_file("rtplan.dcm").read_bytes(), "application/dicom", 415,
     "dicom_no_pixels", ["no pixel data"]),
    ("dicom undecodable", lambda: pydicom_file("JPEG-lossy.dcm").read_bytes(), "application/dicom",
     415, "dicom_unsupported_syntax", ["JPEG Extended", "pylibjpeg", "gdcm"]),
    ("dicom truncated", lambda: pydicom_file("MR_truncated.dcm").read_bytes(), "application/dicom", 400,
     "invalid_dicom", []),
    ("dicom multi-frame", lambda: pydicom_file("examples_ybr_color.dcm").read_bytes(), "application/dicom", 400,
     "multi_frame", ["30 frames"]),
    ("oip to predict", lambda: b'{"inputs": []}', "application/json", 400, "image_expected", ["/infer"]),
]


@pytest.mark.parametrize("name, body, ctype, status, code, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_on_predict(digits, name, body, ctype, status, code, words):
    assert_error(gateway(digits, "POST", "/predict", body(), ctype), status, code, *words)
    assert digits.alive
    assert gateway(digits, "POST", "/predict", DIGIT, "image/png").json()["result"]["label"] == "7"


def test_body_over_the_byte_limit(function):
    fn = function({"MODEL_URI": str(MODELS / "digits-cnn"), "ONNXFN_MAX_BODY_BYTES": "1000"})
    big = encode(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8), "PNG")
    assert len(big) > 1000
    assert_error(gateway(fn, "POST", "/predict", big, "image/png"), 413, "body_too_large", "ONNXFN_MAX_BODY_BYTES")
    assert gateway(fn, "POST", "/predict", DIGIT, "image/png").http_status == 200


def test_channels_that_cannot_be_converted(function, tmp_path):
    from tests.support.models import linear_classifier
    from onnxfn.tools.package import Options, build
    bundle = build(linear_classifier(tmp_path / "rgb.onnx", shape=("N", 3, 8, 8)), tmp_path / "rgb",
                   Options(name="rgb", task="classification")).root
    fn = function({"MODEL_URI": str(bundle)})
    sixteen = png(np.full((8, 8), 40000, dtype=np.uint16))
    assert_error(gateway(fn, "POST", "/predict", sixteen, "image/png"), 400, "channels_mismatch", "16-bit")
    assert gateway(fn, "POST", "/predict", DIGIT, "image/png").http_status == 200  # 8-bit grey is replicated


OIP_BAD = [
    ("unknown input", [("pixels", "FP32", [1, 1, 8, 8], [0.0] * 64)], "unknown_input", ["'pixels'", "'image'"]),
    ("wrong datatype", [("image", "INT64", [1, 1, 8, 8], [0] * 64)], "wrong_datatype", ["INT64", "FP32"]),
    ("length mismatch", [("image", "FP32", [1, 1, 8, 8], [0.0] * 63)], "shape_mismatch", ["63", "64"]),
    ("wrong shape", [("image", "FP32", [1, 1, 4, 16], [0.0] * 64)], "wrong_shape", ["dimension 2"]),
    ("missing input", [], "invalid_request", ["inputs"]),
]


@pytest.mark.parametrize("name, inputs, code, words", OIP_BAD, ids=[b[0] for b in OIP_BAD])
def test_bad_oip_requests(digits, name, inputs, code, words):
    reply = gateway(digits, "POST", "/v2/models/digits-cnn/infer", oip(*inputs), "application/json")
    assert_error(reply, 400, code, *words)


def test_missing_one_of_several_inputs(function, bundles):
    fn = function({"MODEL_URI": str(bundles["adder"])})
    reply = gateway(fn, "POST", "/v2/models/adder/infer", oip(("a", "FP32", [1, 3], [1, 2, 3])), "application/json")
    assert_error(reply, 400, "missing_input", "'b'", "'count'")


# -- broken bundles: 500 naming the field or artifact; nothing cached ----------------------------

def test_bad_manifest_names_the_field_then_recovers_once_fixed(function, tmp_path):
    bundle = tmp_path / "digits"
    shutil.copytree(MODELS / "digits-cnn", bundle)
    good = (bundle / "manifest.json").read_text()
    manifest = json.loads(good)
    manifest["inputs"][0]["image"]["mean"] = [0.5, 0.5, 0.5]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    fn = function({"MODEL_URI": str(bundle)})
    assert_error(gateway(fn, "POST", "/predict", DIGIT, "image/png"), 500, "invalid_manifest",
                 "inputs[0].image.mean")
    ready = gateway(fn, "GET", "/v2/health/ready")
    assert ready.http_status == 503 and ready.json()["ready"] is False
    (bundle / "manifest.json").write_text(good)
    assert gateway(fn, "POST", "/predict", DIGIT, "image/png").json()["result"]["label"] == "7"


def test_checksum_mismatch_names_the_artifact_and_is_never_served(function, tmp_path):
    bundle = tmp_path / "digits"
    shutil.copytree(MODELS / "digits-cnn", bundle)
    model = bundle / "model.onnx"
    original = model.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    model.write_bytes(bytes(damaged))
    fn = function({"MODEL_URI": str(bundle)})
    for _ in range(2):  # the failure is not cached as a model: each call re-checks
        assert_error(gateway(fn, "POST", "/predict", DIGIT, "image/png"), 500, "checksum_mismatch",
                     "'model.onnx'", "sha256")
    model.write_bytes(original)
    assert gateway(fn, "POST", "/predict", DIGIT, "image/png").http_status == 200


def test_bad_configuration_names_the_variable(function):
    fn = function({"MODEL_URI": "ftp://host/model/"})
    assert_error(fn.call(DIGIT, "image/png", method="POST", url="/predict"), 500, "configuration_error",
                 "MODEL_URI", "ftp", "s3://")
    fn2 = function({"MODEL_URI": str(MODELS / "digits-cnn"), "ONNXFN_MAX_PIXELS": "lots"})
    assert_error(gateway(fn2, "POST", "/predict", DIGIT, "image/png"), 500, "configuration_error",
                 "ONNXFN_MAX_PIXELS")


# -- logs ------------------------------------------------------------------------------------------

def test_one_structured_line_per_call_and_no_patient_data(function):
    fn = function({"MODEL_URI": str(MODELS / "digits-cnn")})
    ct = pydicom_file("CT_small.dcm").read_bytes()
    import pydicom
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    fn.call(ct, "application/dicom")
    gateway(fn, "POST", "/predict", DIGIT, "image/png")
    gateway(fn, "POST", "/predict", b"", "image/png")
    lines = [json.loads(line) for line in fn.logs().splitlines() if line.startswith('{"event":"call"')]
    assert len(lines) == 3
    assert lines[0]["cold_start"] is True and lines[1]["cold_start"] is False
    assert all(len(line["call_id"]) == 32 for line in lines)
    assert set(lines[1]["timings_ms"]) >= {"load", "decode", "preprocess", "inference", "postprocess", "total"}
    assert lines[2]["status"] == 400 and lines[2]["outcome"] == "empty_body"
    text = fn.logs()
    for secret in (str(ds.PatientName), str(ds.PatientID), "IHDR", "DEBUG"):
        assert secret not in text
