"""Package the demo models into bundles with `onnxfn package` (run from the repo root:
`python -m models.package`). The training scripts in models/train write each model.onnx;
the digits bundles are then proven against their source frameworks (models/prove.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from models.prove import PROOFS, prove
from onnxfn.tools.cli import main

HERE = Path(__file__).resolve().parent
DIGITS = ",".join(str(d) for d in range(10))

BUNDLES = {
    "digits-cnn": ["--task", "classification", "--version", "1.0.0", "--activation", "softmax",
                   "--labels", DIGITS, "--scaling", "unit",
                   "--description", "Handwritten digit classifier (PyTorch CNN) on scikit-learn's digits, "
                                    "8x8 grey images"],
    "digits-sklearn": ["--task", "classification", "--version", "1.0.0", "--layout", "NF", "--size", "8x8",
                       "--output", "probabilities", "--labels", DIGITS, "--scaling", "unit",
                       "--description", "Handwritten digit classifier (scikit-learn logistic regression, "
                                        "skl2onnx), 8x8 grey images flattened to 64 features"],
    "digits-keras": ["--task", "classification", "--version", "1.0.0", "--layout", "NHWC", "--activation", "softmax",
                     "--labels", DIGITS, "--scaling", "unit",
                     "--description", "Handwritten digit classifier (Keras CNN, tf2onnx) on scikit-learn's digits, "
                                      "8x8 grey images, channels last"],
    "digits-paddle": ["--task", "classification", "--version", "1.0.0", "--layout", "NCHW", "--activation", "softmax",
                      "--labels", DIGITS, "--scaling", "unit",
                      "--description", "Handwritten digit classifier (PaddlePaddle CNN, paddle2onnx) on "
                                       "scikit-learn's digits, 8x8 grey images"],
    "lesion-unet": ["--task", "segmentation", "--version", "1.0.0", "--keep-size", "--pad-multiple", "4",
                    "--scaling", "window", "--window", "40,400", "--rescale", "1,-1024",
                    "--activation", "sigmoid", "--decision", "threshold", "--labels", "lesion",
                    "--description", "Lesion segmentation (2D U-Net) on synthetic CT phantoms; CT in HU "
                                     "(DICOM, or 16-bit PNG of HU+1024), any size"],
}


def package(name: str) -> int:
    model = HERE / name / "model.onnx"
    code = main(["package", str(model), "--out", str(HERE / name), "--name", name, "--force", *BUNDLES[name]])
    if code == 0 and name in PROOFS:  # packaging writes a fresh manifest: prove the model against its source again
        code = prove(name)
    return code


if __name__ == "__main__":
    sys.exit(max(package(name) for name in (sys.argv[1:] or BUNDLES)))
