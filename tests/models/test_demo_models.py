"""The demo models through the whole function path (real fdk, real decoding): these
catch any pre-processing mistake. Held-out data never seen in training."""
from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.models import MODELS

from tests.support.images import png
from models.train import phantoms

HELD = np.load(MODELS / "data" / "digits-heldout.npz")


@pytest.mark.parametrize("bundle, reference", [("digits-cnn", "digits-cnn-torch-logits.npy"),
                                               ("digits-sklearn", "digits-sklearn-proba.npy")])
def test_digits_accuracy_through_the_function(function, bundle, reference):
    fn = function({"MODEL_URI": str(MODELS / bundle)})
    source = np.load(MODELS / "data" / reference).argmax(axis=1)
    predicted = []
    for image in HELD["images"]:
        answer = fn.call(png(image), "image/png").json()
        predicted.append(int(answer["result"]["top"][0]["index"]))
    predicted = np.array(predicted)
    accuracy = float((predicted == HELD["labels"]).mean())
    agreement = float((predicted == source).mean())
    assert len(predicted) == 450
    assert accuracy >= 0.95, accuracy
    assert agreement >= 0.995, agreement  # the served model agrees with its source framework


def _dice(masks, truths) -> float:
    inter = sum(int(np.logical_and(m, t).sum()) for m, t in zip(masks, truths))
    total = sum(int(m.sum()) + int(t.sum()) for m, t in zip(masks, truths))
    return 2 * inter / total


def _mask(answer) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["result"]["mask"]["data"])))) > 0


SIZES = [(128, 128), (96, 160), (200, 152), (130, 101), (90, 118), (256, 256)]


def test_lesion_dice_on_dicom_through_the_gateway(function):
    fn = function({"MODEL_URI": str(MODELS / "lesion-unet")})
    masks, truths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(30):
            seed, size = 100000 + i, SIZES[i % len(SIZES)]
            hu, truth = phantoms.make_phantom(seed, size)
            path = Path(tmp) / f"{seed}.dcm"
            phantoms.write_dicom(path, hu, seed=seed)
            reply = fn.call(path.read_bytes(), "application/dicom", method="POST", url="/predict")
            assert reply.http_status == 200, reply.body
            answer = reply.json()
            mask = _mask(answer)
            assert mask.shape == size  # the mask comes back at the image's own size
            lesion = answer["result"]["classes"][0]
            assert lesion["label"] == "lesion" and lesion["pixels"] == int(mask.sum())
            masks.append(mask)
            truths.append(truth > 0)
    assert _dice(masks, truths) >= 0.90


def test_lesion_dice_on_16bit_png(function):
    fn = function({"MODEL_URI": str(MODELS / "lesion-unet")})
    masks, truths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(10):
            seed, size = 100100 + i, SIZES[i % len(SIZES)]
            hu, truth = phantoms.make_phantom(seed, size)
            path = Path(tmp) / f"{seed}.png"
            phantoms.write_png16(path, hu)
            answer = fn.call(path.read_bytes(), "image/png").json()
            assert answer["image"]["bits"] == 16
            masks.append(_mask(answer))
            truths.append(truth > 0)
    assert _dice(masks, truths) >= 0.90


def test_dicom_and_png_of_the_same_phantom_give_the_same_mask(function):
    fn = function({"MODEL_URI": str(MODELS / "lesion-unet")})
    hu, _ = phantoms.make_phantom(100200, (120, 136))
    with tempfile.TemporaryDirectory() as tmp:
        phantoms.write_dicom(Path(tmp) / "a.dcm", hu)
        phantoms.write_png16(Path(tmp) / "a.png", hu)
        a = _mask(fn.call((Path(tmp) / "a.dcm").read_bytes(), "application/dicom").json())
        b = _mask(fn.call((Path(tmp) / "a.png").read_bytes()).json())  # sniffed, no content type
    assert a.any() and np.array_equal(a, b)
