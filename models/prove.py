"""Prove each digits bundle against its source framework (`onnxfn prove`) and record the proof in
its manifest. Run from the repo root: `python -m models.prove [NAME ...]` (models.package runs it
after repackaging a bundle, since packaging writes a fresh manifest).

The proof inputs are the 450 held-out images of models/data/digits-heldout.npz scaled as the
models were trained and the frameworks were run (pixel / 255 in float32, models/train/_digits.py),
in each model's own layout; they are written to models/data/digits-heldout-<layout>.npy. The
frameworks' outputs on them were saved by the training scripts in models/train. The versions below
are those the training scripts ran with (pyproject's dev, tf and paddle extras).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from onnxfn.tools.cli import main

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
HELDOUT = DATA / "digits-heldout.npz"

# bundle -> (input layout, the source framework's outputs on the held-out inputs, framework and version)
PROOFS = {
    "digits-cnn": ("nchw", "digits-cnn-torch-logits.npy", "pytorch 2.13.0"),
    "digits-sklearn": ("nf", "digits-sklearn-proba.npy", "scikit-learn 1.9.1"),
    "digits-keras": ("nhwc", "digits-keras-tf-logits.npy", "tensorflow 2.21.0 (keras 3.15.1)"),
    "digits-paddle": ("nchw", "digits-paddle-logits.npy", "paddlepaddle 3.3.1"),
}
SHAPES = {"nchw": lambda x: x[:, None], "nhwc": lambda x: x[..., None], "nf": lambda x: x.reshape(len(x), -1)}


def heldout_inputs(layout: str) -> Path:
    """models/data/digits-heldout-<layout>.npy: written if missing, else checked against the held-out set."""
    from models.train._digits import png8_to_input

    x = np.ascontiguousarray(SHAPES[layout](png8_to_input(np.load(HELDOUT)["images"])))
    path = DATA / f"digits-heldout-{layout}.npy"
    if path.exists():
        saved = np.load(path)
        if saved.dtype != x.dtype or not np.array_equal(saved, x):
            raise SystemExit(f"{path} differs from the held-out images in {HELDOUT}: delete it to rewrite it")
    else:
        np.save(path, x)
    return path


def prove(name: str) -> int:
    layout, outputs, framework = PROOFS[name]
    return main(["prove", str(HERE / name), "--inputs", str(heldout_inputs(layout)),
                 "--outputs", str(DATA / outputs), "--framework", framework])


if __name__ == "__main__":
    sys.exit(max(prove(name) for name in (sys.argv[1:] or PROOFS)))
