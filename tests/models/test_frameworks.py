"""The same digits task trained in four frameworks (PyTorch, TensorFlow/Keras, PaddlePaddle,
scikit-learn), converted to ONNX and served by the same code: the same 450 held-out PNG digits go
to each bundle through the real fdk. Layouts differ (NCHW, NHWC, flat features) and only the
manifests absorb that. No framework is needed here: each one's outputs on the held-out set were
saved by its training script (models/train), and each bundle carries the proof of its conversion."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.models import MODELS

from tests.support.images import png
from onnxfn.bundles import bundle as bundles
from onnxfn.tools.proof import check

DATA = MODELS / "data"
HELD = np.load(DATA / "digits-heldout.npz")

# bundle, layout its manifest declares, the source framework's saved outputs, their kind, proof inputs
FRAMEWORKS = [
    ("digits-cnn", "NCHW", "digits-cnn-torch-logits.npy", "logits", "digits-heldout-nchw.npy"),
    ("digits-keras", "NHWC", "digits-keras-tf-logits.npy", "logits", "digits-heldout-nhwc.npy"),
    ("digits-paddle", "NCHW", "digits-paddle-logits.npy", "logits", "digits-heldout-nchw.npy"),
    ("digits-sklearn", "NF", "digits-sklearn-proba.npy", "proba", "digits-heldout-nf.npy"),
]
IDS = [f[0] for f in FRAMEWORKS]


def _probabilities(reference: np.ndarray, kind: str) -> np.ndarray:
    if kind == "proba":
        return reference.astype(np.float64)
    z = reference.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_held_out_set_is_the_shared_split():
    assert HELD["images"].shape == (450, 8, 8) and HELD["images"].dtype == np.uint8
    assert HELD["labels"].shape == (450,) and np.bincount(HELD["labels"]).min() >= 43  # stratified, 10 classes


@pytest.mark.parametrize("bundle, layout, reference, kind, inputs", FRAMEWORKS, ids=IDS)
def test_each_framework_through_the_function(function, bundle, layout, reference, kind, inputs):
    manifest = bundles.load(MODELS / bundle).manifest
    assert manifest.inputs[0].layout == layout
    source = np.load(DATA / reference)
    assert source.shape == (450, 10)
    expected = _probabilities(source, kind)
    fn = function({"MODEL_URI": str(MODELS / bundle)})
    predicted, worst = [], 0.0
    for i, image in enumerate(HELD["images"]):
        answer = fn.call(png(image), "image/png").json()
        top = answer["result"]["top"][0]
        predicted.append(int(top["index"]))
        value = top.get("probability", top.get("score"))
        worst = max(worst, abs(value - expected[i, top["index"]]))
    predicted = np.array(predicted)
    accuracy = float((predicted == HELD["labels"]).mean())
    agreement = float((predicted == source.argmax(axis=1)).mean())
    assert len(predicted) == 450
    assert accuracy >= 0.95, accuracy
    assert agreement >= 0.995, agreement  # the served model agrees with its source framework
    assert worst < 1e-4, worst  # and so does its top probability (answers are rounded to 6 places)


@pytest.mark.parametrize("bundle, layout, reference, kind, inputs", FRAMEWORKS, ids=IDS)
def test_each_bundle_carries_a_proof_that_still_holds(bundle, layout, reference, kind, inputs):
    loaded = bundles.load(MODELS / bundle)
    proof = loaded.manifest.extra.get("proof")
    assert proof, f"{bundle} has no proof: run python -m models.prove"
    assert proof["inputs_sha256"] == bundles.sha256_file(DATA / inputs)
    assert proof["outputs_sha256"] == bundles.sha256_file(DATA / reference)
    assert proof["model_sha256"] == loaded.manifest.portable.sha256
    assert proof["samples"] == 450 and proof["max_abs_diff"] <= 1e-4 and proof["argmax_agreement"] >= 0.995
    result = check(MODELS / bundle, DATA / inputs, DATA / reference, proof["framework"])  # writes nothing
    assert result.passed, result.report()
    assert result.proof["max_abs_diff"] == pytest.approx(proof["max_abs_diff"], rel=0.05, abs=1e-6)
    assert result.proof["argmax_agreement"] == proof["argmax_agreement"]


def test_the_proof_inputs_are_the_held_out_images_in_each_layout():
    x = HELD["images"].astype(np.float32) / np.float32(255)
    assert np.array_equal(np.load(DATA / "digits-heldout-nchw.npy"), x[:, None])
    assert np.array_equal(np.load(DATA / "digits-heldout-nhwc.npy"), x[..., None])
    assert np.array_equal(np.load(DATA / "digits-heldout-nf.npy"), x.reshape(450, 64))
