"""routes.py: the route table, paths as routes see them, and which calls run the model."""
from __future__ import annotations

import pytest

from onnxfn import routes
from onnxfn.errors import BadRequest, MethodNotAllowed, NotFound
from onnxfn.routes import Request


@pytest.mark.parametrize("method, path, name, params", [
    ("POST", "/predict", "predict", {}),
    ("POST", "/v2/models/m/infer", "infer", {"name": "m", "version": None}),
    ("POST", "/v2/models/m/versions/2/infer", "infer", {"name": "m", "version": "2"}),
    ("GET", "/v2/models/m/ready", "model_ready", {"name": "m", "version": None}),
    ("GET", "/v2/models/m", "metadata", {"name": "m", "version": None}),
    ("GET", "/v2/health/live", "live", {}),
    ("GET", "/v2/health/ready", "ready", {}),
    ("GET", "/v2", "server", {}),
])
def test_every_route_is_found_with_its_parameters(method, path, name, params):
    match = routes.find(method, path)
    assert (match.name, match.params) == (name, params) and match.handler is not None


def test_a_wrong_method_is_a_405_naming_the_allowed_ones_and_no_route_a_404():
    match = routes.find("GET", "/predict")
    assert match.name == "predict" and match.handler is None and match.allowed == ("POST",)
    with pytest.raises(MethodNotAllowed, match="GET is not allowed on /predict; use POST") as caught:
        match.answer(None, Request("GET", "/predict", gateway=True))
    assert caught.value.headers() == {"Allow": "POST"}
    with pytest.raises(NotFound, match="no route /v3") as missing:
        routes.find("GET", "/v3")
    assert missing.value.code == "route_not_found"


@pytest.mark.parametrize("url, base, path", [
    ("/imaging/predict", "/imaging", "/predict"),
    ("/imaging", "/imaging", "/"),
    ("/imagingX/predict", "/imaging", "/imagingX/predict"),  # a prefix of a segment is not the base path
    ("/v2/models/a%20b/", "", "/v2/models/a b"),             # unquoted, no trailing slash
    ("/predict?x=1", "", "/predict"),
    ("", "", "/"),
])
def test_path_of(url, base, path):
    assert routes.path_of(Request("GET", url), base) == path


@pytest.mark.parametrize("gateway, method, url, runs", [
    (False, "POST", "/", True),                    # a direct invocation always runs the model
    (True, "POST", "/predict", True),
    (True, "POST", "/base/v2/models/m/infer", True),
    (True, "GET", "/v2/models/m", False),
    (True, "GET", "/v2/health/ready", False),
    (True, "POST", "/v2/health/live", False),
])
def test_runs_inference(gateway, method, url, runs):
    assert routes.runs_inference(Request(method, url, gateway=gateway)) is runs


def test_parse_json_names_the_fault():
    assert routes.parse_json(b'{"a": 1}') == {"a": 1}
    for bad in (b"{nope", b"\xff\xfe"):
        with pytest.raises(Exception) as caught:
            routes.parse_json(bad)
        assert caught.value.status == 400 and caught.value.code == "invalid_json"


def test_a_url_urlsplit_refuses_is_a_404_not_a_500():
    with pytest.raises(NotFound) as e:  # found by the fuzzer: ValueError("Invalid IPv6 URL")
        routes.path_of(Request("GET", "//predi[ct//?a=1"))
    assert e.value.status == 404 and e.value.code == "route_not_found"


def test_parse_json_refuses_json_nested_past_the_recursion_limit():
    with pytest.raises(BadRequest, match="nests too deeply") as e:  # found by bench/reliability/fuzz.py
        routes.parse_json(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert e.value.status == 400 and e.value.code == "invalid_json"


def test_a_reply_with_binary_tensors_is_json_then_bytes():
    from onnxfn.routes import Reply
    plain = Reply(200, {"a": 1})
    assert plain.encoded() == b'{"a":1}' and plain.content_type == "application/json" and plain.headers == {}
    framed = Reply(200, {"outputs": []}, tensors=[b"\x01\x02", b"\x03"])
    assert framed.encoded() == b'{"outputs":[]}\x01\x02\x03'
    assert framed.headers == {"Inference-Header-Content-Length": "14"}
    assert framed.content_type == "application/octet-stream"


@pytest.mark.parametrize("accept, dicom", [
    (None, False), ("", False), ("*/*", False), ("application/json", False), ("application/*", False),
    ("application/dicom", True), ("APPLICATION/DICOM", True),
    ("application/dicom, application/json", False),                 # a tie: JSON, the default
    ("application/json;q=0.5, application/dicom", True),
    ("application/dicom;q=0.5, application/json", False),
    ("application/dicom, */*;q=0.1", True),                         # */* weighs JSON less than DICOM
    ("application/json;q=0, */*", True),                            # JSON refused, anything else taken
    ("application/dicom;q=0", False), ("application/dicom;q=0, application/json;q=0", False),
    ("image/png", False), ("application/dicom;q=bad", False),
    ("application/dicom; q=0.9 , application/*;q=0.8", True),
])
def test_accept_weighs_dicom_against_json(accept, dicom):
    assert routes.accepts_dicom(accept) is dicom
    assert Request("POST", "/predict", {"accept": accept} if accept is not None else {}).wants_dicom is dicom


def test_a_reply_with_a_document_sends_its_bytes_and_media_type():
    from onnxfn.routes import Reply
    reply = Reply(200, {"task": "segmentation"}, document=b"DICM...", media_type="application/dicom")
    assert reply.encoded() == b"DICM..." and reply.content_type == "application/dicom"
    assert reply.body == {"task": "segmentation"}  # what the log line reads
