"""The app in-process, no fdk: routing, direct-invocation dispatch, the one error body, the call log line."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from onnxfn.app import App, Reply, Request
from onnxfn.errors import BadRequest, LoadTimeout, MethodNotAllowed, NotFound, OnnxfnError
from onnxfn.settings import Settings
from tests.support.images import EVENTS, oip
from tests.support.models import DIGIT, MODELS


def settings(**overrides) -> Settings:
    return Settings(model_uri=str(MODELS / "digits-cnn"), baked_bundle="", threads=1, **overrides)


@pytest.fixture(scope="module")
def app():
    return App(lambda: settings(base_path="/imaging"))


@pytest.fixture
def lines(app, caplog):
    """The app's call log lines, as dicts."""
    app.logger.propagate = True
    caplog.set_level(logging.INFO, logger="onnxfn")
    yield lambda: [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith('{"event":"call"')]
    app.logger.propagate = False


def gateway(app, method, path, body=b"", content_type=None) -> Reply:
    headers = {"content-type": content_type} if content_type else {}
    return app.handle(Request(method, path, headers, body, call_id="c1", gateway=True))


def test_predict_route_and_its_log_line(app, lines):
    reply = gateway(app, "POST", "/imaging/predict", DIGIT, "image/png")
    assert reply.status == 200 and reply.body["result"]["label"] == "7" and reply.route == "predict"
    assert reply.timings_ms == reply.body["timings_ms"] and reply.cold == reply.body["cold"]
    line = lines()[-1]
    assert line["route"] == "predict" and line["status"] == 200 and line["outcome"] == "ok"
    assert line["timings_ms"] == reply.timings_ms and line["method"] == "POST" and line["bytes_in"] == len(DIGIT)


@pytest.mark.parametrize("method, path, status, route, code", [
    ("GET", "/imaging/nowhere", 404, "unrouted", "route_not_found"),
    ("GET", "/imaging/predict", 405, "predict", "method_not_allowed"),
    ("DELETE", "/imaging/v2/models/digits-cnn", 405, "metadata", "method_not_allowed"),
    ("GET", "/imaging/v2/models/other", 404, "metadata", "model_not_found"),
    ("GET", "/imaging/v2/models/digits-cnn/versions/9", 404, "metadata", "version_not_found"),
    ("POST", "/imaging/v2/models/digits-cnn/infer", 400, "infer", "invalid_json"),
    ("POST", "/predict", 400, "predict", "empty_body"),  # the base path is removed when present
])
def test_errors_have_one_body_and_keep_their_route(app, lines, method, path, status, route, code):
    reply = gateway(app, method, path, b"{nope" if path.endswith("infer") else b"")
    assert reply.status == status and reply.route == route
    assert set(reply.body) == {"error", "code", "status"} and reply.body["code"] == code
    assert reply.body["status"] == status
    if status == 405:
        assert reply.headers["Allow"] in ("POST", "GET")
    line = lines()[-1]
    assert line["route"] == route and line["outcome"] == code and line["error"] == reply.body["error"]


def test_metadata_ready_and_live(app):
    meta = gateway(app, "GET", "/imaging/v2/models/digits-cnn").body
    assert meta["name"] == "digits-cnn" and meta["inputs"][0]["datatype"] == "FP32"
    assert gateway(app, "GET", "/imaging/v2/models/digits-cnn/ready").body == {"name": "digits-cnn", "ready": True}
    assert gateway(app, "GET", "/imaging/v2/health/ready").body == {"ready": True}
    assert gateway(app, "GET", "/imaging/v2/health/live").body == {"live": True}
    assert gateway(app, "GET", "/imaging/v2").body["name"] == "onnxfn"


def test_direct_invocations_are_told_apart_by_their_body(app, lines):
    image = app.handle(Request("POST", "/", {"content-type": "image/png"}, DIGIT))
    assert image.route == "predict" and image.body["result"]["label"] == "7"
    tensors = app.handle(Request("POST", "/", {"content-type": "application/json"},
                                 oip(("image", "FP32", [1, 1, 8, 8], [0.0] * 64))))
    assert tensors.route == "infer" and tensors.body["outputs"][0]["shape"] == [1, 10]
    assert tensors.cold is False and tensors.timings_ms == tensors.body["parameters"]["timings_ms"]
    not_an_image = app.handle(Request("POST", "/", {}, b'{"hello": 1}'))
    assert not_an_image.route == "predict" and not_an_image.status == 400
    assert not_an_image.body["code"] == "image_expected"
    assert [line["route"] for line in lines()[-3:]] == ["predict", "infer", "predict"]


def test_an_event_is_an_event_even_when_it_fails(app, lines, monkeypatch):
    """The event detector is `envelopes.is_event`; an event that fails keeps the route (Fn then answers 502 so
    the platform delivers it again), and its log line carries the code, not a message that may name the object."""
    import time
    document = json.loads((EVENTS / "oci-createobject.json").read_text())
    body = json.dumps(document).encode()
    unconfigured = app.handle(Request("POST", "/", {"content-type": "application/json"}, body))
    assert unconfigured.route == "event" and unconfigured.body["code"] == "configuration_error"
    assert "ONNXFN_EVENT_SOURCES" in lines()[-1]["error"]  # about the configuration: the message is logged
    for key, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}.items():
        monkeypatch.setenv(key, value)
    down = App(lambda: settings(event_sources="oci://scans@examplens/", oci_region="us-phoenix-1",
                                oci_endpoint="http://127.0.0.1:9"))  # nothing listens on the discard port
    reply = down.handle(Request("POST", "/", {"content-type": "application/json"}, body,
                                deadline=time.monotonic() + 2.5))
    assert reply.route == "event" and reply.status == 503 and reply.body["code"] == "storage_unavailable"
    assert "chest-0001" in reply.body["error"] and "error" not in lines()[-1]
    assert lines()[-1]["outcome"] == "storage_unavailable"
    malformed = app.handle(Request("POST", "/", {"content-type": "application/json"}, b'{"Records": []}'))
    assert malformed.route == "event" and malformed.status == 400 and malformed.body["code"] == "invalid_event"


def test_a_configuration_error_is_answered_and_liveness_still_works(lines):
    broken = App(lambda: Settings.from_env({"ONNXFN_MAX_PIXELS": "0"}))
    live = broken.handle(Request("GET", "/v2/health/live", gateway=True))
    assert live.status == 200 and live.body == {"live": True}
    predict = broken.handle(Request("POST", "/predict", {"content-type": "image/png"}, DIGIT, gateway=True))
    assert predict.status == 500 and predict.body["code"] == "configuration_error"
    assert "ONNXFN_MAX_PIXELS" in predict.body["error"]


def test_liveness_answers_when_onnxruntime_cannot_be_imported():
    import subprocess
    import sys
    from tests.support.models import ROOT
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from onnxfn.app import App, Request\n"
            "app = App()\n"
            "live = app.handle(Request('GET', '/v2/health/live', gateway=True))\n"
            "ready = app.handle(Request('GET', '/v2/health/ready', gateway=True))\n"
            "print(live.status, ready.status)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "shared"),
                              "MODEL_URI": str(MODELS / "digits-cnn"), "ONNXFN_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "200"  # live; readiness tells the load failed


def test_the_first_call_settles_a_session_built_for_the_cold_start(preoptimized, monkeypatch):
    import threading
    import time
    from onnxfn.runtime import memory
    monkeypatch.setattr(memory, "limit", lambda settings=None: None)
    app = App(lambda: Settings(model_uri=str(preoptimized.root), threads=1))
    first = app.handle(Request("POST", "/", {"content-type": "image/png"}, DIGIT))
    assert first.status == 200 and first.body["runtime"]["artifact"].endswith(".ort")
    ends = time.monotonic() + 30
    while any(t.name == "onnxfn-settle" for t in threading.enumerate()) and time.monotonic() < ends:
        time.sleep(0.01)
    model, _ = app.service.runner.get()
    assert model.settled
    assert model.session.get_session_options().get_session_config_entry(
        "session.use_ort_model_bytes_for_initializers") == "0"
    second = app.handle(Request("POST", "/", {"content-type": "image/png"}, DIGIT))
    assert second.status == 200 and second.body["result"]["label"] == first.body["result"]["label"]


def test_unexpected_exceptions_become_a_500_and_nothing_escapes(app, monkeypatch):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(app.service, "metadata", boom)
    reply = gateway(app, "GET", "/imaging/v2/models/digits-cnn")
    assert reply.status == 500 and reply.body == {"error": "unexpected ZeroDivisionError: division by zero",
                                                  "code": "internal_error", "status": 500}


def test_reply_error_carries_status_code_and_headers():
    assert Reply.error(LoadTimeout("still loading")).headers == {"Retry-After": "2"}
    assert Reply.error(MethodNotAllowed("no", ("GET", "POST"))).headers == {"Allow": "GET, POST"}
    reply = Reply.error(BadRequest("bad pixels", code="corrupt_image"), route="predict")
    assert (reply.status, reply.body, reply.route) == (400, {"error": "bad pixels", "code": "corrupt_image",
                                                             "status": 400}, "predict")
    assert Reply.error(NotFound("x")).body["status"] == 404
    assert OnnxfnError("x", status=418, code="teapot").body(extra=1) == {"error": "x", "code": "teapot",
                                                                         "status": 418, "extra": 1}


def test_refused_calls_are_logged_as_refused(app, lines):
    reply = app.refuse(Request("POST", "/", body=b"x"), BadRequest("not for us", code="gateway_only"))
    assert reply.status == 400 and reply.route == "refused" and lines()[-1]["route"] == "refused"


# -- the OIP binary tensor data extension -------------------------------------------------------

def binary_request(pixels: np.ndarray, **extra) -> tuple[bytes, str]:
    """digits-cnn's input sent as binary data; returns (body, Inference-Header-Content-Length)."""
    data = pixels.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(pixels.shape),
                                   "parameters": {"binary_data_size": len(data)}}], **extra}).encode()
    return head + data, str(len(head))


def split(reply: Reply) -> tuple[dict, bytes]:
    """A binary answer's JSON part and tensor bytes, as a client reads them."""
    body = reply.encoded()
    length = int(reply.headers["Inference-Header-Content-Length"])
    return json.loads(body[:length]), body[length:]


def test_binary_infer_through_the_gateway_route(app, lines):
    pixels = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    data, header = binary_request(pixels, id="b1", parameters={"binary_data_output": True})
    reply = app.handle(Request("POST", "/imaging/v2/models/digits-cnn/infer",
                               {"inference-header-content-length": header,
                                "content-type": "application/octet-stream"}, data, gateway=True))
    assert reply.status == 200 and reply.route == "infer" and reply.content_type == "application/octet-stream"
    head, tensors = split(reply)
    assert head["id"] == "b1" and head["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [2, 10],
                                                       "parameters": {"binary_data_size": 80}}]
    logits = np.frombuffer(tensors, "<f4").reshape(2, 10)
    json_reply = gateway(app, "POST", "/imaging/v2/models/digits-cnn/infer",
                         oip(("image", "FP32", [2, 1, 8, 8], pixels.reshape(-1).tolist())))
    np.testing.assert_array_equal(logits, np.array(json_reply.body["outputs"][0]["data"], np.float32).reshape(2, 10))
    assert json_reply.content_type == "application/json" and "Inference-Header-Content-Length" not in json_reply.headers
    assert lines()[-2]["route"] == "infer" and lines()[-2]["bytes_in"] == len(data)


def test_binary_request_json_answer_and_json_request_binary_answer(app):
    pixels = np.zeros((1, 1, 8, 8), np.float32)
    data, header = binary_request(pixels)
    reply = app.handle(Request("POST", "/imaging/v2/models/digits-cnn/infer",
                               {"inference-header-content-length": header}, data, gateway=True))
    assert reply.status == 200 and reply.tensors == [] and reply.body["outputs"][0]["shape"] == [1, 10]
    asked = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}],
                        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    reply = gateway(app, "POST", "/imaging/v2/models/digits-cnn/infer", asked, "application/json")
    head, tensors = split(reply)
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 40} and len(tensors) == 40


def test_a_raw_binary_request_answers_binary(app):
    pixels = np.ones((1, 1, 8, 8), np.float32)
    reply = app.handle(Request("POST", "/imaging/v2/models/digits-cnn/infer",
                               {"inference-header-content-length": "0"}, pixels.tobytes(), gateway=True))
    head, tensors = split(reply)
    assert head["outputs"][0]["shape"] == [1, 10] and len(tensors) == 40


def test_binary_direct_invocation(app, lines):
    pixels = np.zeros((1, 1, 8, 8), np.float32)
    data, header = binary_request(pixels, parameters={"binary_data_output": True})
    reply = app.handle(Request("POST", "/", {"inference-header-content-length": header,
                                             "content-type": "application/octet-stream"}, data))
    assert reply.route == "infer" and reply.status == 200
    head, tensors = split(reply)
    assert head["model_name"] == "digits-cnn" and len(tensors) == 40
    assert lines()[-1]["route"] == "infer"


@pytest.mark.parametrize("header, cut, status, code, words", [
    ("x12", 0, 400, "invalid_binary_header", ["'x12'"]),
    (None, 4, 400, "binary_framing", ["'image'", "only 252 bytes"]),
    ("big", 0, 400, "invalid_binary_header", ["the body is"]),
])
def test_malformed_binary_requests_name_what_is_wrong(app, header, cut, status, code, words):
    data, length = binary_request(np.zeros((1, 1, 8, 8), np.float32))
    data = data[:len(data) - cut]
    header = {"big": str(len(data) + 10)}.get(header, header) if header else length
    for request in (Request("POST", "/imaging/v2/models/digits-cnn/infer",
                            {"inference-header-content-length": header}, data, gateway=True),
                    Request("POST", "/", {"inference-header-content-length": header}, data)):
        reply = app.handle(request)
        assert reply.status == status and reply.body["code"] == code and reply.tensors == []
        assert reply.content_type == "application/json"
        for word in words:
            assert word in reply.body["error"]


def test_the_body_limit_holds_for_binary_requests():
    small = App(lambda: settings(max_body_bytes=100))
    data, header = binary_request(np.zeros((1, 1, 8, 8), np.float32))
    reply = small.handle(Request("POST", "/v2/models/digits-cnn/infer", {"inference-header-content-length": header},
                                 data, gateway=True))
    assert reply.status == 413 and reply.body["code"] == "body_too_large"


def test_server_metadata_lists_the_binary_extension(app):
    assert gateway(app, "GET", "/imaging/v2").body["extensions"] == ["binary_tensor_data"]


def test_json_bodies_over_the_limit_are_413_before_parsing():
    small = App(lambda: settings(max_body_bytes=1000))
    body = oip(("image", "FP32", [1, 1, 8, 8], [0.0] * 64)) + b" " * 1000
    direct = small.handle(Request("POST", "/", {"content-type": "application/json"}, body))
    routed = small.handle(Request("POST", "/v2/models/digits-cnn/infer", {"content-type": "application/json"},
                                  body, gateway=True))
    for reply in (direct, routed):
        assert reply.status == 413 and reply.body["code"] == "body_too_large" and "ONNXFN_MAX_BODY_BYTES" in \
            reply.body["error"]


def test_an_answer_whose_bytes_exceed_the_response_limit_becomes_a_413():
    app = App(lambda: settings(max_response_bytes=300))  # a digits answer is ~700 bytes of JSON
    reply = app.handle(Request("POST", "/predict", {"content-type": "image/png"}, DIGIT, gateway=True))
    assert (reply.status, reply.body["code"]) == (413, "response_too_large")
    assert "ONNXFN_MAX_RESPONSE_BYTES" in reply.body["error"] and reply.cold is True
    roomy = App(lambda: settings()).handle(Request("POST", "/predict", {"content-type": "image/png"}, DIGIT,
                                                   gateway=True))
    assert roomy.status == 200 and 300 < len(roomy.encoded()) < Settings.max_response_bytes


def test_accept_dicom_answers_the_dicom_object_on_the_route_and_by_direct_invocation(lines):
    import io
    import highdicom as hd
    from tests.support.images import pydicom_file
    ct = pydicom_file("CT_small.dcm").read_bytes()
    app = App(lambda: settings(top_k=2))
    for gateway_call in (True, False):
        headers = {"content-type": "application/dicom", "accept": "application/json;q=0.8, application/dicom"}
        reply = app.handle(Request("POST", "/predict" if gateway_call else "/", headers, ct, gateway=gateway_call))
        assert reply.status == 200 and reply.content_type == "application/dicom", reply.body
        groups = hd.sr.srread(io.BytesIO(reply.encoded())).content.get_image_measurement_groups()
        assert [g.finding_type.meaning for g in groups] == [t["label"] for t in reply.body["result"]["top"]]
        assert lines()[-1]["status"] == 200 and lines()[-1]["route"] == "predict"
    json_reply = app.handle(Request("POST", "/predict", {"accept": "*/*"}, ct, gateway=True))
    assert json_reply.content_type == "application/json" and json_reply.body["task"] == "classification"


def test_accept_dicom_for_a_png_is_a_406(app, lines):
    reply = app.handle(Request("POST", "/imaging/predict", {"content-type": "image/png", "accept": "application/dicom"},
                               DIGIT, gateway=True))
    assert (reply.status, reply.body["code"]) == (406, "not_acceptable") and reply.content_type == "application/json"
    assert "DICOM input" in reply.body["error"] and "application/json" in reply.body["error"]
    assert lines()[-1]["outcome"] == "not_acceptable"


def test_a_panic_that_is_no_exception_is_still_a_500_and_the_app_goes_on(monkeypatch):
    class Panic(BaseException):  # what pyo3 raises when a Rust library panics
        pass

    app = App(lambda: settings())
    ok = app.handle(Request("POST", "/predict", {"content-type": "image/png"}, DIGIT, gateway=True))

    def panic(*args, **kwargs):
        raise Panic("index out of bounds")
    monkeypatch.setattr(app.service, "predict", panic)
    reply = app.handle(Request("POST", "/predict", {"content-type": "image/png"}, DIGIT, gateway=True))
    assert ok.status == 200 and (reply.status, reply.body["code"]) == (500, "internal_error")
    assert "Panic" in reply.body["error"]
    monkeypatch.undo()
    assert app.handle(Request("POST", "/predict", {"content-type": "image/png"}, DIGIT, gateway=True)).status == 200
