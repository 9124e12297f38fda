"""Pickle the demo scikit-learn digits classifier for `onnxfn bench --sklearn` (dev extra).

    python bench/export_sklearn.py [OUT]     (from the repo root; default bench/.cache/digits-sklearn.pkl)

models/train/digits_sklearn.py keeps no pickle, only model.onnx; this refits the same
LogisticRegression (C=10, same split, same seed) and checks that its predict_proba on the held-out
digits equals the one saved at training time (models/data/digits-sklearn-proba.npy), so the pickle
is the model the bundle was converted from.
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from models.train._digits import load_split, png8_to_input
    from models.train.digits_sklearn import fit

    out = Path(argv[1]) if len(argv) > 1 else ROOT / "bench" / ".cache" / "digits-sklearn.pkl"
    np.random.seed(0)
    img_tr, img_te, y_tr, _ = load_split()
    clf = fit(img_tr, y_tr)
    proba = clf.predict_proba(png8_to_input(img_te).reshape(-1, 64))
    saved = np.load(ROOT / "models" / "data" / "digits-sklearn-proba.npy")
    diff = float(np.abs(proba - saved).max())
    print(f"max |predict_proba - saved| = {diff:.3g}")
    if diff > 1e-6:
        print("ERROR: the refit model differs from the one the bundle was made from", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pickle.dumps(clf))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
