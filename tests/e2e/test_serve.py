"""`onnxfn serve`: a plain HTTP client talks to the function through the local front,
which forwards as API Gateway does."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.support.models import DIGIT, MODELS
from onnxfn.tools.dev.serve import Front



def http(url, body=None, method=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.fixture
def front():
    server = Front(("127.0.0.1", 0), {"MODEL_URI": str(MODELS / "digits-cnn"), "ONNXFN_THREADS": "1"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_statuses_headers_and_bodies_pass_through(front):
    _, base = front
    status, headers, body = http(base + "/predict", DIGIT, "POST", {"Content-Type": "image/png"})
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["result"]["label"] == "7"
    status, headers, body = http(base + "/predict", method="GET")
    assert status == 405 and headers["allow"] == "POST" and json.loads(body)["code"] == "method_not_allowed"
    status, _, body = http(base + "/v2/models/unknown")
    assert status == 404 and json.loads(body)["code"] == "model_not_found"
    status, _, body = http(base + "/predict", b"\x00garbage", "POST", {"Content-Type": "application/octet-stream"})
    assert status == 415


def test_an_oip_client_request(front):
    _, base = front
    meta = json.loads(http(base + "/v2/models/digits-cnn")[2])
    shape = [1 if d == -1 else d for d in meta["inputs"][0]["shape"]]
    request = {"inputs": [{"name": meta["inputs"][0]["name"], "shape": shape, "datatype": "FP32",
                           "data": [0.0] * 64}]}
    status, _, body = http(base + "/v2/models/digits-cnn/infer", json.dumps(request).encode(), "POST",
                           {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 10]


def test_binary_tensors_and_their_header_pass_through_both_ways(front):
    import numpy as np
    _, base = front
    pixels = np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32)
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                   "parameters": {"binary_data_size": 256}}],
                       "parameters": {"binary_data_output": True}}).encode()
    status, headers, body = http(base + "/v2/models/digits-cnn/infer", head + pixels.tobytes(), "POST",
                                 {"Inference-Header-Content-Length": str(len(head)),
                                  "Content-Type": "application/octet-stream"})
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    length = int(headers["inference-header-content-length"])
    assert json.loads(body[:length])["outputs"][0]["parameters"] == {"binary_data_size": 40}
    logits = np.frombuffer(body[length:], "<f4")
    request = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                           "data": pixels.reshape(-1).tolist()}]}
    _, headers, body = http(base + "/v2/models/digits-cnn/infer", json.dumps(request).encode(), "POST",
                            {"Content-Type": "application/json"})
    assert "inference-header-content-length" not in headers
    np.testing.assert_array_equal(logits, np.array(json.loads(body)["outputs"][0]["data"], np.float32))


def test_a_chunked_body_reaches_the_function_whole(front):
    import http.client
    server, base = front
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        conn.request("POST", "/predict", body=iter([DIGIT[:100], DIGIT[100:]]),
                     headers={"Content-Type": "image/png"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["result"]["label"] == "7"
    finally:
        conn.close()


def test_a_dead_function_is_restarted(front):
    server, base = front
    assert http(base + "/v2/health/live")[0] == 200
    first = server.function.process.pid
    os.kill(first, signal.SIGKILL)
    server.function.process.wait()
    status, _, body = http(base + "/predict", DIGIT, "POST", {"Content-Type": "image/png"})
    assert status == 200 and json.loads(body)["cold"] is True
    assert server.function.process.pid != first


def test_the_command_line_front(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ONNXFN_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "onnxfn.tools.cli", "serve", "--port", str(port),
                             "--model", str(MODELS / "digits-sklearn")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, body = http(f"http://127.0.0.1:{port}/v2/health/ready")
                break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 200 and json.loads(body)["ready"] is True
        status, _, body = http(f"http://127.0.0.1:{port}/predict", DIGIT, "POST", {"Content-Type": "image/png"})
        assert json.loads(body)["model"]["name"] == "digits-sklearn"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_terminated_front_leaves_no_function_behind(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "onnxfn.tools.cli", "serve", "--port", str(port),
                             "--model", str(MODELS / "digits-cnn")], env={**os.environ, "ONNXFN_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            http(f"http://127.0.0.1:{port}/v2/health/live")
            break
        except urllib.error.URLError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    assert children
    proc.terminate()
    proc.wait(10)
    time.sleep(0.5)
    for child in children:
        assert not os.path.exists(f"/proc/{child}") or "zombie" in open(f"/proc/{child}/status").read().lower()
