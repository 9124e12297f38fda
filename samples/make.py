"""Write the bundled samples (run from the repo root: `python -m samples.make`):
a held-out digit as PNG, and a held-out CT phantom as DICOM and as 16-bit PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.train import phantoms

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHANTOM_SEED = 900001  # outside the training seeds


def main() -> None:
    from PIL import Image
    held = np.load(ROOT / "models" / "data" / "digits-heldout.npz")
    index = int(np.flatnonzero(held["labels"] == 7)[0])
    Image.fromarray(held["images"][index]).save(HERE / "digit-7.png")
    hu, _ = phantoms.make_phantom(PHANTOM_SEED, (192, 160))
    phantoms.write_dicom(HERE / "phantom.dcm", hu, seed=PHANTOM_SEED)
    phantoms.write_png16(HERE / "phantom.png", hu)
    for name in ("digit-7.png", "phantom.dcm", "phantom.png"):
        print(HERE / name, (HERE / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
