"""Small ONNX models built here with onnx.helper, and the repository's demo bundles and sample."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DIGIT = (ROOT / "samples" / "digit-7.png").read_bytes()  # the bundled sample: a 7


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
