"""Shared fixtures: small ONNX models built here, demo bundles, and real function
processes under the fdk (the tests play the Fn agent over the unix socket)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from onnxfn.agent import Function
from onnxfn.package import Options, build

pytest_plugins = ["s3server", "parserver"]

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DIGIT = (ROOT / "samples" / "digit-7.png").read_bytes()  # the bundled sample: a 7
DATA = Path(__file__).resolve().parent / "data"


def onnx_model(path: Path, graph_fn) -> Path:
    """Write a small ONNX model built with onnx.helper; graph_fn(helper, TensorProto, numpy_helper) -> graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = helper.make_model(graph_fn(helper, TensorProto, numpy_helper),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def linear_classifier(path: Path, shape=("N", 1, 8, 8), classes: int = 10, seed: int = 0) -> Path:
    """image -> Flatten -> MatMul: a classifier whose answer the tests can compute with numpy."""
    features = int(np.prod([d for d in shape[1:]]))
    weights = np.random.default_rng(seed).normal(size=(features, classes)).astype(np.float32)

    def graph(helper, T, nh):
        return helper.make_graph(
            [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])], "linear",
            [helper.make_tensor_value_info("image", T.FLOAT, list(shape))],
            [helper.make_tensor_value_info("logits", T.FLOAT, ["N", classes])],
            [nh.from_array(weights, "W")])
    return onnx_model(path, graph)


def identity_segmenter(path: Path) -> Path:
    """image [N,1,H,W] -> logits = image - 0.5: thresholding the sigmoid at 0.5 marks pixels > 0.5."""
    def graph(helper, T, nh):
        return helper.make_graph(
            [helper.make_node("Sub", ["image", "half"], ["logits"])], "seg",
            [helper.make_tensor_value_info("image", T.FLOAT, ["N", 1, "H", "W"])],
            [helper.make_tensor_value_info("logits", T.FLOAT, ["N", 1, "H", "W"])],
            [nh.from_array(np.array(0.5, dtype=np.float32), "half")])
    return onnx_model(path, graph)


def adder(path: Path) -> Path:
    """Two inputs of different dtypes: a tensor model for OIP tests."""
    def graph(helper, T, nh):
        return helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["sum"]),
             helper.make_node("Cast", ["count"], ["count_out"], to=T.INT64)], "adder",
            [helper.make_tensor_value_info("a", T.FLOAT, ["N", 3]),
             helper.make_tensor_value_info("b", T.FLOAT, ["N", 3]),
             helper.make_tensor_value_info("count", T.INT32, [2])],
            [helper.make_tensor_value_info("sum", T.FLOAT, ["N", 3]),
             helper.make_tensor_value_info("count_out", T.INT64, [2])])
    return onnx_model(path, graph)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Small bundles built with `onnxfn package` from models made here."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    out["linear"] = build(linear_classifier(root / "linear.onnx"), root / "linear",
                          Options(name="linear", task="classification", activation="softmax",
                                  labels=[f"class-{i}" for i in range(10)])).root
    out["segmenter"] = build(identity_segmenter(root / "seg.onnx"), root / "segmenter",
                             Options(name="segmenter", task="segmentation", activation="sigmoid",
                                     decision="threshold", labels=["bright"], image={"pad_multiple": 4})).root
    out["adder"] = build(adder(root / "adder.onnx"), root / "adder", Options(name="adder")).root
    return out


@pytest.fixture
def function():
    """Start functions under the real fdk: function(env) -> agent.Function; all stopped afterwards."""
    started: list[Function] = []

    def start(env: dict[str, str] | None = None, **kwargs) -> Function:
        fn = Function(env={"ONNXFN_THREADS": "1", **(env or {})}, **kwargs).start()
        started.append(fn)
        return fn
    yield start
    for fn in started:
        fn.stop()


def png(array: np.ndarray) -> bytes:
    return encode(array, "PNG")


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def pydicom_file(name: str) -> Path:
    """A file of pydicom's own test corpus (shipped inside the pydicom package)."""
    import pydicom
    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def oip(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": [dict(name=n, datatype=d, shape=s, data=v) for n, d, s, v in inputs],
                       **extra}).encode()


def damage(data: bytes, edits, insert: int) -> bytes:
    """Apply hypothesis-drawn edits (where in [0, 1), byte value, "set" | "cut" | "insert") to a file."""
    out = bytearray(data)
    for where, value, op in edits:
        if not out:
            break
        at = int(where * len(out))
        if op == "set":
            out[at] = value
        elif op == "cut":
            del out[at:]
        else:
            out[at:at] = bytes([value]) * insert
    return bytes(out)
