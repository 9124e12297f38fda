"""What resizing 8/16-bit images before the float steps (tasks/preprocess.py's integer path) changes, and gains.

    python bench/handwritten/resize_order.py

Each image of a small real set (samples/, bench/overhead.py's 512x512 PNG, pydicom's corpus decoded by onnxfn
and as the PNGs a user would export from it) goes through preprocess.normalise twice: as it is now (integer
resize first where allowed) and with the float order forced (colour, intensity, float32 resize). Prints, per image
and manifest variant, the largest difference in stored levels (the normalised difference times 2**bits - 1 for
unit scaling, divided by the slope for raw) and in the normalised values, and the time of each path."""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "shared", ROOT / "bench"):
    sys.path.insert(0, str(extra))

from onnxfn.bundles.images import ImageSpec  # noqa: E402
from onnxfn.codecs import dicom, image as images  # noqa: E402
from onnxfn.tasks import preprocess  # noqa: E402

CORPUS = ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "US1_UNCR.dcm", "OBXXXX1A.dcm", "liver_1frame.dcm",
          "examples_rgb_color.dcm", "JPEG2000.dcm", "rtdose_1frame.dcm"]


def png(array: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def inputs() -> dict[str, images.Image]:
    from overhead import sample_png
    import pydicom
    out = {"bench 512x512 8-bit PNG": images.decode(sample_png(), "png", 1 << 30)}
    for name in ("digit-7.png", "phantom.png"):
        out[f"samples/{name}"] = images.decode((ROOT / "samples" / name).read_bytes(), "png", 1 << 30)
    out["samples/phantom.dcm"] = dicom.decode((ROOT / "samples" / "phantom.dcm").read_bytes(), 1 << 30)
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    for name in CORPUS:
        try:
            decoded = dicom.decode((folder / name).read_bytes(), 1 << 30)
        except Exception as e:  # noqa: BLE001 - a codec this venv lacks: skip the file, say so
            print(f"  {name}: skipped ({type(e).__name__})")
            continue
        out[f"corpus {name}"] = decoded
        pixels = decoded.pixels
        if pixels.dtype in (np.uint8, np.uint16) or pixels.dtype == np.int16 and pixels.min() >= 0:
            pixels = pixels.astype(np.uint8 if pixels.dtype == np.uint8 else np.uint16)
            out[f"corpus {name} as PNG"] = images.decode(png(pixels), "png", 1 << 30)
    return out


def variants(image: images.Image) -> dict[str, ImageSpec]:
    colour = "RGB" if image.channels == 3 else "L"
    h, w = image.height, image.width
    out = {}
    for method in ("bilinear", "area", "nearest", "bicubic"):
        out[f"{colour} unit 224 {method}"] = ImageSpec(color=colour, size=(224, 224), resample=method, scaling="unit")
    out[f"{colour} raw 224 pad"] = ImageSpec(color=colour, size=(224, 224), fit="pad", scaling="raw")
    out[f"{colour} unit x1.7 up"] = ImageSpec(color=colour, size=(round(h * 1.7), round(w * 1.7)), scaling="unit")
    if colour == "RGB":
        out["L (luma) unit 224"] = ImageSpec(color="L", size=(224, 224), scaling="unit")
    return out


def float_order(image, cfg):
    return preprocess.normalise(image, cfg, integer_first=False)


def timed(fn, *args, repeats=20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    print(f"{'image':44} {'variant':26} {'path':7} {'max d levels':>12} {'max d value':>12} "
          f"{'float ms':>9} {'int ms':>7}")
    worst = {}
    for label, image in inputs().items():
        if image.bits is None:
            continue
        for name, cfg in variants(image).items():
            try:
                new, g_new = preprocess.normalise(image, cfg)
            except Exception as e:  # noqa: BLE001 - e.g. 16-bit grey to RGB: refused on both paths
                print(f"{label:44} {name:26} refused: {type(e).__name__}")
                continue
            old, g_old = float_order(image, cfg)
            assert g_new == g_old, (label, name)
            d = float(np.abs(new.astype(np.float64) - old).max())
            if cfg.scaling == "unit":
                levels = d * (2 ** image.bits - 1)
            else:
                levels = d / abs((image.rescale or (1.0, 0.0))[0])
            path = "integer" if preprocess._resizes_first(image, cfg) else "float"
            worst[path] = max(worst.get(path, 0.0), levels)
            print(f"{label:44} {name:26} {path:7} {levels:12.4f} {d:12.3g} "
                  f"{timed(float_order, image, cfg):9.2f} {timed(preprocess.normalise, image, cfg):7.2f}")
    print("largest difference in stored levels, by path:", {k: round(v, 4) for k, v in worst.items()})


if __name__ == "__main__":
    main()
