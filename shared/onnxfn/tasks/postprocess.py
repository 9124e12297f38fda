"""Model outputs -> clinical-style answers: top-k labels, or a mask with per-class
pixel counts and bounding boxes."""
from __future__ import annotations

import base64
import io

import numpy as np

from onnxfn.errors import InferenceError
from onnxfn.bundles.manifest import InputSpec, OutputSpec
from onnxfn.tasks.preprocess import Geometry, restore


def activate(values: np.ndarray, activation: str, axis: int = -1) -> np.ndarray:
    """Apply an output's activation in float32: softmax along `axis`, sigmoid, or none (values as they are)."""
    values = values.astype(np.float32, copy=False)
    if activation == "softmax":
        shifted = values - values.max(axis=axis, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=axis, keepdims=True)
    if activation == "sigmoid":
        with np.errstate(over="ignore"):  # exp overflows to inf for logits below -88: the answer is 0
            return 1.0 / (1.0 + np.exp(-values))
    return values


def classify(output: np.ndarray, spec: OutputSpec, top_k: int) -> dict:
    """A classifier's answer from [1, classes] or [classes] scores: the best label and the `top_k` best;
    `InferenceError` (bad_output) for another shape or a label count that does not match."""
    scores = np.asarray(output)
    if scores.ndim == 2 and scores.shape[0] == 1:
        scores = scores[0]
    if scores.ndim != 1:
        raise InferenceError(f"output {spec.name!r} has shape {list(np.shape(output))}; a classifier's scores "
                             "must be [1, classes]", code="bad_output")
    scores = activate(scores, spec.activation)
    labels = spec.labels or tuple(str(i) for i in range(scores.size))
    if len(labels) != scores.size:
        raise InferenceError(f"output {spec.name!r} gives {scores.size} scores but the manifest lists "
                             f"{len(labels)} labels", code="bad_output")
    key = "score" if spec.activation == "none" else "probability"
    order = np.argsort(-scores, kind="stable")[:top_k]
    top = [{"index": int(i), "label": labels[i], key: round(float(scores[i]), 6)} for i in order]
    return {"label": top[0]["label"], key: top[0][key], "top": top}


def segment(output: np.ndarray, spec: OutputSpec, input_spec: InputSpec, geometry: Geometry) -> dict:
    """A segmentation answer: the label mask mapped back onto the received image as a base64 PNG, and per
    class (background excluded) its pixel count, fraction of the image and bounding box."""
    mask = _labels(np.asarray(output), spec, input_spec)
    if mask.shape != tuple(geometry.model):
        raise InferenceError(f"output {spec.name!r} has shape {list(np.shape(output))}: a {mask.shape[0]}x"
                             f"{mask.shape[1]} mask, but the model's input was {geometry.model[0]}x"
                             f"{geometry.model[1]}; a segmentation output must match its input's height and width "
                             f"in layout {input_spec.layout}", code="bad_output")
    mask = restore(mask, geometry)
    count = int(mask.max()) + 1 if spec.decision == "argmax" else 2
    names = class_labels(spec)
    classes = []
    counts = np.bincount(mask.reshape(-1), minlength=count)
    for index in range(1, max(count, len(names))):
        pixels = int(counts[index]) if index < counts.size else 0
        classes.append({"index": index, "label": names[index] if index < len(names) else str(index),
                        "pixels": pixels, "fraction": round(pixels / mask.size, 6),
                        "bbox": _bbox(mask == index) if pixels else None})
    return {"mask": {"format": "png", "encoding": "base64", "width": int(mask.shape[1]),
                     "height": int(mask.shape[0]), "values": "class index", "data": png(mask)},
            "classes": classes}


def class_labels(spec: OutputSpec) -> tuple[str, ...]:
    """A segmentation output's class names by class index: its labels, a threshold model's one label being class 1
    (class 0 the background)."""
    names = tuple(spec.labels or ())
    return ("background",) + names if spec.decision == "threshold" and len(names) == 1 else names


def probabilities(output: np.ndarray, spec: OutputSpec, input_spec: InputSpec, geometry: Geometry) -> np.ndarray:
    """Per-class probabilities mapped back onto the received image (H x W x channels, float32 in [0, 1]): the
    output's activation (softmax across channels, sigmoid), the padding cropped, the resize undone (bilinear);
    what a fractional DICOM SEG holds. An output without an activation is clipped to [0, 1]."""
    values = _channels_last(np.asarray(output), spec, input_spec)
    values = activate(values, spec.activation, axis=2)  # float32; "none" keeps the values
    return np.clip(restore(values, geometry, "bilinear"), 0.0, 1.0)


def _channels_last(output: np.ndarray, spec: OutputSpec, input_spec: InputSpec) -> np.ndarray:
    """A segmentation output as H x W x channels, whatever the input's layout."""
    layout = input_spec.layout
    if output.ndim == len(layout) and "N" in layout:
        output = output[0]
        layout = layout.replace("N", "")
    if output.ndim == 2:  # HW: one channel, no channel axis
        output, layout = output[..., None], "HWC"
    if output.ndim != 3:
        raise InferenceError(f"output {spec.name!r} has shape {list(output.shape)}; a segmentation output must "
                             f"follow the input's layout {input_spec.layout}", code="bad_output")
    return output.transpose(1, 2, 0) if layout == "CHW" else output


def _labels(output: np.ndarray, spec: OutputSpec, input_spec: InputSpec) -> np.ndarray:
    output = _channels_last(output, spec, input_spec)
    if spec.decision == "argmax":
        return np.argmax(output, axis=2).astype(np.uint8)
    if output.shape[2] != 1:
        raise InferenceError(f"output {spec.name!r} has {output.shape[2]} channels; decision `threshold` needs one",
                             code="bad_output")
    if spec.activation == "sigmoid":  # sigmoid(x) > t is x > logit(t): no float32 copy of a large output
        return np.greater(output[..., 0], np.float32(np.log(spec.threshold / (1.0 - spec.threshold)))).view(np.uint8)
    probability = activate(output[..., 0], spec.activation)
    return (probability > spec.threshold).view(np.uint8)


def _bbox(region: np.ndarray) -> list[int]:
    """[x_min, y_min, x_max, y_max], inclusive pixel coordinates."""
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def png(mask: np.ndarray) -> str:
    """A label mask as base64 text of an 8-bit grey PNG (pixel values are class indices)."""
    from PIL import Image as PILImage
    buffer = io.BytesIO()
    PILImage.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
