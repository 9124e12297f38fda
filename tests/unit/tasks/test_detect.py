"""detect.py: boxes from post-NMS and raw YOLO outputs, class-wise NMS, and boxes mapped back onto the
received image through every fit mode, checked against values computed here from the geometry's definition."""
from __future__ import annotations

import re

import numpy as np
import pytest

from onnxfn.bundles import manifest as mf
from onnxfn.errors import InferenceError
from onnxfn.service import Service
from onnxfn.settings import Settings
from onnxfn.tasks import detect
from onnxfn.tasks.preprocess import Geometry
from onnxfn.tools.package import Options, build
from tests.support.images import png
from tests.support.models import constant_detector, constant_yolo

LABELS = ["nodule", "fracture"]
MODEL_HW = (64, 48)  # the fixed model input: 64 high, 48 wide
# (x1, y1, x2, y2 in model-input pixels, class, score): what both test models detect
ANCHORS = [
    ((12, 16, 28, 48), 0, 0.9),
    ((13, 16, 29, 48), 0, 0.8),    # IoU 480/544 with the first, same class: suppressed by NMS
    ((12, 16, 28, 48), 1, 0.7),    # the first's box, another class: kept
    ((0, 0, 48, 4), 0, 0.95),      # a strip along the top: in the letterbox padding for wide images
    ((30, 30, 40, 40), 1, 0.1),    # below the score threshold (0.25)
    ((36, 52, 44, 60), 1, 0.5),
    ((40, 0, 48, 64), 0, 0.25),    # exactly at the score threshold: kept
    ((-4, 60, 6, 70), 1, 0.6),     # partly outside the model input: clipped
]
SURVIVORS = [0, 2, 3, 5, 6, 7]  # what thresholding and NMS keep, in model pixels
SIZES = [(37, 53), (53, 37), (480, 640), (1, 1000), (1000, 1)]  # (height, width) of the images sent


def yolo_tensor(features_first: bool = True) -> np.ndarray:
    rows = []
    for (x1, y1, x2, y2), cls, score in ANCHORS:
        scores = [0.0, 0.0]
        scores[cls], scores[1 - cls] = score, min(score, 0.05)
        rows.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, *scores])
    values = np.asarray(rows, dtype=np.float32)  # [A, 4+C]
    return (values.T if features_first else values)[None]


def post_nms_outputs():
    order = [0, 5, 3, 4, 6, 2, 7]  # not sorted by score, one below the threshold; the suppressed one gone
    return ([ANCHORS[i][0] for i in order], [ANCHORS[i][2] for i in order], [ANCHORS[i][1] for i in order])


# ------------------------------------------------------------------ the geometry, independently

def placement(fit: str, image_hw, model_hw):
    """(resized height, resized width, top, left) as preprocess defines them: stretch fills the input;
    pad scales by the smaller ratio and centres (letterbox); crop scales by the larger and centres;
    keep leaves the image as it is at the top left of a padded canvas."""
    h, w = image_hw
    if fit == "keep":
        return h, w, 0, 0
    th, tw = model_hw
    if fit == "stretch":
        return th, tw, 0, 0
    scale = min(th / h, tw / w) if fit == "pad" else max(th / h, tw / w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    return rh, rw, (th - rh) // 2, (tw - rw) // 2


def expected(fit: str, image_hw, model_hw=MODEL_HW, survivors=SURVIVORS) -> list[dict]:
    h, w = image_hw
    rh, rw, top, left = placement(fit, image_hw, model_hw)
    found = []
    for i in survivors:
        (x1, y1, x2, y2), cls, score = ANCHORS[i]
        box = [min(max((x1 - left) * w / rw, 0), w), min(max((y1 - top) * h / rh, 0), h),
               min(max((x2 - left) * w / rw, 0), w), min(max((y2 - top) * h / rh, 0), h)]
        if box[2] > box[0] and box[3] > box[1]:
            found.append({"index": cls, "label": LABELS[cls], "score": score,
                          "box": [round(float(v), 3) for v in box]})
    return sorted(found, key=lambda d: -d["score"])


# ------------------------------------------------------------------ bundles packaged from the test models

FITS = ["stretch", "pad", "crop", "keep"]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    made = {}

    def get(convention: str, fit: str, fixed: bool) -> Service:
        key = (convention, fit, fixed)
        if key not in made:
            folder = root / "-".join(map(str, key))
            folder.mkdir()
            shape = (1, 3, *MODEL_HW) if fixed else ("N", 3, "H", "W")
            if convention == "boxes":
                model = constant_detector(folder / "m.onnx", *post_nms_outputs(), shape=shape)
            else:
                model = constant_yolo(folder / "m.onnx", yolo_tensor(convention == "yolo-features-first"),
                                      shape=shape)
            image = {"pad_multiple": 32} if fit == "keep" else {"fit": fit}
            if not fixed and fit != "keep":
                image["size"] = list(MODEL_HW)
            bundle = build(model, folder / "bundle", Options(name="det", task="detection", labels=LABELS,
                                                             image=image))
            made[key] = Service(Settings(model_uri=str(bundle.root), baked_bundle="", threads=1))
        return made[key]
    return get


def image(h: int, w: int) -> bytes:
    return png(np.random.default_rng(h * 7 + w).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("convention", ["boxes", "yolo-features-first", "yolo-anchors-first"])
@pytest.mark.parametrize("fit, fixed", [("stretch", True), ("pad", True), ("crop", True),
                                        ("stretch", False), ("pad", False), ("crop", False), ("keep", False)])
def test_boxes_map_back_onto_the_image(services, convention, fit, fixed):
    service = services(convention, fit, fixed)
    for h, w in SIZES:
        body = service.predict(image(h, w), "image/png").body
        assert body["task"] == "detection" and (body["image"]["height"], body["image"]["width"]) == (h, w)
        want = expected(fit, (h, w), MODEL_HW if fit != "keep" else None)
        assert body["result"] == {"detections": want, "count": len(want)}, (h, w)
        for d in body["result"]["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def test_mapped_coordinates_by_hand(services):
    """640 wide x 480 high into 48 wide x 64 high, the first box (12, 16, 28, 48)."""
    def first(fit):
        found = services("boxes", fit, True).predict(image(480, 640), "image/png").body["result"]["detections"]
        return {d["score"]: d["box"] for d in found}
    # stretch: x * 640/48, y * 480/64
    assert first("stretch")[0.9] == [160.0, 120.0, 373.333, 360.0]
    # pad: scale 0.075 -> 48x36 placed 14 rows down; the top strip (y < 4) lies in the padding: dropped
    assert first("pad")[0.9] == [160.0, 26.667, 373.333, 453.333] and 0.95 not in first("pad")
    # crop: scale 64/480 -> 85x64 placed 19 columns left of the input's edge
    assert first("crop")[0.9] == [233.412, 120.0, 353.882, 360.0]


def test_a_keep_size_model_sees_the_image_unscaled(services):
    body = services("yolo-features-first", "keep", False).predict(image(37, 53), "image/png").body
    found = {d["score"]: d["box"] for d in body["result"]["detections"]}
    assert found[0.9] == [12.0, 16.0, 28.0, 37.0]
    assert 0.6 not in found  # (-4, 60, 6, 70) lies below the 37-row image: nothing of it left
    assert found[0.25] == [40.0, 0.0, 48.0, 37.0]


# ------------------------------------------------------------------ NMS

def test_overlapping_boxes_of_one_class_are_suppressed_and_of_two_classes_kept():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert detect.nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5, 100).tolist() == [0, 2, 3]
    assert detect.nms(boxes, scores, np.array([0, 0, 0, 0]), 0.5, 100).tolist() == [0, 3]
    assert detect.nms(boxes, scores, np.array([0, 1, 2, 3]), 0.5, 100).tolist() == [0, 1, 2, 3]


def test_equal_scores_keep_the_earlier_box():
    boxes = np.array([[0, 0, 10, 10]] * 3, dtype=np.float64)
    assert detect.nms(boxes, np.array([0.5, 0.5, 0.5]), np.zeros(3, int), 0.5, 10).tolist() == [0]
    assert detect.nms(boxes, np.array([0.4, 0.5, 0.5]), np.zeros(3, int), 0.5, 10).tolist() == [1]


def test_iou_exactly_at_the_threshold_is_not_suppressed():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=np.float64)  # IoU 50 / 100 = 0.5
    assert detect.iou(boxes[0], boxes[1:]).tolist() == [0.5]
    assert detect.nms(boxes, np.array([0.9, 0.8]), np.zeros(2, int), 0.5, 10).tolist() == [0, 1]
    assert detect.nms(boxes, np.array([0.9, 0.8]), np.zeros(2, int), 0.49, 10).tolist() == [0]
    assert detect.nms(boxes, np.array([0.9, 0.8]), np.zeros(2, int), 1.0, 10).tolist() == [0, 1]


def test_touching_and_empty_boxes_do_not_overlap():
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [5, 5, 5, 5], [5, 5, 5, 5]], dtype=np.float64)
    assert detect.iou(boxes[0], boxes[1:]).tolist() == [0.0, 0.0, 0.0]
    assert detect.iou(boxes[2], boxes[3:]).tolist() == [0.0]
    assert detect.nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.zeros(4, int), 0.1, 10).tolist() == [0, 1, 2, 3]


def test_max_detections_bounds_what_is_kept():
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(50)], dtype=np.float64)
    scores = np.linspace(0.1, 0.9, 50)
    kept = detect.nms(boxes, scores, np.zeros(50, int), 0.5, 7)
    assert kept.tolist() == list(range(49, 42, -1))
    assert detect.nms(boxes[:0], scores[:0], np.zeros(0, int), 0.5, 7).tolist() == []


def naive_nms(boxes, scores, classes, threshold):
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0
    kept = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if all(classes[k] != classes[i] or iou(boxes[k], boxes[i]) <= threshold for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(5))
def test_nms_agrees_with_a_plain_greedy_loop(seed):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 100, (300, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 40, (300, 2))], axis=1)
    scores = np.round(rng.uniform(0, 1, 300), 2)  # rounded: many ties
    classes = rng.integers(0, 3, 300)
    want = naive_nms(boxes, scores, classes, 0.45)
    assert detect.nms(boxes, scores, classes, 0.45, 1000).tolist() == want
    assert detect.nms(boxes, scores, classes, 0.45, 10).tolist() == want[:10]


def test_nms_over_many_anchors_is_quick():
    import time
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 640, (8400, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 80, (8400, 2))], axis=1)
    started = time.perf_counter()
    kept = detect.nms(boxes, rng.uniform(0, 1, 8400), rng.integers(0, 80, 8400), 0.45, 300)
    assert len(kept) == 300 and time.perf_counter() - started < 2.0


# ------------------------------------------------------------------ the output conventions

def manifest_for(fmt: str, classes=LABELS, activation="none", outputs=None, **detection) -> mf.Manifest:
    names = outputs or (["boxes", "scores", "labels"] if fmt == "boxes" else ["output0"])
    out = [{"name": n} for n in names]
    out[0].update(activation=activation)
    if classes is not None:
        out[0]["labels"] = classes
    return mf.parse({
        "name": "det", "version": "1", "task": "detection",
        "inputs": [{"name": "image", "dtype": "float32", "shape": [1, 3, 64, 48], "layout": "NCHW",
                    "image": {"color": "RGB"}}],
        "outputs": out, "detection": {"format": fmt, **detection},
        "artifacts": [{"path": "m.onnx", "sha256": "0" * 64, "size": 1}]})


SAME = Geometry(original=(64, 48), resized=(64, 48), offset=(0, 0), model=(64, 48))


def test_yolo_orientation_from_the_shape_and_the_label_count():
    first, last = yolo_tensor(True), yolo_tensor(False)  # [1, 6, 8] and [1, 8, 6]
    for values in (first, last):
        for labels in (LABELS, None):
            answer = detect.detect({"output0": values}, manifest_for("yolo", labels), SAME)
            assert [d["score"] for d in answer["detections"]] == [0.95, 0.9, 0.7, 0.6, 0.5, 0.25]
    declared = detect.detect({"output0": first}, manifest_for("yolo", layout="features_first"), SAME)
    assert declared["count"] == 6
    with pytest.raises(InferenceError, match="4 \\+ 2 labels = 6") as wrong:
        detect.detect({"output0": first}, manifest_for("yolo", layout="anchors_first"), SAME)
    assert wrong.value.code == "bad_output"


def test_yolo_shapes_that_cannot_be_read():
    square = np.zeros((1, 6, 6), dtype=np.float32)
    with pytest.raises(InferenceError, match="declare detection.layout"):
        detect.detect({"output0": square}, manifest_for("yolo"), SAME)
    assert detect.detect({"output0": square}, manifest_for("yolo", layout="anchors_first"), SAME)["count"] == 0
    with pytest.raises(InferenceError, match="neither axis holds 4 \\+ 3"):
        detect.detect({"output0": yolo_tensor()}, manifest_for("yolo", ["a", "b", "c"]), SAME)
    with pytest.raises(InferenceError, match="must be \\[1, 4\\+classes, anchors\\]"):
        detect.detect({"output0": np.zeros((2, 6, 8), np.float32)}, manifest_for("yolo"), SAME)
    with pytest.raises(InferenceError, match="at least 5"):
        detect.detect({"output0": np.zeros((1, 4, 8), np.float32)}, manifest_for("yolo", None), SAME)


def test_yolo_logits_through_a_sigmoid():
    logits = yolo_tensor(False).copy()
    logits[0, :, 4:] = np.log(logits[0, :, 4:] / (1 - logits[0, :, 4:]) + 1e-30)  # inverse sigmoid
    answer = detect.detect({"output0": logits}, manifest_for("yolo", activation="sigmoid", score_threshold=0.2),
                           SAME)
    assert [d["score"] for d in answer["detections"]] == [0.95, 0.9, 0.7, 0.6, 0.5, 0.25]


def test_thresholds_and_cap_come_from_the_manifest():
    values = {"output0": yolo_tensor()}
    assert detect.detect(values, manifest_for("yolo", score_threshold=0.6), SAME)["count"] == 4
    assert detect.detect(values, manifest_for("yolo", score_threshold=0.0), SAME)["count"] == 7
    assert detect.detect(values, manifest_for("yolo", iou_threshold=0.95), SAME)["count"] == 7
    capped = detect.detect(values, manifest_for("yolo", max_detections=2), SAME)
    assert capped["count"] == 2 and [d["score"] for d in capped["detections"]] == [0.95, 0.9]
    boxes, scores, labels = post_nms_outputs()
    outputs = {"boxes": np.float32(boxes), "scores": np.float32(scores), "labels": np.int64(labels)}
    capped = detect.detect(outputs, manifest_for("boxes", max_detections=3), SAME)
    assert [d["score"] for d in capped["detections"]] == [0.95, 0.9, 0.7]


def test_post_nms_outputs_with_a_batch_axis_without_labels_and_empty():
    boxes, scores, labels = post_nms_outputs()
    outputs = {"boxes": np.float32(boxes)[None], "scores": np.float32(scores)[None],
               "labels": np.int64(labels)[None]}
    answer = detect.detect(outputs, manifest_for("boxes", None), SAME)
    assert [(d["label"], d["index"]) for d in answer["detections"]][:3] == [("0", 0), ("0", 0), ("1", 1)]
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "labels": np.zeros(0, np.int64)}
    assert detect.detect(empty, manifest_for("boxes"), SAME) == {"detections": [], "count": 0}


@pytest.mark.parametrize("outputs, words", [
    ({"boxes": np.zeros((2, 5)), "scores": np.zeros(2), "labels": np.zeros(2, np.int64)}, "'boxes' [2, 5]"),
    ({"boxes": np.zeros((2, 4)), "scores": np.zeros(3), "labels": np.zeros(2, np.int64)}, "'scores' [3]"),
    ({"boxes": np.zeros((2, 4)), "scores": np.ones(2), "labels": np.array([0, 2])}, "class 2, but the manifest"),
    ({"boxes": np.zeros((2, 4)), "scores": np.ones(2), "labels": np.array([0, -1])}, "negative class"),
    ({"boxes": np.zeros((2, 4)), "scores": np.ones(2), "labels": np.array([0, 0.5])}, "non-integer"),
])
def test_post_nms_outputs_that_do_not_fit(outputs, words):
    with pytest.raises(InferenceError, match=re.escape(words)) as info:
        detect.detect(outputs, manifest_for("boxes"), SAME)
    assert info.value.code == "bad_output"


def test_float_labels_and_named_outputs():
    outputs = {"b": np.array([[1, 2, 3, 4]], np.float32), "s": np.array([0.5], np.float32),
               "l": np.array([1.0], np.float32)}
    m = manifest_for("boxes", outputs=["b", "s", "l"], boxes="b", scores="s", labels="l")
    assert detect.output_names(m) == ["b", "s", "l"]
    assert detect.detect(outputs, m, SAME)["detections"] == [
        {"index": 1, "label": "fracture", "score": 0.5, "box": [1.0, 2.0, 3.0, 4.0]}]


def test_non_finite_and_reversed_boxes():
    outputs = {"boxes": np.array([[np.nan, 0, 4, 4], [10, 12, 2, 4]], np.float32),
               "scores": np.array([0.9, 0.8], np.float32), "labels": np.array([0, 0])}
    answer = detect.detect(outputs, manifest_for("boxes"), SAME)
    assert answer["detections"] == [{"index": 0, "label": "nodule", "score": 0.8, "box": [2.0, 4.0, 10.0, 12.0]}]
