"""Deterministic synthetic CT-like phantoms (numpy only) and DICOM / PNG writers.

``make_phantom(seed, size)`` returns ``(hu, mask)``:

* ``hu``   int16 HxW Hounsfield units, clipped to [-1024, 3071] so that
  ``hu + 1024`` fits in 12 unsigned bits;
* ``mask`` uint8 HxW, 1 = lesion, 0 = everything else.

Anatomy (all geometry scales with H and W, lesion radii with min(H, W)/128):

* air background            -1000 HU
* body ellipse               -100 HU subcutaneous fat rim
* inner soft tissue           +40 HU
* organ ellipses              +60 HU (liver-like), +25 HU, -100 HU (fat)
* vertebra (posterior)       +700 HU cortical ring around a +250 HU body
* 1-3 lesion ellipses        +120..+160 HU, semi-axes 5..18 px at 128 px,
  always inside the inner soft tissue and away from bone
* light 3x3 [1,2,1] blur (partial volume), then Gaussian noise sigma 10..15 HU

The mask is the union of the lesion ellipses as drawn (before blur and noise).
Everything comes from ``np.random.default_rng(seed)``, so a seed and size give
bit-identical output on every machine.
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np

AIR_HU = -1000
HU_MIN = -1024
HU_MAX = 3071
WINDOW_CENTER = 40.0
WINDOW_WIDTH = 400.0

__all__ = [
    "make_phantom",
    "window",
    "write_dicom",
    "write_png16",
    "AIR_HU",
    "WINDOW_CENTER",
    "WINDOW_WIDTH",
]


def _ellipse(shape, cy, cx, ry, rx, angle=0.0):
    """Boolean mask of a (rotated) ellipse; centre / radii in pixels.

    Only the ellipse's bounding box is evaluated (speed); the result is the same
    as evaluating every pixel.
    """
    h, w = shape
    out = np.zeros(shape, dtype=bool)
    r = max(ry, rx) + 1.0
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, h)
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return out
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - cx
    c, s = np.cos(angle), np.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    out[y0:y1, x0:x1] = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return out


def _blur121(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication."""
    p = np.pad(img, 1, mode="edge")
    v = (p[:-2, :] + 2.0 * p[1:-1, :] + p[2:, :]) * 0.25
    return (v[:, :-2] + 2.0 * v[:, 1:-1] + v[:, 2:]) * 0.25


def window(hu, center: float = WINDOW_CENTER, width: float = WINDOW_WIDTH) -> np.ndarray:
    """Soft-tissue window to [0, 1] float32: clip((hu - (c - w/2)) / w, 0, 1)."""
    hu = np.asarray(hu, dtype=np.float32)
    lo = np.float32(center - width / 2.0)
    return np.clip((hu - lo) / np.float32(width), 0.0, 1.0).astype(np.float32)


def make_phantom(seed: int, size: Tuple[int, int] = (128, 128)) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(hu int16 HxW, mask uint8 HxW)`` for ``seed`` at ``size=(H, W)``."""
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"phantom size must be at least 32x32, got {h}x{w}")
    rng = np.random.default_rng(int(seed))
    shape = (h, w)
    scale = min(h, w) / 128.0

    img = np.full(shape, float(AIR_HU), dtype=np.float64)

    # Body: outer ellipse (fat rim) and inner soft-tissue ellipse.
    cy = h * (0.5 + rng.uniform(-0.03, 0.03))
    cx = w * (0.5 + rng.uniform(-0.03, 0.03))
    by = h * rng.uniform(0.36, 0.44)
    bx = w * rng.uniform(0.40, 0.46)
    body = _ellipse(shape, cy, cx, by, bx)
    img[body] = -100.0
    rim = rng.uniform(0.05, 0.09)
    iby, ibx = by * (1 - rim), bx * (1 - rim)
    inner = _ellipse(shape, cy, cx, iby, ibx)
    img[inner] = 40.0

    # Organs inside the inner ellipse.
    organ_specs = [(60.0, 0.30, 0.45), (25.0, 0.15, 0.25), (-100.0, 0.10, 0.20)]
    for hu_val, rmin, rmax in organ_specs:
        if hu_val == -100.0 and rng.uniform() < 0.3:
            continue
        oy = cy + rng.uniform(-0.35, 0.2) * iby
        ox = cx + rng.uniform(-0.45, 0.45) * ibx
        ry = iby * rng.uniform(rmin, rmax)
        rx = ibx * rng.uniform(rmin, rmax)
        org = _ellipse(shape, oy, ox, ry, rx, rng.uniform(0, np.pi)) & inner
        img[org] = hu_val

    # Vertebra: cortical ring around a cancellous body, posterior (image bottom).
    vy = cy + iby * rng.uniform(0.55, 0.68)
    vx = cx + ibx * rng.uniform(-0.05, 0.05)
    vry = iby * rng.uniform(0.12, 0.16)
    vrx = ibx * rng.uniform(0.12, 0.16)
    bone_outer = _ellipse(shape, vy, vx, vry, vrx) & inner
    bone_inner = _ellipse(shape, vy, vx, vry * 0.65, vrx * 0.65)
    img[bone_outer] = 700.0
    img[bone_outer & bone_inner] = 250.0
    # Keep-out zone for lesions: bone plus a margin.
    keep_out = _ellipse(shape, vy, vx, vry + 4 * scale, vrx + 4 * scale)

    # Lesions (drawn last so they sit on top of organs).
    mask = np.zeros(shape, dtype=bool)
    n_lesions = int(rng.integers(1, 4))
    placed = 0
    attempts = 0
    while placed < n_lesions and attempts < 200:
        attempts += 1
        ry = rng.uniform(5.0, 18.0) * scale
        rx = float(np.clip(ry * rng.uniform(0.7, 1.4), 5.0 * scale, 20.0 * scale))
        ang = rng.uniform(0, np.pi)
        # Centre inside the inner ellipse, far enough from its border.
        ly = cy + rng.uniform(-0.75, 0.75) * iby
        lx = cx + rng.uniform(-0.75, 0.75) * ibx
        les = _ellipse(shape, ly, lx, ry, rx, ang)
        if les.sum() < 20:
            continue
        margin = _ellipse(shape, ly, lx, ry + 3 * scale, rx + 3 * scale, ang)
        if not np.all(inner[margin]) or np.any(keep_out[margin]):
            continue
        img[les] = rng.uniform(120.0, 160.0)
        mask |= les
        placed += 1
    if placed == 0:  # practically unreachable; guarantees >= 1 lesion
        ry = rx = 8.0 * scale
        les = _ellipse(shape, cy - 0.2 * iby, cx, ry, rx)
        img[les] = 140.0
        mask |= les

    img = _blur121(img)
    sigma = rng.uniform(10.0, 15.0)
    img = img + rng.normal(0.0, sigma, size=shape)
    hu = np.clip(np.rint(img), HU_MIN, HU_MAX).astype(np.int16)
    return hu, mask.astype(np.uint8)


def write_dicom(path, hu, *, seed: int = 0, photometric: str = "MONOCHROME2", bits_stored: int = 12) -> None:
    """Write a single-frame CT Image Storage DICOM (Explicit VR Little Endian).

    Pixels are stored unsigned as ``hu + 1024`` with RescaleSlope 1 and
    RescaleIntercept -1024, so ``pydicom.pixels.apply_rescale(ds.pixel_array, ds)``
    returns ``hu``. ``photometric`` only sets the PhotometricInterpretation tag
    (MONOCHROME1 or MONOCHROME2); stored values are the same either way, as the
    rescale to HU does not depend on it.
    """
    from pydicom.dataset import FileMetaDataset, FileDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid, PYDICOM_IMPLEMENTATION_UID

    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError("photometric must be MONOCHROME1 or MONOCHROME2")
    if bits_stored not in (12, 16):
        raise ValueError("bits_stored must be 12 or 16")
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError("hu must be 2-D")
    stored = hu.astype(np.int32) + 1024
    if stored.min() < 0 or stored.max() > (1 << bits_stored) - 1:
        raise ValueError("hu out of range for the chosen BitsStored")
    pixels = stored.astype("<u2")

    ent = [f"onnxfn-phantom-{seed}"]
    study_uid = generate_uid(entropy_srcs=ent + ["study"])
    series_uid = generate_uid(entropy_srcs=ent + ["series"])
    sop_uid = generate_uid(entropy_srcs=ent + ["sop"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = FileDataset(os.fspath(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=ent + ["for"])
    ds.Modality = "CT"
    ds.PatientName = f"PHANTOM^{seed}"
    ds.PatientID = f"PHANTOM-{seed:06d}" if isinstance(seed, int) and seed >= 0 else f"PHANTOM-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20000101"
    ds.StudyTime = "000000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "onnxfn synthetic phantom"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ContentDate = "20000101"
    ds.ContentTime = "000000"
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(hu.shape[0]), int(hu.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = pixels.tobytes()
    ds.save_as(os.fspath(path), enforce_file_format=True)


def write_png16(path, hu) -> None:
    """Write ``hu + 1024`` as a 16-bit grayscale PNG (Pillow mode "I;16")."""
    from PIL import Image

    hu = np.asarray(hu)
    stored = hu.astype(np.int32) + 1024
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("hu out of range for a 16-bit PNG")
    img = Image.fromarray(np.ascontiguousarray(stored.astype(np.uint16)))
    if img.mode != "I;16":
        raise RuntimeError(f"expected Pillow mode I;16, got {img.mode}")
    img.save(os.fspath(path), format="PNG")


if __name__ == "__main__":  # quick self-check
    import tempfile

    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_rescale

    for sz in [(128, 128), (96, 128), (160, 160), (200, 152), (37, 61)]:
        hu, m = make_phantom(3, sz)
        hu2, m2 = make_phantom(3, sz)
        assert np.array_equal(hu, hu2) and np.array_equal(m, m2)
        print(sz, hu.dtype, m.dtype, int(hu.min()), int(hu.max()), int(m.sum()))
    with tempfile.TemporaryDirectory() as d:
        hu, _ = make_phantom(7, (96, 128))
        p = os.path.join(d, "x.dcm")
        write_dicom(p, hu, seed=7)
        ds = pydicom.dcmread(p)
        assert np.array_equal(apply_rescale(ds.pixel_array, ds), hu)
        q = os.path.join(d, "x.png")
        write_png16(q, hu)
        im = Image.open(q)
        assert im.mode == "I;16", im.mode
        assert np.array_equal(np.asarray(im).astype(np.int32) - 1024, hu)
    print("ok")
