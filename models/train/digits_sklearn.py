"""Train a scikit-learn classifier on the 8x8 digits and convert it with skl2onnx.

    python -m models.train.digits_sklearn      (from the repo root)

Same split and scaling as digits_torch (X = round(v * 255 / 16) / 255), flattened.

Input   "input"         float32 [N, 64]
Outputs "label"         int64   [N]
        "probabilities" float32 [N, 10]   (zipmap disabled)

Writes
    models/digits-sklearn/model.onnx
    models/data/digits-sklearn-proba.npy   float32 [n,10], predict_proba on the held-out set (float32 in -> float32 out)
(the held-out set itself is models/data/digits-heldout.npz, written by digits_torch;
this script writes it too if missing -- it is the same split.)
"""

from __future__ import annotations

import os
import time

import numpy as np

from models.train._digits import check_onnx, load_split, png8_to_input
from models.train._export import describe_io, ort_session, save_checked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONNX_PATH = os.path.join(ROOT, "digits-sklearn", "model.onnx")
HELDOUT_PATH = os.path.join(ROOT, "data", "digits-heldout.npz")
PROBA_PATH = os.path.join(ROOT, "data", "digits-sklearn-proba.npy")
OPSET = 17


def fit(img_tr: np.ndarray, y_tr: np.ndarray):
    """The classifier the bundle is converted from: logistic regression on the flattened, scaled digits
    (the same fit for the training script, bench/export_sklearn.py and bench/frameworks.py)."""
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=10.0, max_iter=5000, random_state=0).fit(png8_to_input(img_tr).reshape(-1, 64), y_tr)


def main() -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType


    t0 = time.time()
    np.random.seed(0)
    img_tr, img_te, y_tr, y_te = load_split()
    x_te = png8_to_input(img_te).reshape(len(img_te), 64)

    clf = fit(img_tr, y_tr)
    train_s = time.time() - t0
    proba = clf.predict_proba(x_te)
    skl_acc = float((clf.predict(x_te) == y_te).mean())

    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        final_types=None,
    )
    save_checked(onx, ONNX_PATH, inputs=("input",), outputs=("label", "probabilities"))

    max_diff, ort_acc = check_onnx(ONNX_PATH, x_te, y_te, proba, max_diff=1e-5, input_name="input",
                                   output_name="probabilities")
    sess = ort_session(ONNX_PATH)  # the label output: int64, the probabilities' argmax, one per image
    label, oproba = sess.run(["label", "probabilities"], {"input": x_te})
    assert label.dtype == np.int64 and oproba.dtype == np.float32
    assert np.array_equal(label, oproba.argmax(1))
    for bs in (1, 5):
        assert sess.run(["label"], {"input": x_te[:bs]})[0].shape == (bs,)

    os.makedirs(os.path.dirname(PROBA_PATH), exist_ok=True)
    np.save(PROBA_PATH, proba)
    if not os.path.exists(HELDOUT_PATH):
        np.savez(HELDOUT_PATH, images=img_te.astype(np.uint8), labels=y_te.astype(np.int64))
    else:
        h = np.load(HELDOUT_PATH)
        assert np.array_equal(h["images"], img_te) and np.array_equal(h["labels"], y_te)

    print(describe_io(ONNX_PATH))
    print(f"classifier {clf!r}")
    print(f"held-out n={len(y_te)}  sklearn acc={skl_acc:.4f}  onnxruntime acc={ort_acc:.4f}")
    print(f"max |onnxruntime proba - predict_proba| = {max_diff:.3g}")
    print(f"train {train_s:.1f}s  total {time.time() - t0:.1f}s")
    print(f"wrote {ONNX_PATH} ({os.path.getsize(ONNX_PATH)} bytes)")
    print(f"wrote {PROBA_PATH}")


if __name__ == "__main__":
    main()
