"""`onnxfn prove`: a bundle's ONNX model against its source framework's saved outputs."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest

from tests.support.models import linear_classifier
from onnxfn.bundles import bundle as bundles
from onnxfn.tools.cli import main
from onnxfn.errors import BadRequest
from onnxfn.tools.package import Options, build
from onnxfn.tools.proof import check, prove

N = 40


@pytest.fixture
def case(tmp_path):
    """A linear classifier bundle (NCHW [N,1,8,8] -> logits [N,10]), inputs, and the 'framework's'
    outputs: the same product computed by numpy, off by a little float noise."""
    model = linear_classifier(tmp_path / "linear.onnx")
    root = build(model, tmp_path / "bundle", Options(name="linear", task="classification", activation="softmax",
                                                     labels=[str(i) for i in range(10)])).root
    weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)  # as linear_classifier makes it
    x = np.random.default_rng(1).random((N, 1, 8, 8), dtype=np.float32)
    y = (x.reshape(N, 64).astype(np.float64) @ weights.astype(np.float64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return root, tmp_path / "x.npy", tmp_path / "y.npy", y


def _prove(root, x, y, *extra) -> int:
    return main(["prove", str(root), "--inputs", str(x), "--outputs", str(y), "--framework", "numpy 2", *extra])


def test_success_records_the_proof_in_the_manifest(case, capsys):
    root, x, y, _ = case
    before = bundles.load(root)
    assert _prove(root, x, y) == 0
    printed = json.loads(capsys.readouterr().out)["proof"]
    after = bundles.load(root)  # loads and verifies every artifact
    proof = after.manifest.extra["proof"]
    assert proof == printed
    assert proof["framework"] == "numpy 2" and proof["samples"] == N
    assert proof["inputs_sha256"] == bundles.sha256_file(x) and proof["outputs_sha256"] == bundles.sha256_file(y)
    assert 0 <= proof["max_abs_diff"] <= 1e-4 and proof["argmax_agreement"] == 1.0
    assert proof["onnxruntime"] == onnxruntime.__version__ and proof["output"] == "logits"
    assert proof["model_sha256"] == before.manifest.portable.sha256
    assert after.manifest == before.manifest  # nothing else changed
    assert (root / "model.onnx").read_bytes() == (root.parent / "linear.onnx").read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "model.onnx"]  # no temporary left


def test_proving_again_replaces_the_proof_and_keeps_other_keys(case):
    root, x, y, _ = case
    data = json.loads((root / "manifest.json").read_text())
    data["owner"] = "imaging team"
    (root / "manifest.json").write_text(json.dumps(data))
    prove(root, x, y, "numpy 1")
    result = prove(root, x, y, "numpy 2")
    assert result.passed
    extra = bundles.load(root).manifest.extra
    assert extra["owner"] == "imaging team" and extra["proof"]["framework"] == "numpy 2"


def test_a_difference_over_the_limit_fails_and_leaves_the_bundle_untouched(case, capsys):
    root, x, y_path, y = case
    bad = y.copy()
    bad[7, 3] += 0.01
    np.save(y_path, bad)
    before = (root / "manifest.json").read_bytes()
    assert _prove(root, x, y_path) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "max abs difference 0.01 exceeds the limit 0.0001 by 0.0099" in err
    assert "[7, 3]" in err and "left unchanged" in err
    assert (root / "manifest.json").read_bytes() == before
    assert "proof" not in bundles.load(root).manifest.extra


def test_argmax_disagreement_fails_with_the_shortfall(case, capsys):
    root, x, y_path, y = case
    bad = y.copy()
    bad[:2] = bad[:2, ::-1]  # two samples' classes reversed: 38/40 agree
    np.save(y_path, bad)
    before = (root / "manifest.json").read_bytes()
    assert _prove(root, x, y_path, "--max-abs", "1000", "--min-agreement", "0.99") == 1
    err = capsys.readouterr().err
    assert "argmax agreement 0.9500 is below the limit 0.99 by 0.0400 (2 of 40 differ; first samples [0, 1])" in err
    assert "ok   max abs difference" in err  # the other figure passed
    assert (root / "manifest.json").read_bytes() == before


def test_limits_can_be_loosened(case):
    root, x, y_path, y = case
    np.save(y_path, y + np.float32(0.001))
    assert not check(root, x, y_path, "numpy").passed
    assert check(root, x, y_path, "numpy", max_abs=0.01).passed


def test_non_finite_outputs_fail(case):
    root, x, y_path, y = case
    bad = y.copy()
    bad[3, 0] = np.nan
    np.save(y_path, bad)
    result = check(root, x, y_path, "numpy")
    assert not result.passed and "not finite" in result.failures[0] and "[3, 0]" in result.failures[0]


@pytest.mark.parametrize("make, words", [
    (lambda d, x, y: (d / "nope.npy", y), ["inputs file", "nope.npy", "does not exist"]),
    (lambda d, x, y: (x, d / "nope.npy"), ["outputs file", "nope.npy", "does not exist"]),
    (lambda d, x, y: (_save(d / "nhwc.npy", np.load(x).transpose(0, 2, 3, 1)), y),
     ["holds shape [40, 8, 8, 1]", "input 'image' takes [N, 1, 8, 8] (layout NCHW)"]),
    (lambda d, x, y: (_save(d / "flat.npy", np.load(x).reshape(N, 64)), y), ["[40, 64]", "[N, 1, 8, 8]"]),
    (lambda d, x, y: (x, _save(d / "y9.npy", np.load(y)[:, :9])), ["holds shape [40, 9]", "gives [40, 10]"]),
    (lambda d, x, y: (x, _save(d / "y30.npy", np.load(y)[:30])), ["holds 30 samples", "inputs hold 40"]),
    (lambda d, x, y: (x, _save(d / "labels.npy", np.load(y).argmax(1))), ["class axis", "not labels"]),
    (lambda d, x, y: (_save(d / "ints.npy", np.zeros((N, 1, 8, 8), np.int64)), y), ["int64", "float32"]),
    (lambda d, x, y: (_write(d / "junk.npy", b"not numpy"), y), ["junk.npy", "not a readable .npy"]),
    (lambda d, x, y: (_npz(d / "x.npz", np.load(x)), y), [".npz archive"]),
])
def test_bad_files_are_clear_errors(case, capsys, make, words):
    root, x, y, _ = case
    before = (root / "manifest.json").read_bytes()
    inputs, outputs = make(root.parent, x, y)
    assert _prove(root, inputs, outputs) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxfn prove: ") and "Traceback" not in err
    for word in words:
        assert word in err, err
    assert (root / "manifest.json").read_bytes() == before


def test_a_folder_that_is_not_a_bundle(tmp_path, case):
    _, x, y, _ = case
    with pytest.raises(BadRequest, match="not a bundle folder"):
        check(tmp_path / "empty", x, y, "numpy")


def test_float64_inputs_are_cast_to_the_model_dtype(case):
    root, x, y, _ = case
    np.save(x, np.load(x).astype(np.float64))
    assert check(root, x, y, "numpy").passed


def _save(path, array):
    np.save(path, array)
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _npz(path, array):
    np.savez(path, x=array)
    return path
