"""`onnxfn package`: bundles from bare ONNX models."""
from __future__ import annotations

import json

import pytest

from tests.support.models import adder, identity_segmenter, linear_classifier
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
