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


def linear_weights(shape, classes: int = 10, seed: int = 0) -> np.ndarray:
    """The MatMul weights `linear_classifier` builds for this input shape, classes and seed."""
    features = int(np.prod([d for d in shape[1:]]))
    return np.random.default_rng(seed).normal(size=(features, classes)).astype(np.float32)


def linear_classifier(path: Path, shape=("N", 1, 8, 8), classes: int = 10, seed: int = 0) -> Path:
    """image -> Flatten -> MatMul: a classifier whose answer the tests can compute with numpy
    (`linear_weights`)."""
    weights = linear_weights(shape, classes, seed)

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


def constant_outputs(path: Path, name: str, shape, outputs: dict[str, np.ndarray]) -> Path:
    """A model: image -> outputs that are the given constants (each plus 0 x the image's max, so the input is used)."""
    def graph(helper, T, nh):
        nodes = [helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),
                 helper.make_node("Mul", ["peak", "zero"], ["nothing"])]
        initializers = [nh.from_array(np.array(0.0, dtype=np.float32), "zero")]
        infos = []
        for out, value in outputs.items():
            initializers.append(nh.from_array(value, f"{out}_value"))
            if value.dtype == np.float32:
                nodes.append(helper.make_node("Add", [f"{out}_value", "nothing"], [out]))
            else:
                nodes.append(helper.make_node("Identity", [f"{out}_value"], [out]))
            kind = T.FLOAT if value.dtype == np.float32 else T.INT64
            infos.append(helper.make_tensor_value_info(out, kind, list(value.shape)))
        return helper.make_graph(nodes, name, [helper.make_tensor_value_info("image", T.FLOAT, list(shape))],
                                 infos, initializers)
    return onnx_model(path, graph)


def constant_detector(path: Path, boxes, scores, labels, shape=("N", 3, "H", "W"),
                      names=("boxes", "scores", "labels")) -> Path:
    """A post-NMS detector as torchvision exports one: image -> boxes [N, 4] (x1, y1, x2, y2 in model-input
    pixels), scores [N] and labels [N] (int64), always the given ones."""
    values = (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(scores, dtype=np.float32),
              np.asarray(labels, dtype=np.int64))
    return constant_outputs(path, "detector", shape, dict(zip(names, values)))


def constant_yolo(path: Path, predictions, shape=("N", 3, "H", "W"), name: str = "output0") -> Path:
    """A raw YOLO-style detector: image -> the given [1, 4+C, A] or [1, A, 4+C] tensor (cx, cy, w, h in
    model-input pixels and C class scores per anchor)."""
    return constant_outputs(path, "yolo", shape, {name: np.asarray(predictions, dtype=np.float32)})


def reshaper(path: Path) -> Path:
    """data [6] float and shape [2] int64 -> Reshape(data, shape): zeros are no valid shape, [2, 3] is."""
    def graph(helper, T, nh):
        return helper.make_graph(
            [helper.make_node("Reshape", ["data", "shape"], ["reshaped"])], "reshaper",
            [helper.make_tensor_value_info("data", T.FLOAT, [6]),
             helper.make_tensor_value_info("shape", T.INT64, [2])],
            [helper.make_tensor_value_info("reshaped", T.FLOAT, ["R", "C"])])
    return onnx_model(path, graph)


def image_scaler(path: Path, shape=(1, 3, "H", "W")) -> Path:
    """An identity-like image model for tensor bundles: image -> scaled = image * 2 and mean = its mean over
    H and W ([N, C]), so the outputs are known from the pre-processed input."""
    def graph(helper, T, nh):
        return helper.make_graph(
            [helper.make_node("Mul", ["image", "two"], ["scaled"]),
             helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0)], "scaler",
            [helper.make_tensor_value_info("image", T.FLOAT, list(shape))],
            [helper.make_tensor_value_info("scaled", T.FLOAT, list(shape)),
             helper.make_tensor_value_info("mean", T.FLOAT, [shape[0], shape[1]])],
            [nh.from_array(np.array(2.0, dtype=np.float32), "two")])
    return onnx_model(path, graph)
