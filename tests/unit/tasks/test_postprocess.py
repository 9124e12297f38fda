"""postprocess.py: activations, top-k classification answers, and segmentation masks with
per-class pixel counts and bounding boxes on the received image."""
from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pytest
from PIL import Image as PILImage

from onnxfn.tasks import postprocess
from onnxfn.errors import InferenceError
from onnxfn.bundles.images import ImageSpec
from onnxfn.bundles.manifest import InputSpec, OutputSpec
from onnxfn.tasks.preprocess import Geometry


def output(activation="none", decision=None, labels=None, threshold=0.5, name="logits") -> OutputSpec:
    return OutputSpec(name=name, activation=activation, decision=decision, threshold=threshold,
                      labels=tuple(labels) if labels else None)


def image_input(layout: str) -> InputSpec:
    shape = {"NCHW": ("N", "C", "H", "W"), "NHWC": ("N", "H", "W", "C"), "CHW": ("C", "H", "W"),
             "HWC": ("H", "W", "C"), "NHW": ("N", "H", "W"), "HW": ("H", "W")}[layout]
    return InputSpec(name="image", dtype="float32", shape=shape, layout=layout, image=ImageSpec())


def same(h: int, w: int) -> Geometry:
    return Geometry((h, w), (h, w), (0, 0), (h, w))


def decoded(mask: dict) -> np.ndarray:
    assert (mask["format"], mask["encoding"], mask["values"]) == ("png", "base64", "class index")
    with PILImage.open(io.BytesIO(base64.b64decode(mask["data"]))) as im:
        assert im.format == "PNG" and im.mode == "L"
        assert im.size == (mask["width"], mask["height"])
        return np.asarray(im)


# ------------------------------------------------------------------ activations

def test_softmax_values():
    np.testing.assert_allclose(postprocess.activate(np.array([1.0, 2.0, 3.0]), "softmax"),
                               [0.09003057, 0.24472847, 0.66524096], rtol=1e-6)


def test_softmax_is_stable_for_large_logits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = postprocess.activate(np.array([1000.0, 1000.0, -1000.0]), "softmax")
    np.testing.assert_allclose(result, [0.5, 0.5, 0.0], atol=1e-7)


def test_softmax_along_an_axis():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    np.testing.assert_allclose(postprocess.activate(logits, "softmax", axis=0), [[0.25, 0.5], [0.75, 0.5]], rtol=1e-6)


def test_sigmoid_values_and_extremes_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = postprocess.activate(np.array([0.0, 2.0, -2.0, 1000.0, -1000.0]), "sigmoid")
    np.testing.assert_allclose(result, [0.5, 0.88079708, 0.11920292, 1.0, 0.0], rtol=1e-6)


def test_none_passes_values_as_float32():
    result = postprocess.activate(np.array([1, -2], dtype=np.int64), "none")
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, [1.0, -2.0])


# ------------------------------------------------------------------ classification

LABELS = ["cat", "dog", "bird", "fish"]


def test_top_k_in_order_with_labels_and_probabilities():
    logits = np.array([[1.0, 3.0, 2.0, 0.0]], dtype=np.float32)
    answer = postprocess.classify(logits, output("softmax", labels=LABELS), top_k=3)
    expected = np.exp([1, 3, 2, 0]) / np.exp([1, 3, 2, 0]).sum()
    assert answer["label"] == "dog" and answer["probability"] == round(float(expected[1]), 6)
    assert [t["label"] for t in answer["top"]] == ["dog", "bird", "cat"]
    assert [t["index"] for t in answer["top"]] == [1, 2, 0]
    assert [t["probability"] for t in answer["top"]] == [round(float(expected[i]), 6) for i in (1, 2, 0)]


def test_top_k_larger_than_the_classes_lists_them_all():
    answer = postprocess.classify(np.array([0.1, 0.9]), output("none"), top_k=10)
    assert len(answer["top"]) == 2


def test_ties_keep_index_order():
    answer = postprocess.classify(np.array([[0.5, 0.7, 0.7, 0.7]]), output("none", labels=LABELS), top_k=4)
    assert [t["index"] for t in answer["top"]] == [1, 2, 3, 0]


def test_without_activation_answers_scores():
    answer = postprocess.classify(np.array([[-1.5, 4.25]]), output("none"), top_k=1)
    assert answer == {"label": "1", "score": 4.25, "top": [{"index": 1, "label": "1", "score": 4.25}]}


def test_sigmoid_classification_scores_each_class_alone():
    answer = postprocess.classify(np.array([[0.0, 2.0]]), output("sigmoid", labels=["a", "b"]), top_k=2)
    assert [t["probability"] for t in answer["top"]] == [0.880797, 0.5]


def test_label_count_mismatch_is_an_inference_error():
    with pytest.raises(InferenceError) as info:
        postprocess.classify(np.zeros((1, 4)), output("softmax", labels=["a", "b", "c"]), top_k=2)
    assert (info.value.status, info.value.code) == (500, "bad_output")
    assert "gives 4 scores" in info.value.message and "3 labels" in info.value.message
    assert "'logits'" in info.value.message


@pytest.mark.parametrize("shape", [(2, 4), (1, 2, 2), ()])
def test_scores_must_be_one_row(shape):
    with pytest.raises(InferenceError) as info:
        postprocess.classify(np.zeros(shape), output(), top_k=1)
    assert info.value.code == "bad_output" and str(list(shape)) in info.value.message


# ------------------------------------------------------------------ segmentation

# a 4x6 map of classes 0..2, with class 2 in a 2x2 block and class 1 in an L shape
CLASSES = np.array([[0, 0, 0, 0, 0, 0],
                    [0, 1, 1, 1, 0, 0],
                    [0, 1, 0, 0, 2, 2],
                    [0, 0, 0, 0, 2, 2]], dtype=np.uint8)


def one_hot(classes: np.ndarray, count: int) -> np.ndarray:
    return (np.arange(count)[:, None, None] == classes[None]).astype(np.float32) * 5.0  # C, H, W


def check_classes(answer: dict, labels=("background", "vessel", "lesion")):
    np.testing.assert_array_equal(decoded(answer["mask"]), CLASSES)
    assert (answer["mask"]["width"], answer["mask"]["height"]) == (6, 4)
    assert answer["classes"] == [
        {"index": 1, "label": labels[1], "pixels": 4, "fraction": round(4 / 24, 6), "bbox": [1, 1, 3, 2]},
        {"index": 2, "label": labels[2], "pixels": 4, "fraction": round(4 / 24, 6), "bbox": [4, 2, 5, 3]},
    ]


def test_argmax_nchw():
    logits = one_hot(CLASSES, 3)[None]
    answer = postprocess.segment(logits, output("softmax", "argmax", ["background", "vessel", "lesion"]),
                                 image_input("NCHW"), same(4, 6))
    check_classes(answer)


def test_argmax_nhwc():
    logits = one_hot(CLASSES, 3).transpose(1, 2, 0)[None]
    answer = postprocess.segment(logits, output("none", "argmax", ["background", "vessel", "lesion"]),
                                 image_input("NHWC"), same(4, 6))
    check_classes(answer)


def test_argmax_chw_without_batch():
    answer = postprocess.segment(one_hot(CLASSES, 3), output("none", "argmax", ["bg", "a", "b"]),
                                 image_input("CHW"), same(4, 6))
    check_classes(answer, ("bg", "a", "b"))


def test_argmax_without_labels_names_classes_by_index():
    answer = postprocess.segment(one_hot(CLASSES, 3)[None], output("none", "argmax"), image_input("NCHW"), same(4, 6))
    assert [c["label"] for c in answer["classes"]] == ["1", "2"]


def test_argmax_lists_labelled_classes_that_are_absent():
    labels = ["bg", "a", "b", "c", "d"]
    answer = postprocess.segment(one_hot(CLASSES, 5)[None], output("none", "argmax", labels),
                                 image_input("NCHW"), same(4, 6))
    assert [c["label"] for c in answer["classes"]] == ["a", "b", "c", "d"]
    assert answer["classes"][2] == {"index": 3, "label": "c", "pixels": 0, "fraction": 0.0, "bbox": None}


def test_threshold_after_sigmoid():
    logits = np.full((1, 1, 3, 4), -3.0, dtype=np.float32)
    logits[0, 0, 1, 1:3] = 3.0
    logits[0, 0, 2, 3] = 0.1  # sigmoid 0.525: over 0.5
    answer = postprocess.segment(logits, output("sigmoid", "threshold", ["lesion"]), image_input("NCHW"), same(3, 4))
    mask = decoded(answer["mask"])
    np.testing.assert_array_equal(mask, [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    assert answer["classes"] == [{"index": 1, "label": "lesion", "pixels": 3, "fraction": 0.25, "bbox": [1, 1, 3, 2]}]


def test_threshold_level_is_the_manifests():
    logits = np.array([[[[0.0, 1.0, 2.0]]]], dtype=np.float32)  # sigmoid 0.5, 0.73, 0.88
    answer = postprocess.segment(logits, output("sigmoid", "threshold", threshold=0.8), image_input("NCHW"), same(1, 3))
    np.testing.assert_array_equal(decoded(answer["mask"]), [[0, 0, 1]])
    assert answer["classes"][0]["label"] == "1"


def test_threshold_on_raw_values_without_activation():
    answer = postprocess.segment(np.array([[0.2, 0.7]]), output("none", "threshold", ["x"]),
                                 image_input("HW"), same(1, 2))
    np.testing.assert_array_equal(decoded(answer["mask"]), [[0, 1]])


def test_threshold_for_an_nhw_model():
    answer = postprocess.segment(np.array([[[5.0, -5.0]]]), output("sigmoid", "threshold", ["x"]),
                                 image_input("NHW"), same(1, 2))
    np.testing.assert_array_equal(decoded(answer["mask"]), [[1, 0]])


def test_empty_threshold_mask_has_no_bbox():
    answer = postprocess.segment(np.full((1, 1, 2, 2), -9.0), output("sigmoid", "threshold", ["x"]),
                                 image_input("NCHW"), same(2, 2))
    assert answer["classes"] == [{"index": 1, "label": "x", "pixels": 0, "fraction": 0.0, "bbox": None}]


def test_threshold_needs_one_channel():
    with pytest.raises(InferenceError) as info:
        postprocess.segment(np.zeros((1, 2, 3, 3)), output("sigmoid", "threshold"), image_input("NCHW"), same(3, 3))
    assert info.value.code == "bad_output" and "2 channels" in info.value.message


def test_output_with_the_wrong_rank_is_an_inference_error():
    with pytest.raises(InferenceError) as info:
        postprocess.segment(np.zeros((1, 1, 1, 3, 3)), output("none", "argmax"), image_input("NCHW"), same(3, 3))
    assert info.value.code == "bad_output" and "[1, 1, 1, 3, 3]" in info.value.message


@pytest.mark.parametrize("shape", [(1, 2, 4, 4), (1, 8, 8)])
def test_output_of_another_size_than_the_input_is_an_inference_error(shape):
    # a half-resolution output, or [N, H, W] from an NCHW model read as CHW: never a silent wrong mask
    with pytest.raises(InferenceError) as info:
        postprocess.segment(np.zeros(shape), output("none", "argmax"), image_input("NCHW"), same(8, 8))
    assert (info.value.status, info.value.code) == (500, "bad_output")
    assert "8x8" in info.value.message and str(list(shape)) in info.value.message


def test_mask_is_mapped_back_through_pad_geometry():
    # a 4x8 image padded into 8x8 at row offset 2: the model marks model pixels (3..4, 2..5)
    logits = np.full((1, 1, 8, 8), -5.0, dtype=np.float32)
    logits[0, 0, 3:5, 2:6] = 5.0
    answer = postprocess.segment(logits, output("sigmoid", "threshold", ["x"]), image_input("NCHW"),
                                 Geometry((4, 8), (4, 8), (2, 0), (8, 8)))
    mask = decoded(answer["mask"])
    assert mask.shape == (4, 8)
    assert answer["classes"][0]["bbox"] == [2, 1, 5, 2] and answer["classes"][0]["pixels"] == 8


def test_mask_is_mapped_back_through_stretch_geometry():
    logits = np.full((1, 1, 2, 2), -5.0, dtype=np.float32)
    logits[0, 0, 1, 1] = 5.0
    answer = postprocess.segment(logits, output("sigmoid", "threshold", ["x"]), image_input("NCHW"),
                                 Geometry((10, 20), (2, 2), (0, 0), (2, 2)))
    assert (answer["mask"]["width"], answer["mask"]["height"]) == (20, 10)
    assert answer["classes"][0] == {"index": 1, "label": "x", "pixels": 50, "fraction": 0.25, "bbox": [10, 5, 19, 9]}


def test_png_round_trip():
    mask = np.random.default_rng(0).integers(0, 7, (5, 9), dtype=np.int64)
    data = base64.b64decode(postprocess.png(mask))
    np.testing.assert_array_equal(np.asarray(PILImage.open(io.BytesIO(data))), mask)
