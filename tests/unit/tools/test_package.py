"""`onnxfn package`: bundles from bare ONNX models."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.models import (adder, constant_detector, constant_outputs, constant_yolo, identity_segmenter,
                                  linear_classifier)
from onnxfn.bundles import bundle as bundles
from onnxfn.tools.cli import main
from onnxfn.errors import BadRequest, BundleError
from onnxfn.tools.package import Options, build


def test_a_tensor_bundle_needs_no_options(tmp_path):
    b = build(adder(tmp_path / "adder.onnx"), tmp_path / "out", Options())
    m = b.manifest
    assert m.name == "adder" and m.task == "tensor"
    assert [(i.name, i.dtype, i.shape) for i in m.inputs] == [
        ("a", "float32", ("N", 3)), ("b", "float32", ("N", 3)), ("count", "int32", (2,))]
    assert [o.name for o in m.outputs] == ["sum", "count_out"]
    assert bundles.load(b.root).manifest == m


def test_image_options_reach_the_manifest(tmp_path):
    b = build(identity_segmenter(tmp_path / "s.onnx"), tmp_path / "out",
              Options(name="seg", task="segmentation", decision="threshold", activation="sigmoid",
                      labels=["lesion"], image={"pad_multiple": 8, "scaling": "window",
                                                "window": {"center": 40, "width": 400}}))
    spec = b.manifest.inputs[0]
    assert spec.layout == "NCHW" and spec.image.size is None and spec.image.pad_multiple == 8
    assert spec.image.window.center == 40 and b.manifest.primary_output.labels == ("lesion",)


@pytest.mark.parametrize("options, error, words", [
    (Options(task="classification", image={"size": [16, 16]}), BundleError, ["image.size", "16", "8"]),
    (Options(task="classification", labels=["a", "b"]), BundleError, ["labels", "2", "10"]),
    (Options(task="classification", output="nope"), BadRequest, ["--output", "logits"]),
    (Options(task="segmentation"), BundleError, ["decision"]),
    (Options(task="classification", image={"mean": [0.5, 0.5, 0.5]}), BundleError, ["image.mean", "1 numbers"]),
])
def test_options_that_cannot_be_honoured(tmp_path, options, error, words):
    with pytest.raises(error) as e:
        build(linear_classifier(tmp_path / "m.onnx"), tmp_path / "out", options)
    for word in words:
        assert word in e.value.message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_image_task_refuses_multi_input_models(tmp_path):
    with pytest.raises(BadRequest, match="one input"):
        build(adder(tmp_path / "a.onnx"), tmp_path / "out", Options(task="classification"))


def test_cli_package_prints_the_manifest(tmp_path, capsys):
    model = linear_classifier(tmp_path / "m.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"L{i}" for i in range(10)) + "\n")
    code = main(["package", str(model), "--out", str(tmp_path / "b"), "--task", "classification",
                 "--activation", "softmax", "--labels", f"@{labels}", "--name", "lin", "--version", "2"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "lin" and printed["version"] == "2"
    assert printed["outputs"][0]["labels"][9] == "L9"


def test_cli_package_reports_errors_without_a_traceback(tmp_path, capsys):
    assert main(["package", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "b")]) == 2
    assert "missing.onnx" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert main(["package", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "cannot load" in capsys.readouterr().err


BOXES = ([[1, 2, 3, 4], [5, 6, 7, 8]], [0.9, 0.3], [1, 2])


def test_a_post_nms_detector_is_recognised_by_its_outputs(tmp_path):
    model = constant_detector(tmp_path / "d.onnx", *BOXES, names=("scores", "labels", "boxes")[::-1])
    b = build(model, tmp_path / "out", Options(task="detection", labels=["bg", "nodule", "mass"],
                                              image={"size": [32, 32], "fit": "pad"}))
    d = b.manifest.detection
    assert (d.format, d.boxes, d.scores, d.labels) == ("boxes", "boxes", "scores", "labels")
    assert b.manifest.primary_output.name == "boxes" and b.manifest.primary_output.labels == ("bg", "nodule", "mass")
    assert bundles.load(b.root).manifest == b.manifest


def test_post_nms_outputs_with_export_names_are_told_apart_by_shape_and_dtype(tmp_path):
    model = constant_detector(tmp_path / "d.onnx", *BOXES, names=("3049", "3050", "3051"))
    b = build(model, tmp_path / "out", Options(task="detection", image={"size": [32, 32]},
                                              detection={"score_threshold": 0.5}))
    d = b.manifest.detection
    assert (d.boxes, d.scores, d.labels, d.score_threshold) == ("3049", "3050", "3051", 0.5)


def test_a_yolo_detector_and_its_options(tmp_path):
    model = constant_yolo(tmp_path / "y.onnx", np.zeros((1, 6, 10), np.float32), shape=(1, 3, 32, 32))
    b = build(model, tmp_path / "out", Options(task="detection", labels=["a", "b"], detection={
        "layout": "features_first", "iou_threshold": 0.6, "max_detections": 5}))
    d = b.manifest.detection
    assert (d.format, d.layout, d.iou_threshold, d.max_detections) == ("yolo", "features_first", 0.6, 5)
    assert b.manifest.primary_output.labels == ("a", "b")


@pytest.mark.parametrize("names, options, error, words", [
    (("b1", "b2", "l"), {}, BadRequest, ["--boxes-output"]),
    (("boxes", "scores", "labels"), {"boxes": "nope"}, BundleError, ["detection.boxes", "'nope'"]),
    (("boxes", "scores", "labels"), {"iou_threshold": 0}, BundleError, ["detection.iou_threshold"]),
])
def test_detection_options_that_cannot_be_honoured(tmp_path, names, options, error, words):
    boxes = [[1, 2, 3, 4]]
    if names[1] == "b2":  # two [N, 4] float outputs: which holds the boxes?
        model = constant_outputs(tmp_path / "d.onnx", "d", ("N", 3, "H", "W"), {
            "b1": np.float32(boxes), "b2": np.float32(boxes), "l": np.int64([1])})
    else:
        model = constant_detector(tmp_path / "d.onnx", boxes, [0.5], [1], names=names)
    with pytest.raises(error) as e:
        build(model, tmp_path / "out", Options(task="detection", image={"size": [8, 8]}, detection=options))
    for word in words:
        assert word in e.value.message


def test_a_two_output_model_needs_the_detection_format(tmp_path):
    model = constant_outputs(tmp_path / "d.onnx", "d", ("N", 3, "H", "W"), {
        "boxes": np.float32([[1, 2, 3, 4]]), "scores": np.float32([0.5])})
    with pytest.raises(BadRequest, match="--detection-format"):
        build(model, tmp_path / "out", Options(task="detection", image={"size": [8, 8]}))
    model = linear_classifier(tmp_path / "m.onnx")  # one output: taken as yolo, and its shape checked at serving
    assert build(model, tmp_path / "out", Options(task="detection")).manifest.detection.format == "yolo"


def test_cli_package_writes_the_detection_section(tmp_path, capsys):
    model = constant_yolo(tmp_path / "y.onnx", np.zeros((1, 10, 6), np.float32))
    code = main(["package", str(model), "--out", str(tmp_path / "b"), "--task", "detection", "--labels", "a,b",
                 "--size", "32x32", "--fit", "crop", "--yolo-layout", "anchors_first", "--score-threshold", "0.4",
                 "--iou-threshold", "0.6", "--max-detections", "7"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "detection" and printed["outputs"][0]["labels"] == ["a", "b"]
    assert printed["detection"] == {"format": "yolo", "layout": "anchors_first", "score_threshold": 0.4,
                                    "iou_threshold": 0.6, "max_detections": 7}


def test_zeros_that_fail_name_the_input_and_suggest_an_example(tmp_path):
    from tests.support.models import reshaper
    with pytest.raises(BundleError) as e:
        build(reshaper(tmp_path / "r.onnx"), tmp_path / "out", Options())
    assert e.value.code == "warmup_failed"
    assert "'shape'" in e.value.message and "--example" in e.value.message and "zeros" in e.value.message
    assert not (tmp_path / "out").exists()


def test_a_model_that_fails_on_zeros_packages_and_answers_with_an_example(tmp_path):
    from onnxfn.service import Service
    from onnxfn.settings import Settings
    from tests.support.models import reshaper
    np.savez(tmp_path / "ex.npz", data=np.zeros(6, dtype=np.float32), shape=np.array([3, 2]))
    b = build(reshaper(tmp_path / "r.onnx"), tmp_path / "out", Options(example=tmp_path / "ex.npz"))
    assert b.manifest.example is not None and (b.root / "example.npz").is_file()
    answer = Service(Settings(model_uri=str(b.root), threads=1)).infer({"inputs": [
        {"name": "data", "datatype": "FP32", "shape": [6], "data": list(range(6))},
        {"name": "shape", "datatype": "INT64", "shape": [2], "data": [2, 3]}]})
    assert answer.body["outputs"] == [{"name": "reshaped", "datatype": "FP32", "shape": [2, 3],
                                       "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}]


@pytest.mark.parametrize("arrays, words", [
    ({"data": np.zeros(6, np.float32)}, ["'shape'", "no array"]),
    ({"data": np.zeros(6, np.float32), "shape": np.array([2, 3]), "other": np.zeros(1)}, ["'other'"]),
    ({"data": np.zeros(6, np.float64), "shape": np.array([2, 3])}, ["'data'", "float32", "float64"]),
    ({"data": np.zeros(5, np.float32), "shape": np.array([5])}, ["'data'", "[6]", "[5]"]),
])
def test_an_example_that_does_not_fit_is_a_400_naming_the_input(tmp_path, arrays, words):
    from tests.support.models import reshaper
    np.savez(tmp_path / "ex.npz", **arrays)
    with pytest.raises(BadRequest) as e:
        build(reshaper(tmp_path / "r.onnx"), tmp_path / "out", Options(example=tmp_path / "ex.npz"))
    assert e.value.status == 400 and e.value.code == "example_invalid"
    for word in words:
        assert word in e.value.message
    (tmp_path / "raw.npy").write_bytes(b"nonsense")
    with pytest.raises(BadRequest, match="--example"):
        build(reshaper(tmp_path / "r.onnx"), tmp_path / "out", Options(example=tmp_path / "raw.npy"))


def test_the_derived_artifacts_gate_runs_on_the_example(tmp_path, monkeypatch):
    from onnxfn.tools import artifacts
    seen = []
    real = artifacts.outputs

    def spy(model, spec, inputs, output, artifact=None):
        seen.append([x.copy() for x in inputs])
        return real(model, spec, inputs, output, artifact)
    monkeypatch.setattr(artifacts, "outputs", spy)
    example = np.full((1, 1, 8, 8), 0.25, dtype=np.float32)
    np.savez(tmp_path / "ex.npz", image=example)
    b = build(linear_classifier(tmp_path / "m.onnx", shape=(1, 1, 8, 8)), tmp_path / "out",
              Options(task="classification", optimize_for=["native"], example=tmp_path / "ex.npz"))
    assert seen and all(len(inputs) == 1 and np.array_equal(inputs[0], example) for inputs in seen)
    assert any(a.kind == "optimized" for a in b.manifest.artifacts)


def test_cli_package_takes_an_example(tmp_path, capsys):
    from tests.support.models import reshaper
    np.savez(tmp_path / "ex.npz", data=np.zeros(6, dtype=np.float32), shape=np.array([2, 3]))
    assert main(["package", str(reshaper(tmp_path / "r.onnx")), "--out", str(tmp_path / "out"),
                 "--example", str(tmp_path / "ex.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["example"]["path"] == "example.npz"


def test_a_tensor_bundle_takes_images_with_image_input(tmp_path, capsys):
    from tests.support.models import image_scaler
    b = build(image_scaler(tmp_path / "s.onnx"), tmp_path / "out", Options(image_input=True))
    spec = b.manifest.inputs[0]
    assert b.manifest.task == "tensor" and spec.layout == "NCHW" and spec.image.color == "RGB"
    assert build(adder(tmp_path / "a.onnx"), tmp_path / "plain", Options()).manifest.inputs[0].image is None
    assert main(["package", str(tmp_path / "s.onnx"), "--out", str(tmp_path / "cli"), "--image-input",
                 "--size", "4x4"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"][0]["image"]["size"] == [4, 4]


def test_packaging_records_the_models_memory_cost(tmp_path):
    from tests.support.models import MODELS
    unet = build(MODELS / "lesion-unet" / "model.onnx", tmp_path / "unet",
                 Options(task="segmentation", activation="sigmoid", decision="threshold", labels=["lesion"],
                         image={"pad_multiple": 4}))
    cost = unet.manifest.memory
    assert cost.per_element > 0 and [r["shape"] for r in cost.measured] == [[1, 1, s, s] for s in (64, 128, 192)]
    assert all(cost.bytes(s * s) >= r["peak"] for s, r in zip((64, 128, 192), cost.measured))
    stored = json.loads((tmp_path / "unet" / "manifest.json").read_text())["memory"]
    assert stored["per_element"] == cost.per_element and stored["fixed"] == cost.fixed
    options = Options(task="classification", labels=[str(i) for i in range(10)])
    digits = build(MODELS / "digits-cnn" / "model.onnx", tmp_path / "digits", options)
    assert digits.manifest.memory.per_element == 0 and len(digits.manifest.memory.measured) == 1
    assert any(line.startswith("memory cost: ") for line in options.report)


def test_package_writes_tiling_and_the_memory_cost_of_a_kept_size_segmenter(tmp_path, capsys):
    import json
    from onnxfn.tools.cli import main
    from tests.support.models import MODELS
    out = tmp_path / "tiled"
    code = main(["package", str(MODELS / "lesion-unet" / "model.onnx"), "--out", str(out), "--task", "segmentation",
                 "--keep-size", "--pad-multiple", "4", "--activation", "sigmoid", "--decision", "threshold",
                 "--labels", "lesion", "--tile", "256x256", "--overlap", "0.5"])
    assert code == 0, capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["image"]["tiling"] == {"tile": [256, 256], "overlap": 0.5, "blend": "gaussian"}
    assert manifest["memory"]["per_element"] > 0  # a kept-size model's cost grows with the image
    assert main(["package", str(MODELS / "lesion-unet" / "model.onnx"), "--out", str(tmp_path / "bad"),
                 "--task", "segmentation", "--keep-size", "--pad-multiple", "4", "--decision", "threshold",
                 "--tile", "250x256"]) == 2
    assert "tiling.tile[0] is 250, not a multiple of pad_multiple 4" in capsys.readouterr().err
