"""manifest.py: a valid manifest parses into typed specs; every invalid field is a
BundleError whose message names the field path; to_dict round-trips."""
from __future__ import annotations

import copy
import json

import pytest

from onnxfn.bundles import manifest
from onnxfn.errors import BundleError
from onnxfn.bundles.images import Window

DELETE = object()

CLASSIFIER = {
    "format": 1, "name": "chest-xray_v2.1", "version": "1.2.0", "task": "classification",
    "description": "a test classifier",
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 3, 224, 224], "layout": "NCHW",
                "image": {"color": "RGB", "fit": "pad", "resample": "bicubic", "pad_value": 0.5,
                          "scaling": "raw", "rescale": [0.5, -10], "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225], "channel_order": "BGR"}}],
    "outputs": [{"name": "logits", "activation": "softmax", "labels": ["normal", "effusion", 3]}],
    "artifacts": [{"path": "model.onnx", "sha256": "ab" * 32, "size": 1234, "kind": "portable"}],
    "provenance": {"trained": "2024-01-01"},
}

SEGMENTER = {
    "name": "lesions", "version": 3, "task": "segmentation",
    "inputs": [{"name": "ct", "dtype": "float32", "shape": [1, 1, "H", "W"], "layout": "NCHW",
                "image": {"scaling": "window", "window": {"center": 40, "width": 400}, "window_source": "file",
                          "pad_multiple": 16}}],
    "outputs": [{"name": "mask", "activation": "sigmoid", "decision": "threshold", "threshold": 0.3,
                 "labels": ["lesion"]}],
    "artifacts": [{"path": "models/unet.onnx", "sha256": "0" * 64, "size": 0}],
}

TENSOR = {
    "name": "adder", "version": "1", "task": "tensor",
    "inputs": [{"name": "a", "dtype": "float32", "shape": [-1, 3]},
               {"name": "count", "dtype": "int32", "shape": [2]}],
    "outputs": [{"name": "sum"}, {"name": "count_out"}],
    "artifacts": [{"path": "adder.onnx", "sha256": "f" * 64, "size": 10}],
}

DETECTOR = {
    "name": "nodules", "version": "1", "task": "detection",
    "inputs": [{"name": "images", "dtype": "float32", "shape": [1, 3, 640, 640], "layout": "NCHW",
                "image": {"color": "RGB", "fit": "pad", "pad_value": 0.447}}],
    "outputs": [{"name": "boxes", "labels": ["background", "nodule"]}, {"name": "scores"}, {"name": "labels"}],
    "detection": {"format": "boxes", "score_threshold": 0.5},
    "artifacts": [{"path": "model.onnx", "sha256": "1" * 64, "size": 1}],
}

YOLO = {
    "name": "fractures", "version": "1", "task": "detection",
    "inputs": [{"name": "images", "dtype": "float32", "shape": [1, 3, "H", "W"], "layout": "NCHW",
                "image": {"color": "RGB", "size": [640, 640], "fit": "pad"}}],
    "outputs": [{"name": "output0", "activation": "sigmoid", "labels": ["fracture", "cast"]}],
    "detection": {"format": "yolo", "layout": "features_first", "score_threshold": 0.25, "iou_threshold": 0.7,
                  "max_detections": 300},
    "artifacts": [{"path": "model.onnx", "sha256": "2" * 64, "size": 1}],
}

EFFUSION = {"scheme": "SCT", "value": "60046008", "meaning": "Pleural effusion",
            "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically abnormal structure"}}


def edited(base: dict, path: str, value) -> dict:
    """A copy of base with the field at a dotted path (list indices as numbers) set or deleted."""
    document = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = document
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return document


CODED = edited(CLASSIFIER, "outputs.0.codes", [None, EFFUSION, None])  # a classifier with label codes


def invalid(document) -> BundleError:
    with pytest.raises(BundleError) as info:
        manifest.parse(document)
    assert (info.value.status, info.value.code) == (500, "invalid_manifest")
    assert info.value.message.startswith("manifest field ")
    return info.value


# ------------------------------------------------------------------ valid manifests

def test_classifier_parses():
    m = manifest.parse(copy.deepcopy(CLASSIFIER))
    assert (m.name, m.version, m.task, m.format, m.description) == \
        ("chest-xray_v2.1", "1.2.0", "classification", 1, "a test classifier")
    spec = m.image_input
    assert spec is m.inputs[0] and spec.shape == ("N", 3, 224, 224) and spec.layout == "NCHW"
    assert spec.axis("C") == 1 and spec.axis("H") == 2 and spec.axis("W") == 3 and spec.axis("F") is None
    image = spec.image
    assert image.size == (224, 224)  # from the fixed input shape
    assert (image.color, image.channels, image.fit, image.resample) == ("RGB", 3, "pad", "bicubic")
    assert (image.pad_value, image.scaling, image.rescale) == (0.5, "raw", (0.5, -10.0))
    assert image.mean == (0.485, 0.456, 0.406) and image.std == (0.229, 0.224, 0.225)
    assert image.channel_order == "BGR" and image.window is None and image.pad_multiple == 1
    out = m.primary_output
    assert (out.name, out.activation, out.decision, out.threshold) == ("logits", "softmax", None, 0.5)
    assert out.labels == ("normal", "effusion", "3")
    assert m.portable == manifest.Artifact("model.onnx", "ab" * 32, 1234, "portable")
    assert m.extra == {"provenance": {"trained": "2024-01-01"}}


def test_segmenter_parses_with_defaults():
    m = manifest.parse(copy.deepcopy(SEGMENTER))
    assert m.version == "3" and m.format == 1 and m.description == ""
    image = m.image_input.image
    assert image.size is None and image.pad_multiple == 16 and image.color == "L" and image.channels == 1
    assert image.window == Window(40.0, 400.0) and image.window_source == "file"
    assert (image.fit, image.resample, image.rescale, image.mean, image.std) == ("stretch", "bilinear", (1.0, 0.0),
                                                                                 None, None)
    assert m.primary_output.decision == "threshold" and m.primary_output.threshold == 0.3


def test_tensor_model_names_dynamic_dimensions():
    m = manifest.parse(copy.deepcopy(TENSOR))
    assert m.inputs[0].shape == ("d0", 3) and m.inputs[1].shape == (2,)
    assert m.image_input is None and m.inputs[0].layout is None


def test_window_scaling_from_the_file_needs_no_manifest_window():
    document = edited(SEGMENTER, "inputs.0.image.window", DELETE)
    assert manifest.parse(document).image_input.image.window is None


def test_flat_features_input():
    document = edited(CLASSIFIER, "inputs.0", {"name": "x", "dtype": "float64", "shape": ["N", 64], "layout": "NF",
                                               "image": {"size": [8, 8]}})
    assert manifest.parse(document).image_input.image.size == (8, 8)


def test_uint8_image_input():
    document = edited(CLASSIFIER, "inputs.0.dtype", "uint8")
    assert manifest.parse(document).image_input.dtype == "uint8"


@pytest.mark.parametrize("base", [CLASSIFIER, SEGMENTER, TENSOR, DETECTOR, YOLO],
                         ids=["classifier", "segmenter", "tensor", "detector", "yolo"])
def test_to_dict_round_trips_through_json(base):
    m = manifest.parse(copy.deepcopy(base))
    data = json.loads(json.dumps(m.to_dict()))
    assert manifest.parse(data) == m
    assert manifest.parse(data).to_dict() == data
    assert all(v is not None for v in data.values())  # None fields are dropped


def test_to_dict_keeps_extra_fields_at_the_top():
    data = manifest.parse(copy.deepcopy(CLASSIFIER)).to_dict()
    assert data["provenance"] == {"trained": "2024-01-01"} and "extra" not in data
    assert data["inputs"][0]["image"]["size"] == [224, 224] and "window" not in data["inputs"][0]["image"]


def test_label_codes_and_segmentation_type_parse_and_round_trip():
    document = edited(CLASSIFIER, "outputs.0.codes", [None, EFFUSION, {"scheme": "99X", "value": "3",
                                                                     "meaning": "label three"}])
    out = manifest.parse(document).primary_output
    assert out.codes[0] is None
    assert out.codes[1] == manifest.LabelCode("SCT", "60046008", "Pleural effusion",
                                              manifest.Concept("SCT", "49755003", "Morphologically abnormal structure"))
    assert out.codes[2].category is None and out.codes[2].meaning == "label three"
    data = json.loads(json.dumps(manifest.parse(document).to_dict()))
    assert data["outputs"][0]["codes"] == document["outputs"][0]["codes"]
    assert manifest.parse(data) == manifest.parse(document)

    fractional = manifest.parse(edited(SEGMENTER, "outputs.0.segmentation_type", "fractional"))
    assert fractional.primary_output.segmentation_type == "fractional"
    assert fractional.to_dict()["outputs"][0]["segmentation_type"] == "fractional"
    plain = manifest.parse(copy.deepcopy(SEGMENTER))
    assert plain.primary_output.segmentation_type is None and plain.primary_output.codes is None
    assert "segmentation_type" not in plain.to_dict()["outputs"][0] and "codes" not in plain.to_dict()["outputs"][0]


# ------------------------------------------------------------------ invalid fields, by path

VOLUME = {
    "name": "ct-3d", "version": "1", "task": "segmentation",
    "inputs": [{"name": "ct", "dtype": "float32", "shape": [1, 1, "D", "H", "W"], "layout": "NCDHW",
                "image": {"frames": "volume", "scaling": "window", "window": {"center": 40, "width": 400}}}],
    "outputs": [{"name": "mask", "activation": "sigmoid", "decision": "threshold", "labels": ["lesion"]}],
    "artifacts": [{"path": "model.onnx", "sha256": "3" * 64, "size": 1}],
}


CASES = [
    # (base, path, value, field named in the message, words in the message)
    (CLASSIFIER, "format", 2, "format", "reads format 1"),
    (CLASSIFIER, "format", "1", "format", "must be int"),
    (CLASSIFIER, "name", DELETE, "name", "is missing"),
    (CLASSIFIER, "name", "my model", "name", "letters, digits"),
    (CLASSIFIER, "name", "-model", "name", "starting with a letter or digit"),
    (CLASSIFIER, "name", "m" * 129, "name", "1-128"),
    (CLASSIFIER, "name", "model\n", "name", "letters, digits"),
    (CLASSIFIER, "name", 5, "name", "must be str"),
    (CLASSIFIER, "version", DELETE, "version", "is missing"),
    (CLASSIFIER, "version", True, "version", "must be str or int"),
    (CLASSIFIER, "version", [1], "version", "must be str or int"),
    (CLASSIFIER, "task", "localization", "task", "one of classification, segmentation, tensor, detection"),
    (CLASSIFIER, "description", 3, "description", "must be str"),
    (CLASSIFIER, "inputs", [], "inputs", "non-empty list"),
    (CLASSIFIER, "inputs", {"name": "x"}, "inputs", "must be list"),
    (CLASSIFIER, "inputs.0", "image", "inputs[0]", "must be an object"),
    (CLASSIFIER, "inputs.0.name", DELETE, "inputs[0].name", "is missing"),
    (CLASSIFIER, "inputs.0.dtype", "float8", "inputs[0].dtype", "must be one of"),
    (CLASSIFIER, "inputs.0.dtype", "int32", "inputs[0].dtype", "cannot hold a pre-processed image"),
    (CLASSIFIER, "inputs.0.shape", DELETE, "inputs[0].shape", "is missing"),
    (CLASSIFIER, "inputs.0.shape", "N,3,224,224", "inputs[0].shape", "must be list"),
    (CLASSIFIER, "inputs.0.shape.1", 0, "inputs[0].shape[1]", "positive size, -1 or a dimension name"),
    (CLASSIFIER, "inputs.0.shape.1", -3, "inputs[0].shape[1]", "got -3"),
    (CLASSIFIER, "inputs.0.shape.0", "", "inputs[0].shape[0]", "got ''"),
    (CLASSIFIER, "inputs.0.shape.0", True, "inputs[0].shape[0]", "got True"),
    (CLASSIFIER, "inputs.0.shape.2", 22.4, "inputs[0].shape[2]", "got 22.4"),
    (CLASSIFIER, "inputs.0.layout", "NCWH", "inputs[0].layout", "must be one of NCHW, NHWC"),
    (CLASSIFIER, "inputs.0.layout", "CHW", "inputs[0].layout", "CHW has 3 axes but shape has 4"),
    (CLASSIFIER, "inputs.0.layout", DELETE, "inputs[0].layout", "is required for an image input"),
    (CLASSIFIER, "inputs.0.image", [1], "inputs[0].image", "must be an object"),
    (CLASSIFIER, "inputs.0.image.size", [224], "inputs[0].image.size", "[height, width]"),
    (CLASSIFIER, "inputs.0.image.size", [0, 224], "inputs[0].image.size", "[height, width]"),
    (CLASSIFIER, "inputs.0.image.size", [True, 224], "inputs[0].image.size", "[height, width]"),
    (CLASSIFIER, "inputs.0.image.size", "224x224", "inputs[0].image.size", "must be list"),
    (CLASSIFIER, "inputs.0.image.size", [100, 224], "inputs[0].image.size",
     "height 100 differs from the input's fixed height 224"),
    (CLASSIFIER, "inputs.0.image.size", [224, 100], "inputs[0].image.size", "width 100 differs"),
    (CLASSIFIER, "inputs.0.image.color", "CMYK", "inputs[0].image.color", "one of L, RGB"),
    (CLASSIFIER, "inputs.0.image.color", "L", "inputs[0].image.mean", "must hold 1 numbers, got 3"),
    (CLASSIFIER, "inputs.0.image.fit", "fill", "inputs[0].image.fit", "one of stretch, pad, crop"),
    (CLASSIFIER, "inputs.0.image.resample", "cubic", "inputs[0].image.resample", "one of nearest"),
    (CLASSIFIER, "inputs.0.image.pad_multiple", 0, "inputs[0].image.pad_multiple", "1 or more, got 0"),
    (CLASSIFIER, "inputs.0.image.pad_multiple", 1.5, "inputs[0].image.pad_multiple", "must be int"),
    (CLASSIFIER, "inputs.0.image.pad_value", "black", "inputs[0].image.pad_value", "must be float"),
    (CLASSIFIER, "inputs.0.image.pad_value", float("inf"), "inputs[0].image.pad_value", "finite number"),
    (CLASSIFIER, "inputs.0.image.scaling", "zscore", "inputs[0].image.scaling", "one of unit, raw, window, minmax"),
    (CLASSIFIER, "inputs.0.image.scaling", "window", "inputs[0].image.window", "required when scaling is 'window'"),
    (CLASSIFIER, "inputs.0.image.rescale", [0, 5], "inputs[0].image.rescale", "slope must not be 0"),
    (CLASSIFIER, "inputs.0.image.rescale", [1], "inputs[0].image.rescale", "must hold 2 numbers, got 1"),
    (CLASSIFIER, "inputs.0.image.rescale", [1, "0"], "inputs[0].image.rescale", "finite numbers"),
    (CLASSIFIER, "inputs.0.image.mean", [0.5], "inputs[0].image.mean", "must hold 3 numbers, got 1"),
    (CLASSIFIER, "inputs.0.image.mean", [], "inputs[0].image.mean", "non-empty list of finite numbers"),
    (CLASSIFIER, "inputs.0.image.mean", [0.5, True, 0.5], "inputs[0].image.mean", "finite numbers"),
    (CLASSIFIER, "inputs.0.image.mean", 0.5, "inputs[0].image.mean", "must be list"),
    (CLASSIFIER, "inputs.0.image.std", [0.2, 0, 0.2], "inputs[0].image.std", "must not contain 0"),
    (CLASSIFIER, "inputs.0.image.std", [0.2, 0.2], "inputs[0].image.std", "must hold 3 numbers"),
    (CLASSIFIER, "inputs.0.image.channel_order", "GBR", "inputs[0].image.channel_order", "one of RGB, BGR"),
    (CLASSIFIER, "inputs.0.image.window_source", "dicom", "inputs[0].image.window_source", "one of manifest, file"),
    (SEGMENTER, "inputs.0.image.window", [40, 400], "inputs[0].image.window", "must be an object"),
    (SEGMENTER, "inputs.0.image.window.width", 0, "inputs[0].image.window.width", "must be positive"),
    (SEGMENTER, "inputs.0.image.window.width", -5, "inputs[0].image.window.width", "must be positive"),
    (SEGMENTER, "inputs.0.image.window.center", DELETE, "inputs[0].image.window.center", "is missing"),
    (SEGMENTER, "inputs.0.image.window.center", "40", "inputs[0].image.window.center", "must be float"),
    (CLASSIFIER, "inputs.0.shape", ["N", 1, 224, 224], "inputs[0].image.color",
     "is RGB (3 channel(s)) but the input's channel dimension is 1"),
    (SEGMENTER, "inputs.0.shape", [1, "H", "W"], "inputs[0].layout", "NCHW has 4 axes but shape has 3"),
    (SEGMENTER, "inputs.0.shape", [1, 1, 256, "W"], "inputs[0].image.size",
     "required when only one of height and width is fixed"),
    (SEGMENTER, "inputs.0.layout", "NF", "inputs[0].layout", "NF has 2 axes but shape has 4"),
    (CLASSIFIER, "outputs", [], "outputs", "non-empty list"),
    (CLASSIFIER, "outputs.0", None, "outputs[0]", "must be an object, got NoneType"),
    (CLASSIFIER, "outputs.0.name", DELETE, "outputs[0].name", "is missing"),
    (CLASSIFIER, "outputs.0.activation", "relu", "outputs[0].activation", "one of none, softmax, sigmoid"),
    (CLASSIFIER, "outputs.0.decision", "vote", "outputs[0].decision", "one of argmax, threshold"),
    (CLASSIFIER, "outputs.0.threshold", 1.5, "outputs[0].threshold", "between 0 and 1 after softmax"),
    (CLASSIFIER, "outputs.0.threshold", 0, "outputs[0].threshold", "between 0 and 1"),
    (CLASSIFIER, "outputs.0.threshold", "high", "outputs[0].threshold", "must be float"),
    (CLASSIFIER, "outputs.0.labels", [], "outputs[0].labels", "non-empty list of strings"),
    (CLASSIFIER, "outputs.0.labels", ["a", 1.5], "outputs[0].labels", "non-empty list of strings"),
    (CLASSIFIER, "outputs.0.labels", ["a", True], "outputs[0].labels", "non-empty list of strings"),
    (CLASSIFIER, "outputs.0.labels", ["a", "b", "a"], "outputs[0].labels", "must not repeat"),
    (CLASSIFIER, "outputs.0.labels", "a,b", "outputs[0].labels", "must be list"),
    (CLASSIFIER, "artifacts", [], "artifacts", "non-empty list"),
    (CLASSIFIER, "artifacts.0.path", "/etc/model.onnx", "artifacts[0].path", "relative path inside the bundle"),
    (CLASSIFIER, "artifacts.0.path", "../model.onnx", "artifacts[0].path", "relative path"),
    (CLASSIFIER, "artifacts.0.path", "a//model.onnx", "artifacts[0].path", "relative path"),
    (CLASSIFIER, "artifacts.0.path", "a\\model.onnx", "artifacts[0].path", "relative path"),
    (CLASSIFIER, "artifacts.0.path", "./model.onnx", "artifacts[0].path", "relative path"),
    (CLASSIFIER, "artifacts.0.sha256", "AB" * 32, "artifacts[0].sha256", "64 lowercase hexadecimal"),
    (CLASSIFIER, "artifacts.0.sha256", "ab" * 31, "artifacts[0].sha256", "64 lowercase hexadecimal"),
    (CLASSIFIER, "artifacts.0.sha256", "ab" * 32 + "\n", "artifacts[0].sha256", "64 lowercase hexadecimal"),
    (CLASSIFIER, "artifacts.0.sha256", DELETE, "artifacts[0].sha256", "is missing"),
    (CLASSIFIER, "artifacts.0.size", -1, "artifacts[0].size", "0 or more"),
    (CLASSIFIER, "artifacts.0.size", "12", "artifacts[0].size", "must be int"),
    (CLASSIFIER, "artifacts.0.kind", "native", "artifacts[0].kind", "one of portable"),
    (CLASSIFIER, "artifacts.0.path", "model.pt", "artifacts[0].path", "must name an .onnx or .ort file"),
    (CLASSIFIER, "outputs.0.decision", "argmax", "outputs[0].decision", "applies to segmentation only"),
    (SEGMENTER, "outputs.0.decision", DELETE, "outputs[0].decision", "is required for segmentation"),
    (SEGMENTER, "inputs.0.image", None, "inputs", "exactly one input with an `image` section"),
    (TENSOR, "inputs.1.name", "a", "inputs", "repeat a"),
    (TENSOR, "outputs.1.name", "sum", "outputs", "repeat sum"),
    (TENSOR, "inputs.0.layout", "HWC", "inputs[0].layout", "HWC has 3 axes but shape has 2"),
    (DETECTOR, "detection", DELETE, "detection", "is required for detection"),
    (DETECTOR, "detection", [1], "detection", "must be an object"),
    (DETECTOR, "detection.format", DELETE, "detection.format", "is missing"),
    (DETECTOR, "detection.format", "ssd", "detection.format", "one of boxes, yolo"),
    (DETECTOR, "detection.boxes", "bboxes", "detection.boxes", "names output 'bboxes', which is not among"),
    (DETECTOR, "detection.labels", "scores", "detection", "three different outputs"),
    (DETECTOR, "detection.scores", 3, "detection.scores", "must be str"),
    (DETECTOR, "detection.layout", "anchors_first", "detection.layout", "applies to the yolo format only"),
    (DETECTOR, "detection.score_threshold", 1.5, "detection.score_threshold", "between 0 and 1, got 1.5"),
    (DETECTOR, "detection.score_threshold", -0.1, "detection.score_threshold", "between 0 and 1"),
    (DETECTOR, "detection.score_threshold", "0.5", "detection.score_threshold", "must be float"),
    (DETECTOR, "detection.score_threshold", float("nan"), "detection.score_threshold", "finite number"),
    (DETECTOR, "detection.iou_threshold", 0, "detection.iou_threshold", "above 0 and at most 1, got 0.0"),
    (DETECTOR, "detection.iou_threshold", 1.01, "detection.iou_threshold", "at most 1"),
    (DETECTOR, "detection.max_detections", 0, "detection.max_detections", "between 1 and 10000, got 0"),
    (DETECTOR, "detection.max_detections", 10001, "detection.max_detections", "between 1 and 10000"),
    (DETECTOR, "detection.max_detections", 1.5, "detection.max_detections", "must be int"),
    (DETECTOR, "detection.max_detections", True, "detection.max_detections", "must be int"),
    (DETECTOR, "outputs.0.decision", "argmax", "outputs[0].decision", "applies to segmentation only"),
    (DETECTOR, "outputs.1.activation", "sigmoid", "outputs[1].activation", "post-NMS scores are final"),
    (DETECTOR, "outputs.2.labels", ["a"], "outputs[2].labels", "belong on the first output"),
    (DETECTOR, "inputs.0.image", None, "inputs", "exactly one input with an `image` section"),
    (YOLO, "detection.boxes", "output0", "detection.boxes", "a yolo detector reads its first output"),
    (YOLO, "detection.layout", "rows", "detection.layout", "one of auto, features_first, anchors_first"),
    (YOLO, "outputs.0.activation", "softmax", "outputs[0].activation", "none or sigmoid"),
    (CLASSIFIER, "detection", {"format": "yolo"}, "detection", "applies to the detection task only"),
    (CLASSIFIER, "outputs.0.codes", [None], "outputs[0].codes", "one entry per label (3 labels), got 1"),
    (CODED, "outputs.0.labels", DELETE, "outputs[0].codes", "one entry per label (0 labels)"),
    (CLASSIFIER, "outputs.0.codes", "SCT", "outputs[0].codes", "must be list"),
    (CODED, "outputs.0.codes", [None, 5, None], "outputs[0].codes[1]", "must be an object"),
    (CODED, "outputs.0.codes.1", {"scheme": "SCT", "value": "1"}, "outputs[0].codes[1].meaning", "is missing"),
    (CODED, "outputs.0.codes.1.scheme", "", "outputs[0].codes[1].scheme", "1-16 printable characters"),
    (CODED, "outputs.0.codes.1.scheme", "S" * 17, "outputs[0].codes[1].scheme", "1-16 printable"),
    (CODED, "outputs.0.codes.1.value", 60046000, "outputs[0].codes[1].value", "must be str, got int"),
    (CODED, "outputs.0.codes.1.meaning", "a\\b", "outputs[0].codes[1].meaning", "without a backslash"),
    (CODED, "outputs.0.codes.1.meaning", "m" * 65, "outputs[0].codes[1].meaning", "1-64 printable"),
    (CODED, "outputs.0.codes.1.category", {"scheme": "SCT", "value": "1"},
     "outputs[0].codes[1].category.meaning", "is missing"),
    (CODED, "outputs.0.codes.1.category", "tissue", "outputs[0].codes[1].category", "must be an object"),
    (SEGMENTER, "outputs.0.segmentation_type", "labelmap", "outputs[0].segmentation_type",
     "one of binary, fractional"),
    (CLASSIFIER, "outputs.0.segmentation_type", "binary", "outputs[0].segmentation_type",
     "a segmentation model's first output only"),
    # multi-frame inputs: frames, layout, depth
    (CLASSIFIER, "inputs.0.image.frames", "all", "inputs[0].image.frames", "one of first, each, volume"),
    (CLASSIFIER, "inputs.0.image.frames", 2, "inputs[0].image.frames", "must be str"),
    (CLASSIFIER, "inputs.0.image.frames", "volume", "inputs[0].layout", "NCHW, which has no depth axis"),
    (VOLUME, "inputs.0.image.frames", "each", "inputs[0].image.frames", "must be volume for layout NCDHW"),
    (VOLUME, "inputs.0.image.frames", DELETE, "inputs[0].image.frames", "must be volume for layout NCDHW"),
    (VOLUME, "inputs.0.shape", [1, 1, "H", "W"], "inputs[0].layout", "NCDHW has 5 axes but shape has 4"),
    (VOLUME, "inputs.0.image.tiling", {"tile": [64, 64]}, "inputs[0].image.tiling", "runs the whole volume"),
    (DETECTOR, "inputs.0.image.frames", "each", "inputs[0].image.frames",
     "each applies to classification and segmentation models; this is a detection model"),
    (edited(TENSOR, "inputs.0", {"name": "a", "dtype": "float32", "shape": [1, 3, "H", "W"], "layout": "NCHW",
                                 "image": {"color": "RGB"}}),
     "inputs.0.image.frames", "each", "inputs[0].image.frames", "this is a tensor model"),
]


@pytest.mark.parametrize("base,path,value,field,words", CASES,
                         ids=[f"{c[1]}={c[2]!r}"[:60] for c in CASES])
def test_invalid_field_is_named(base, path, value, field, words):
    error = invalid(edited(base, path, value))
    assert error.message.startswith(f"manifest field {field} "), error.message
    assert words in error.message, error.message


def test_root_must_be_an_object():
    assert invalid([CLASSIFIER]).message == "manifest field root must be an object, got list"


def test_two_image_inputs_for_a_classifier():
    document = copy.deepcopy(CLASSIFIER)
    document["inputs"].append(dict(document["inputs"][0], name="second"))
    assert "exactly one input" in invalid(document).message


def test_duplicate_artifact_paths():
    document = copy.deepcopy(CLASSIFIER)
    document["artifacts"].append(dict(document["artifacts"][0]))
    assert invalid(document).message.startswith("manifest field artifacts repeat model.onnx")


def test_segmentation_cannot_use_flat_features():
    document = edited(SEGMENTER, "inputs.0", {"name": "x", "dtype": "float32", "shape": ["N", 64], "layout": "NF",
                                              "image": {"size": [8, 8]}})
    assert invalid(document).message.startswith("manifest field inputs[0].layout NF cannot carry")


def test_flat_features_need_a_size_matching_the_input():
    document = edited(CLASSIFIER, "inputs.0", {"name": "x", "dtype": "float32", "shape": ["N", 64], "layout": "NF",
                                               "image": {}})
    assert invalid(document).message.startswith("manifest field inputs[0].image.size is required with layout NF")
    document["inputs"][0]["image"] = {"size": [8, 9]}
    error = invalid(document)
    assert error.message.startswith("manifest field inputs[0].image.size 8x9x1 = 72 features, but the input takes 64")


def test_rgb_needs_a_channel_axis():
    document = edited(CLASSIFIER, "inputs.0", {"name": "x", "dtype": "float32", "shape": ["N", "H", "W"],
                                               "layout": "NHW", "image": {"color": "RGB"}})
    assert invalid(document).message.startswith("manifest field inputs[0].image.color must be L: layout NHW")


def test_threshold_outside_0_1_is_fine_without_activation():
    document = edited(SEGMENTER, "outputs.0.activation", "none")
    document["outputs"][0]["threshold"] = 2.5
    assert manifest.parse(document).primary_output.threshold == 2.5


def test_detector_parses_with_torchvision_output_names_and_defaults():
    m = manifest.parse(edited(DETECTOR, "detection", {"format": "boxes"}))
    d = m.detection
    assert (d.format, d.boxes, d.scores, d.labels, d.layout) == ("boxes", "boxes", "scores", "labels", "auto")
    assert (d.score_threshold, d.iou_threshold, d.max_detections) == (0.25, 0.45, 100)
    assert m.primary_output.labels == ("background", "nodule")
    assert "detection" not in manifest.parse(copy.deepcopy(CLASSIFIER)).to_dict()


def test_yolo_detector_parses_without_labels():
    m = manifest.parse(edited(YOLO, "outputs.0.labels", DELETE))
    assert m.detection.format == "yolo" and m.detection.boxes is None and m.primary_output.labels is None
    assert m.detection.layout == "features_first" and m.detection.max_detections == 300
    assert manifest.parse(edited(YOLO, "detection.score_threshold", 0)).detection.score_threshold == 0.0
    assert manifest.parse(edited(YOLO, "detection.iou_threshold", 1)).detection.iou_threshold == 1.0


# ------------------------------------------------------------------ multi-frame images: `frames`



def test_frames_is_none_unless_the_manifest_says_and_round_trips():
    assert manifest.parse(copy.deepcopy(SEGMENTER)).image_input.image.frames is None
    assert "frames" not in manifest.parse(copy.deepcopy(SEGMENTER)).to_dict()["inputs"][0]["image"]
    for frames in ("first", "each"):
        m = manifest.parse(edited(CLASSIFIER, "inputs.0.image.frames", frames))
        assert m.image_input.image.frames == frames
        assert manifest.parse(json.loads(json.dumps(m.to_dict()))) == m


def test_a_volume_takes_ncdhw_or_ndhwc_with_a_depth_dimension():
    m = manifest.parse(copy.deepcopy(VOLUME))
    spec = m.image_input
    assert (spec.image.frames, spec.axis("D"), spec.axis("H"), spec.image.size) == ("volume", 2, 3, None)
    channels_last = edited(edited(VOLUME, "inputs.0.layout", "NDHWC"), "inputs.0.shape", [1, 8, 64, 64, 1])
    fixed = manifest.parse(channels_last).image_input
    assert (fixed.axis("D"), fixed.image.size, fixed.shape[1]) == (1, (64, 64), 8)
    assert manifest.parse(json.loads(json.dumps(manifest.parse(channels_last).to_dict()))).image_input == fixed
    classifier = edited(edited(VOLUME, "task", "classification"), "outputs.0",
                        {"name": "logits", "activation": "softmax", "labels": ["a", "b"]})
    assert manifest.parse(classifier).task == "classification"


def test_a_tensor_model_may_take_a_volume():
    document = edited(edited(TENSOR, "inputs", [{"name": "a", "dtype": "float32", "shape": [1, 1, "D", 8, 8],
                                                "layout": "NCDHW", "image": {"frames": "volume"}}]),
                      "outputs", [{"name": "sum"}])
    assert manifest.parse(document).inputs[0].image.size == (8, 8)
