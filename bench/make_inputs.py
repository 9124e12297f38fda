"""Model inputs for `onnxfn bench --inputs` and `onnxfn package --calibration` (numpy only).

    python bench/make_inputs.py            (from the repo root; writes bench/.cache/inputs/*.npy)

CT phantoms (models/train/phantoms.py, windowed 40/400 to [0, 1] as the lesion bundle's
pre-processing does) at the sizes the benchmarked models take, [N, 1, H, W] float32:

    phantoms-224-calib.npy   32 phantoms, 224x224 (seeds 200000..)  DenseNet-121 int8 calibration
    phantoms-224-eval.npy    16 phantoms, 224x224 (seeds 300000..)  DenseNet-121 bench inputs / accuracy
    phantoms-256-calib.npy   32 phantoms, 256x256                    U-Nets' int8 calibration
    phantoms-256-eval.npy    16 phantoms, 256x256                    U-Nets' bench inputs / accuracy
    digits-calib.npy         the first 120 held-out digits (models/data/digits-heldout-nchw.npy)

Calibration and evaluation inputs never overlap.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / ".cache" / "inputs"


def phantoms(first_seed: int, count: int, size: int) -> np.ndarray:
    sys.path.insert(0, str(ROOT))
    from models.train.phantoms import make_phantom, window
    return np.stack([window(make_phantom(first_seed + i, (size, size))[0].astype(np.float32))[None]
                     for i in range(count)]).astype(np.float32)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for size in (224, 256):
        np.save(OUT / f"phantoms-{size}-calib.npy", phantoms(200000, 32, size))
        np.save(OUT / f"phantoms-{size}-eval.npy", phantoms(300000, 16, size))
    digits = np.load(ROOT / "models" / "data" / "digits-heldout-nchw.npy") if \
        (ROOT / "models" / "data" / "digits-heldout-nchw.npy").exists() else None
    if digits is not None:
        np.save(OUT / "digits-calib.npy", digits[:120])
    for path in sorted(OUT.glob("*.npy")):
        array = np.load(path)
        print(f"{path.relative_to(ROOT)}: {array.dtype} {list(array.shape)} range [{array.min():.3g}, {array.max():.3g}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
