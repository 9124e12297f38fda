"""DICOM decoding: onnxfn's `codecs.dicom.decode` against pydicom with the same plugin called directly, on a
512x512 16-bit JPEG 2000 (lossless) file and a 512x512 16-bit JPEG-LS (lossless) file, alternated in one
run; and the import time of each decoder plugin in fresh interpreters.

    python bench/dicom.py [--rounds 15] [--imports 5]

The files are made here from a CT slice of pydicom's corpus (CT_small, 128x128, resized to 512x512 with
noise so that the codecs have work): JPEG 2000 through pydicom's pylibjpeg (openjpeg) encoder, JPEG-LS
through pyjpegls when installed (a dev package; the function decodes JPEG-LS with pylibjpeg-libjpeg), else
the corpus' 64x64 MR_small_jpeg_ls_lossless.dcm. Goal (issue 15): overhead <= 5%.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "shared"), str(ROOT)]

import pydicom  # noqa: E402
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless  # noqa: E402

from onnxfn.codecs import dicom  # noqa: E402

LIMIT = 10**8


def source() -> pydicom.Dataset:
    """A 512x512 16-bit CT-like slice (signed, 16 bits stored)."""
    from PIL import Image as PILImage
    ds = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    big = np.asarray(PILImage.fromarray(ds.pixel_array.astype(np.float32)).resize((512, 512), 2))
    noise = np.random.default_rng(0).normal(0, 20, big.shape)
    ds.Rows = ds.Columns = 512
    ds.PixelData = np.clip(big + noise, -32768, 32767).astype(np.int16).tobytes()
    return ds


def encoded(syntax, plugin: str) -> bytes:
    ds = source()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.compress(syntax, encoding_plugin=plugin)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def cases() -> dict[str, bytes]:
    out = {"JPEG 2000 lossless 512x512 16-bit": encoded(JPEG2000Lossless, "pylibjpeg")}
    try:
        out["JPEG-LS lossless 512x512 16-bit"] = encoded(JPEGLSLossless, "pyjpegls")
    except Exception as e:  # noqa: BLE001 - pyjpegls absent: the corpus' small JPEG-LS file instead
        print(f"(no JPEG-LS encoder: {type(e).__name__}; using MR_small_jpeg_ls_lossless.dcm, 64x64)")
        out["JPEG-LS lossless 64x64 16-bit (corpus)"] = (Path(pydicom.__file__).parent / "data" / "test_files" /
                                                        "MR_small_jpeg_ls_lossless.dcm").read_bytes()
    return out


def onnxfn_decode(data: bytes) -> np.ndarray:
    return dicom.decode(data, LIMIT).pixels


def pydicom_decode(data: bytes) -> np.ndarray:
    """pydicom reading the same bytes, decoding with the same plugin (pylibjpeg)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    return ds.pixel_array


def timed(fn, data: bytes) -> float:
    start = time.perf_counter()
    fn(data)
    return time.perf_counter() - start


def compare(rounds: int) -> None:
    for name, data in cases().items():
        np.testing.assert_array_equal(onnxfn_decode(data), pydicom_decode(data))
        for fn in (onnxfn_decode, pydicom_decode):  # warm both
            fn(data)
        ours, theirs = [], []
        for i in range(rounds):  # alternated, in both orders
            pair = (onnxfn_decode, pydicom_decode) if i % 2 == 0 else (pydicom_decode, onnxfn_decode)
            for fn in pair:
                (ours if fn is onnxfn_decode else theirs).append(timed(fn, data))
        # the machine is shared: the minimum is the steadiest estimate of the work itself, the median is shown too
        for what, stat in (("min", min), ("median", statistics.median)):
            a, b = stat(ours), stat(theirs)
            print(f"{name} ({len(data) / 1024:.0f} KiB), {what} of {rounds}: onnxfn dicom.decode {a * 1e3:.2f} ms, "
                  f"pydicom + pylibjpeg {b * 1e3:.2f} ms, overhead {100 * (a / b - 1):+.1f}%")


PROBE = """
import sys, time, json
import numpy, pydicom
out = {}
for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):
    start = time.perf_counter()
    __import__(name)
    out[name] = (time.perf_counter() - start) * 1e3
start = time.perf_counter()
from pylibjpeg.utils import get_pixel_data_decoders
get_pixel_data_decoders(version=2)
out["entry points"] = (time.perf_counter() - start) * 1e3
print(json.dumps(out))
"""


def imports(runs: int) -> None:
    """Each plugin's import in a fresh interpreter, numpy and pydicom already imported (as in the function);
    pylibjpeg first, then the plugins, as enable_plugins imports them."""
    env = {"PYTHONPATH": str(ROOT / "shared"), "PATH": "/usr/bin:/bin"}
    held = ("import sys; sys.path.insert(0, %r); from onnxfn.codecs import dicom; dicom._pydicom(); " %
            str(ROOT / "shared"))
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        run = subprocess.run([sys.executable, "-c", held + "exec(%r)" % PROBE], env=env, capture_output=True,
                             text=True, check=True)
        for k, v in json.loads(run.stdout).items():
            times.setdefault(k, []).append(v)
    print("import (fresh interpreter, numpy and pydicom loaded; median of %d): " % runs +
          ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in times.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--imports", type=int, default=5)
    args = p.parse_args()
    compare(args.rounds)
    imports(args.imports)


if __name__ == "__main__":
    main()
