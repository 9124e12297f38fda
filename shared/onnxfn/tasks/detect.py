"""Detection: model outputs -> boxes with labels and scores on the received image.

Two output conventions (the manifest's `detection.format`):

- `boxes`: post-NMS outputs as torchvision exports them: boxes [N, 4] (x1, y1, x2, y2 in model-input
  pixels), scores [N] and labels [N] (class indices); a leading batch axis of 1 is accepted;
- `yolo`: one raw output [1, 4+C, A] or [1, A, 4+C]: per anchor cx, cy, w, h in model-input pixels and C
  class scores. Each anchor keeps its best class; the score threshold and class-wise NMS are done here,
  vectorised with numpy (the only loop is over kept boxes, at most `max_detections`).

Boxes are mapped back through the pre-processing geometry (`preprocess.unmap`), clipped to the image,
and dropped when nothing of them is left on it (a box wholly in the letterbox padding). NMS compares boxes
in model-input pixels, as the model's own NMS would. The answer lists detections by score, highest first
(ties keep the model's order).
"""
from __future__ import annotations

import numpy as np

from onnxfn.bundles.manifest import DetectionSpec, Manifest
from onnxfn.errors import InferenceError
from onnxfn.tasks.postprocess import activate
from onnxfn.tasks.preprocess import Geometry, unmap

MAX_CANDIDATES = 30000  # boxes passed to NMS at most (the best-scoring ones), as YOLO's own NMS bounds it


def output_names(manifest: Manifest) -> list[str]:
    """The outputs a detector's post-processing reads: boxes, scores and labels, or the one yolo output."""
    d = manifest.detection
    if d.format == "boxes":
        return [d.boxes, d.scores, d.labels]
    return [manifest.primary_output.name]


def detect(outputs: dict[str, np.ndarray], manifest: Manifest, geometry: Geometry) -> dict:
    """A detection answer: `detections` ({index, label, score, box: [x_min, y_min, x_max, y_max] in the
    received image's pixels}) by score, highest first, and their `count`; `InferenceError` (bad_output)
    when the outputs do not follow the manifest's convention."""
    d, labels = manifest.detection, manifest.primary_output.labels
    if d.format == "boxes":
        boxes, scores, classes = _post_nms(outputs, d, labels)
    else:
        name = manifest.primary_output.name
        boxes, scores, classes = decode_yolo(outputs[name], d.layout, labels, manifest.primary_output.activation,
                                             name)
    mapped = to_image(boxes, geometry)
    keep = np.flatnonzero((scores >= d.score_threshold) & np.isfinite(scores)
                          & (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1]))
    if d.format == "yolo":
        if keep.size > MAX_CANDIDATES:
            keep = keep[np.argsort(-scores[keep], kind="stable")[:MAX_CANDIDATES]]
            keep.sort()
        chosen = keep[nms(boxes[keep], scores[keep], classes[keep], d.iou_threshold, d.max_detections)]
    else:
        chosen = keep[np.argsort(-scores[keep], kind="stable")[:d.max_detections]]
    names = labels or ()
    detections = [{"index": int(classes[i]), "label": names[classes[i]] if names else str(int(classes[i])),
                   "score": round(float(scores[i]), 6), "box": [round(float(v), 3) for v in mapped[i]]}
                  for i in chosen]
    return {"detections": detections, "count": len(detections)}


def to_image(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 boxes in model-input pixels -> the received image's pixels (float64), corners
    ordered and clipped to the image; non-finite boxes become empty ones."""
    x1, y1 = unmap(boxes[:, 0], boxes[:, 1], geometry)
    x2, y2 = unmap(boxes[:, 2], boxes[:, 3], geometry)
    h, w = geometry.original
    out = np.stack([np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)], axis=1)
    out[~np.isfinite(out).all(axis=1)] = 0.0
    out[:, 0::2] = np.clip(out[:, 0::2], 0.0, w)
    out[:, 1::2] = np.clip(out[:, 1::2], 0.0, h)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
        max_detections: int) -> np.ndarray:
    """Class-wise greedy non-maximum suppression: the indices kept, best score first (equal scores keep
    their order). A box is suppressed by a better one of the same class whose IoU with it exceeds
    `iou_threshold`; boxes of different classes never suppress each other. At most `max_detections` kept."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(classes)
    remaining = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    kept: list[int] = []
    while remaining.size and len(kept) < max_detections:
        best, rest = remaining[0], remaining[1:]
        kept.append(int(best))
        same = classes[rest] == classes[best]
        overlap = iou(boxes[best], boxes[rest])
        remaining = rest[~(same & (overlap > iou_threshold))]
    return np.asarray(kept, dtype=np.intp)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1, y1, x2, y2 box with each of [N, 4] boxes (0 where both are empty)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def decode_yolo(output: np.ndarray, layout: str, labels: tuple[str, ...] | None, activation: str = "none",
                name: str = "output") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A raw [1, 4+C, A] or [1, A, 4+C] output -> per anchor an x1, y1, x2, y2 box, its best class score and
    that class. `layout` is features_first, anchors_first or auto (the axis of size 4 + the label count,
    or without labels the smaller axis)."""
    values = np.asarray(output)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise InferenceError(f"output {name!r} has shape {list(np.shape(output))}; a yolo detector's output must "
                             "be [1, 4+classes, anchors] or [1, anchors, 4+classes]", code="bad_output")
    if layout == "auto":
        layout = _orientation(values.shape, labels, name)
    if layout == "features_first":
        values = values.T
    features = values.shape[1]
    if features < 5 or labels is not None and features != 4 + len(labels):
        want = f"4 + {len(labels)} labels = {4 + len(labels)}" if labels is not None else "at least 5"
        raise InferenceError(f"output {name!r} has shape {list(np.shape(output))}: {features} values per anchor "
                             f"({layout}), but a yolo detector gives {want}", code="bad_output")
    values = values.astype(np.float64, copy=False)
    cx, cy, w, h = values[:, 0], values[:, 1], values[:, 2], values[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    class_scores = activate(values[:, 4:], activation).astype(np.float64, copy=False)
    classes = np.argmax(class_scores, axis=1)
    scores = np.take_along_axis(class_scores, classes[:, None], axis=1)[:, 0]
    return boxes, scores, classes


def _orientation(shape: tuple[int, int], labels: tuple[str, ...] | None, name: str) -> str:
    """features_first or anchors_first for a [rows, columns] yolo output, from its shape and the label count."""
    rows, cols = shape
    if labels is not None:
        want = 4 + len(labels)
        if rows == want and cols != want:
            return "features_first"
        if cols == want and rows != want:
            return "anchors_first"
        if rows != want:
            raise InferenceError(f"output {name!r} is {rows}x{cols} but the manifest lists {len(labels)} labels: "
                                 f"neither axis holds 4 + {len(labels)} = {want} values", code="bad_output")
    elif rows != cols:
        return "features_first" if rows < cols else "anchors_first"
    raise InferenceError(f"output {name!r} is {rows}x{cols}: which axis holds the anchors is ambiguous; declare "
                         "detection.layout (features_first or anchors_first) in the manifest", code="bad_output")


def _post_nms(outputs: dict[str, np.ndarray], d: DetectionSpec, labels: tuple[str, ...] | None):
    """The boxes, scores and class indices of post-NMS outputs, checked against each other and the labels."""
    boxes, scores, classes = (np.asarray(outputs[n]) for n in (d.boxes, d.scores, d.labels))
    shapes = f"{d.boxes!r} {list(boxes.shape)}, {d.scores!r} {list(scores.shape)}, {d.labels!r} {list(classes.shape)}"
    if boxes.ndim == 3 and boxes.shape[0] == 1:
        boxes = boxes[0]
    scores, classes = (a[0] if a.ndim == 2 and a.shape[0] == 1 else a for a in (scores, classes))
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.ndim != 1 or classes.ndim != 1 \
            or not boxes.shape[0] == scores.size == classes.size:
        raise InferenceError(f"post-NMS outputs must be boxes [N, 4], scores [N] and labels [N]; got {shapes}",
                             code="bad_output")
    if classes.dtype.kind == "f":
        if not np.all(np.isfinite(classes)) or np.any(classes != np.rint(classes)):
            raise InferenceError(f"output {d.labels!r} holds non-integer class indices", code="bad_output")
    classes = classes.astype(np.int64)
    if classes.size and classes.min() < 0:
        raise InferenceError(f"output {d.labels!r} gives class {int(classes.min())}, a negative class index",
                             code="bad_output")
    if classes.size and labels is not None and classes.max() >= len(labels):
        raise InferenceError(f"output {d.labels!r} gives class {int(classes.max())}, but the manifest lists "
                             f"{len(labels)} labels", code="bad_output")
    return boxes.astype(np.float64), scores.astype(np.float64), classes
