"""OIP binary tensor data extension vs JSON tensors through the gateway (`onnxfn serve`, the function under
the real fdk), for a 1x3x512x512 FP32 tensor.

    python bench/binary.py [--runs 15] [--threads 1]

An Identity model (x [N,3,512,512] FP32 -> y) is packaged and served by `onnxfn serve` (a subprocess, as a
user runs it). The client keeps one HTTP connection and alternates call by call:
  B. binary: the tensor's bytes after a small JSON header (Inference-Header-Content-Length), the output
     asked for as binary (binary_data_output) and read back with np.frombuffer;
  J. JSON: the tensor as an OIP `data` list (json.dumps of .tolist()), the answer's `data` read back into
     an array.
For each it reports the medians of the request+answer time as the client sees it (encode, send, the
function's work, receive, decode) and of the time on the wire alone (send to last byte received), and the
bytes on the wire (request and answer bodies, and their HTTP headers). The data are random in [0, 1), so
JSON carries about 18 characters per value, what real activations cost.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(ROOT))

from onnxfn.tools.package import Options, build  # noqa: E402
from tests.support.models import onnx_model  # noqa: E402

SHAPE = [1, 3, 512, 512]


def identity(path: Path) -> Path:
    """x [N,3,512,512] FP32 -> Identity -> y."""
    def graph(helper, T, nh):
        dims = ["N", *SHAPE[1:]]
        return helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                                 [helper.make_tensor_value_info("x", T.FLOAT, dims)],
                                 [helper.make_tensor_value_info("y", T.FLOAT, dims)])
    return onnx_model(path, graph)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle: Path, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "onnxfn.tools.cli", "serve", "--port", str(port),
                             "--model", str(bundle)], env={**os.environ, "ONNXFN_THREADS": str(threads)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("onnxfn serve did not become ready")
        time.sleep(0.2)


def header_bytes(headers: dict) -> int:
    return sum(len(k) + len(str(v)) + 4 for k, v in headers.items())


def call(conn: http.client.HTTPConnection, x: np.ndarray, binary: bool) -> dict:
    """One call; its timings (client total, wire) and bytes, and the array it got back."""
    started = time.perf_counter()
    if binary:
        data = x.astype("<f4", copy=False).tobytes()
        head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": SHAPE,
                                       "parameters": {"binary_data_size": len(data)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        body = head + data
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    else:
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": SHAPE,
                                       "data": x.reshape(-1).tolist()}]}).encode()
        headers = {"Content-Type": "application/json"}
    sent = time.perf_counter()
    conn.request("POST", "/v2/models/identity/infer", body=body, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    received = time.perf_counter()
    if response.status != 200:
        raise SystemExit(f"{response.status}: {answer[:300]!r}")
    if binary:
        length = int(response.getheader("Inference-Header-Content-Length"))
        y = np.frombuffer(answer, "<f4", offset=length).reshape(SHAPE)
    else:
        y = np.asarray(json.loads(answer)["outputs"][0]["data"], dtype=np.float32).reshape(SHAPE)
    done = time.perf_counter()
    return {"total": (done - started) * 1000, "wire": (received - sent) * 1000, "y": y,
            "request": len(body) + header_bytes({**headers, "Content-Length": len(body)}),
            "answer": len(answer) + header_bytes(dict(response.getheaders())),
            "request_body": len(body), "answer_body": len(answer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="calls of each kind, alternated (default 15)")
    parser.add_argument("--threads", type=int, default=1, help="ONNXFN_THREADS of the function (default 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnxfn-bench-binary-") as tmp:
        bundle = build(identity(Path(tmp) / "identity.onnx"), Path(tmp) / "identity", Options(name="identity")).root
        proc, port = start(bundle, args.threads)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
            for binary in (True, False):  # warm both paths (the model loads on the first call)
                call(conn, x, binary)
            runs: dict[bool, list[dict]] = {True: [], False: []}
            for i in range(args.runs):
                for binary in ((True, False) if i % 2 == 0 else (False, True)):
                    result = call(conn, x, binary)
                    assert np.array_equal(result.pop("y"), x)
                    runs[binary].append(result)
            conn.close()
        finally:
            proc.terminate()
            proc.wait(10)
    med = {kind: {k: statistics.median(r[k] for r in runs[kind]) for k in runs[kind][0]} for kind in runs}
    b, j = med[True], med[False]
    print(f"1x3x512x512 FP32 ({np.prod(SHAPE) * 4:,} bytes of tensor) through onnxfn serve -> real fdk, "
          f"{args.runs} calls each, alternated; medians")
    print(f"{'':8} {'request+answer ms':>18} {'wire ms':>9} {'request bytes':>14} {'answer bytes':>13}")
    for name, m in (("binary", b), ("JSON", j)):
        print(f"{name:8} {m['total']:18.1f} {m['wire']:9.1f} {m['request']:14,.0f} {m['answer']:13,.0f}")
    print(f"JSON/binary: time x{j['total'] / b['total']:.1f} (wire x{j['wire'] / b['wire']:.1f}), "
          f"bytes x{(j['request'] + j['answer']) / (b['request'] + b['answer']):.1f}")


if __name__ == "__main__":
    main()
