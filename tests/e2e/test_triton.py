"""An unmodified OIP client, `tritonclient[http]`, against `onnxfn serve` (the function under the real fdk,
called as API Gateway calls it): server and model metadata, readiness, JSON inference and the binary tensor
data extension both ways, with the adder model and an Identity per datatype (every numeric type, BYTES,
BOOL). Then what tritonclient does not send: the raw binary request, malformed framing, and the binary
extension in a direct invocation (headers as Fn passes them)."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from onnxfn.tools.dev.serve import Front
from onnxfn.tools.package import Options, build
from tests.support.models import onnx_model
from tests.support.tensors import SAMPLES

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

ONNX_TYPES = {"BOOL": "BOOL", "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32", "UINT64": "UINT64",
              "INT8": "INT8", "INT16": "INT16", "INT32": "INT32", "INT64": "INT64", "FP16": "FLOAT16",
              "FP32": "FLOAT", "FP64": "DOUBLE", "BYTES": "STRING"}
VALUES = SAMPLES


def identities(path):
    """One Identity per OIP datatype: in_<type> [N, 2] -> out_<type>."""
    def graph(helper, T, nh):
        return helper.make_graph(
            [helper.make_node("Identity", [f"in_{k.lower()}"], [f"out_{k.lower()}"]) for k in ONNX_TYPES], "ids",
            [helper.make_tensor_value_info(f"in_{k.lower()}", getattr(T, v), ["N", 2]) for k, v in ONNX_TYPES.items()],
            [helper.make_tensor_value_info(f"out_{k.lower()}", getattr(T, v), ["N", 2]) for k, v in ONNX_TYPES.items()])
    return onnx_model(path, graph)


def one_input(path, onnx_type="FLOAT", shape=("N", 4)):
    """x -> Identity -> y, and a second output y2 = x too (a raw request answers every output as binary)."""
    def graph(helper, T, nh):
        return helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["x"], ["y2"])], "one",
            [helper.make_tensor_value_info("x", getattr(T, onnx_type), list(shape))],
            [helper.make_tensor_value_info("y", getattr(T, onnx_type), list(shape)),
             helper.make_tensor_value_info("y2", getattr(T, onnx_type), list(shape))])
    return onnx_model(path, graph)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`onnxfn serve` fronts (in-process, each over a real fdk process) by bundle name: started on first use."""
    root = tmp_path_factory.mktemp("triton")
    fronts = {}

    def front(name: str, bundle=None) -> str:
        if name not in fronts:
            if bundle is None:
                model = {"identities": lambda: identities(root / "ids.onnx"),
                         "one": lambda: one_input(root / "one.onnx"),
                         "text": lambda: one_input(root / "text.onnx", "STRING", ("N",))}[name]()
                bundle = build(model, root / name, Options(name=name)).root
            server = Front(("127.0.0.1", 0), {"MODEL_URI": str(bundle), "ONNXFN_THREADS": "1"})
            threading.Thread(target=server.serve_forever, daemon=True).start()
            fronts[name] = server
        return f"127.0.0.1:{fronts[name].server_address[1]}"
    yield front
    for server in fronts.values():
        server.shutdown()
        server.server_close()


@pytest.fixture
def adder(served, bundles):
    client = httpclient.InferenceServerClient(served("adder", bundles["adder"]), network_timeout=60)
    yield client
    client.close()


def adder_inputs(binary: bool):
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    b = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.float32)
    count = np.array([4, 5], dtype=np.int32)
    inputs = [httpclient.InferInput("a", [2, 3], "FP32"), httpclient.InferInput("b", [2, 3], "FP32"),
              httpclient.InferInput("count", [2], "INT32")]
    for item, value in zip(inputs, (a, b, count)):
        item.set_data_from_numpy(value, binary_data=binary)
    return inputs, a + b, count.astype(np.int64)


def binary_sizes(result) -> dict:
    """Each output's binary_data_size in the answer (None: it came as JSON)."""
    return {o["name"]: (o.get("parameters") or {}).get("binary_data_size") for o in result.get_response()["outputs"]}


# -- metadata and readiness ---------------------------------------------------------------------

def test_server_and_model_metadata(adder):
    assert adder.is_server_live() and adder.is_server_ready() and adder.is_model_ready("adder")
    server = adder.get_server_metadata()
    assert server["name"] == "onnxfn" and "binary_tensor_data" in server["extensions"]
    meta = adder.get_model_metadata("adder")
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                              {"name": "b", "datatype": "FP32", "shape": [-1, 3]},
                              {"name": "count", "datatype": "INT32", "shape": [2]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"sum": "FP32", "count_out": "INT64"}
    assert adder.get_model_metadata("adder", "1")["versions"] == ["1"]
    with pytest.raises(InferenceServerException) as missing:
        adder.get_model_metadata("other")
    assert missing.value.status() == "404"


# -- the adder: JSON, binary, both mixed ---------------------------------------------------------

def test_json_inference(adder):
    inputs, total, count = adder_inputs(binary=False)
    outputs = [httpclient.InferRequestedOutput("sum", binary_data=False),
               httpclient.InferRequestedOutput("count_out", binary_data=False)]
    result = adder.infer("adder", inputs, outputs=outputs, request_id="j1")
    assert binary_sizes(result) == {"sum": None, "count_out": None}
    np.testing.assert_array_equal(result.as_numpy("sum"), total)
    np.testing.assert_array_equal(result.as_numpy("count_out"), count)
    assert result.get_response()["id"] == "j1"


def test_binary_inference_request_and_answer(adder):
    inputs, total, count = adder_inputs(binary=True)
    result = adder.infer("adder", inputs)  # no outputs named: all come back binary (binary_data_output)
    assert binary_sizes(result) == {"sum": 24, "count_out": 16}
    np.testing.assert_array_equal(result.as_numpy("sum"), total)
    np.testing.assert_array_equal(result.as_numpy("count_out"), count)
    assert result.as_numpy("count_out").dtype == np.int64
    again = adder.infer("adder", inputs, model_version="1")
    np.testing.assert_array_equal(again.as_numpy("sum"), total)


def test_mixed_inputs_and_outputs(adder):
    inputs, total, count = adder_inputs(binary=True)
    inputs[1].set_data_from_numpy(np.array([[10, 20, 30], [40, 50, 60]], dtype=np.float32), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("count_out", binary_data=True),
               httpclient.InferRequestedOutput("sum", binary_data=False)]
    result = adder.infer("adder", inputs, outputs=outputs)
    assert binary_sizes(result) == {"count_out": 16, "sum": None}
    assert [o["name"] for o in result.get_response()["outputs"]] == ["count_out", "sum"]
    np.testing.assert_array_equal(result.as_numpy("sum"), total)
    np.testing.assert_array_equal(result.as_numpy("count_out"), count)


def test_errors_reach_the_client_with_their_status(adder):
    inputs, _, _ = adder_inputs(binary=True)
    wrong = httpclient.InferInput("a", [2, 3], "FP64")
    wrong.set_data_from_numpy(np.zeros((2, 3), np.float64), binary_data=True)
    with pytest.raises(InferenceServerException) as refused:
        adder.infer("adder", [wrong, *inputs[1:]])
    assert refused.value.status() == "400" and "'a'" in refused.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        adder.infer("adder", inputs, outputs=[httpclient.InferRequestedOutput("nope")])
    assert unknown.value.status() == "400" and "'nope'" in unknown.value.message()


# -- every datatype ---------------------------------------------------------------------------------

def expected(datatype: str, value: np.ndarray, binary: bool) -> np.ndarray:
    if datatype == "BYTES" and binary:  # tritonclient reads binary BYTES as bytes, JSON ones as str
        return np.array([v.encode() for v in value.reshape(-1)], dtype=object).reshape(value.shape)
    return value


@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_every_datatype(served, binary_in, binary_out):
    client = httpclient.InferenceServerClient(served("identities"), network_timeout=60)
    try:
        meta = client.get_model_metadata("identities")
        assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {f"in_{k.lower()}": k for k in VALUES}
        inputs = []
        for datatype, value in VALUES.items():
            item = httpclient.InferInput(f"in_{datatype.lower()}", list(value.shape), datatype)
            item.set_data_from_numpy(value, binary_data=binary_in)
            inputs.append(item)
        outputs = [httpclient.InferRequestedOutput(f"out_{k.lower()}", binary_data=binary_out) for k in VALUES]
        result = client.infer("identities", inputs, outputs=outputs)
        sizes = binary_sizes(result)
        for datatype, value in VALUES.items():
            name = f"out_{datatype.lower()}"
            got = result.as_numpy(name)
            assert (sizes[name] is not None) is binary_out, name
            assert got.shape == value.shape, name
            np.testing.assert_array_equal(got, expected(datatype, value, binary_out), err_msg=name)
            if datatype != "BYTES":
                assert got.dtype == value.dtype, name
    finally:
        client.close()


# -- what tritonclient does not send: raw requests, malformed framing ------------------------------

def post(base: str, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://{base}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_a_raw_binary_request_through_the_gateway(served):
    base = served("one")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    status, headers, body = post(base, "/v2/models/one/infer", x.tobytes(),
                                 {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"})
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    length = int(headers["inference-header-content-length"])
    head = json.loads(body[:length])
    assert [(o["name"], o["shape"], o["parameters"]["binary_data_size"]) for o in head["outputs"]] == \
        [("y", [3, 4], 48), ("y2", [3, 4], 48)]
    result = httpclient.InferResult.from_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    np.testing.assert_array_equal(result.as_numpy("y2"), x)
    status, _, body = post(base, "/v2/models/one/infer", b"\x00" * 10, {"Inference-Header-Content-Length": "0"})
    assert status == 400 and json.loads(body)["code"] == "binary_size_mismatch"
    text = served("text")
    status, headers, body = post(text, "/v2/models/text/infer", "ünï".encode(), {"Inference-Header-Content-Length": "0"})
    assert status == 200
    result = httpclient.InferResult.from_response_body(body, header_length=int(headers["inference-header-content-length"]))
    assert result.as_numpy("y").tolist() == ["ünï".encode()]


@pytest.mark.parametrize("header, tail, code, words", [
    ("nope", b"", "invalid_binary_header", ["'nope'"]),
    ("99999", b"", "invalid_binary_header", ["99,999"]),
    (None, b"\x00", "binary_framing", ["1 bytes are left over", "'x' 16"]),
    (None, None, "binary_framing", ["inputs[0] ('x')", "only 15 bytes"]),
])
def test_malformed_framing_is_a_400_through_the_gateway(served, header, tail, code, words):
    x = np.zeros((1, 4), np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                   "parameters": {"binary_data_size": 16}}]}).encode()
    body = head + (x + tail if tail is not None else x[:-1])
    status, headers, answer = post(served("one"), "/v2/models/one/infer", body,
                                   {"Inference-Header-Content-Length": header or str(len(head))})
    error = json.loads(answer)
    assert status == 400 and headers["content-type"] == "application/json" and error["code"] == code
    for word in words:
        assert word in error["error"]


# -- direct invocation under the real fdk --------------------------------------------------------

def test_binary_in_a_direct_invocation(function, bundles):
    fn = function({"MODEL_URI": str(bundles["adder"])})
    a = np.array([[1, 2, 3]], np.float32)
    parts = [a.tobytes(), (a * 10).tobytes(), np.array([4, 5], "<i4").tobytes()]
    head = json.dumps({"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}},
        {"name": "b", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}},
        {"name": "count", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}}],
        "outputs": [{"name": "sum", "parameters": {"binary_data": True}}, {"name": "count_out"}]}).encode()
    reply = fn.call(head + b"".join(parts), "application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})
    assert reply.status == 200 and reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    answer = json.loads(reply.body[:length])
    assert answer["outputs"][0] == {"name": "sum", "datatype": "FP32", "shape": [1, 3],
                                    "parameters": {"binary_data_size": 12}}
    assert answer["outputs"][1]["data"] == [4, 5]  # asked for without binary_data: JSON
    np.testing.assert_array_equal(np.frombuffer(reply.body[length:], "<f4"), [11, 22, 33])
    broken = fn.call(head + b"".join(parts)[:-2], "application/octet-stream",
                     headers={"Inference-Header-Content-Length": str(len(head))})
    assert broken.status == 200 and broken.json()["code"] == "binary_framing" and "'count'" in broken.json()["error"]
