"""DICOM results: what making a SEG or SR costs (codecs.dicom_result), and what importing highdicom costs.

    python bench/dicom_result.py [--runs 30] [--imports 5]

Prints, each a median:
- highdicom's import time in a fresh interpreter that has already imported numpy, pydicom and Pillow (as a
  DICOM call has), and the first DICOM result of a fresh process (highdicom loads its tables of the
  standard on first use: a once-per-container cost);
- warm encoding of a SEG for a 512x512 single-label mask on a CT source (goal <= 30 ms), binary and
  fractional, and of an SR for a 5-entry classification answer;
- the import of onnxfn.codecs.dicom_result alone (what a JSON-only call would pay if it imported it: it
  does not import highdicom).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "shared"), str(ROOT)]

from onnxfn.bundles import manifest as manifests  # noqa: E402

SIZE = 512


def fresh(code: str) -> float:
    """Seconds `code` reports (it prints one float), run in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.split()[-1])


IMPORT = """
import time, numpy, pydicom, PIL.Image
t = time.perf_counter(); import highdicom; print(time.perf_counter() - t)"""
MODULE = """
import time, numpy
t = time.perf_counter(); import onnxfn.codecs.dicom_result; import sys
assert "highdicom" not in sys.modules; print(time.perf_counter() - t)"""
FIRST = """
import sys, time
sys.argv = ["x"]
import bench.dicom_result as b
source, mask, m = b.inputs()
from onnxfn.codecs import dicom_result
import highdicom
t = time.perf_counter(); dicom_result.segmentation(source, mask, ["background", "lesion"], m); print(time.perf_counter() - t)"""


def inputs():
    """A 512x512 CT source (the phantom's attributes, resized: pixels are not read) and a one-lesion mask."""
    import pydicom
    source = pydicom.dcmread(ROOT / "samples" / "phantom.dcm")
    source.Rows = source.Columns = SIZE
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = (((yy - 200) ** 2 + (xx - 300) ** 2) < 60 ** 2).astype(np.uint8)
    m = manifests.parse(json.loads((ROOT / "models" / "lesion-unet" / "manifest.json").read_text()))
    return source, mask, m


def median_ms(call, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--imports", type=int, default=5)
    args = parser.parse_args()

    imports = [(fresh(IMPORT), fresh(MODULE), fresh(FIRST)) for _ in range(args.imports)]
    print(f"import highdicom (numpy, pydicom, Pillow already in): "
          f"{statistics.median(i[0] for i in imports) * 1000:.0f} ms")
    print(f"import onnxfn.codecs.dicom_result (no highdicom):      "
          f"{statistics.median(i[1] for i in imports) * 1000:.1f} ms")
    print(f"first SEG of a fresh process (highdicom's tables):     "
          f"{statistics.median(i[2] for i in imports) * 1000:.0f} ms")

    from onnxfn.codecs import dicom_result
    source, mask, m = inputs()
    fractional = manifests.parse({**m.to_dict(), "outputs": [{**m.to_dict()["outputs"][0],
                                                               "segmentation_type": "fractional"}]})
    probabilities = mask.astype(np.float32) * 0.9
    answer = {"label": "a", "probability": 0.6,
              "top": [{"index": i, "label": chr(97 + i), "probability": p}
                      for i, p in enumerate((0.6, 0.2, 0.1, 0.06, 0.04))]}
    calls = {
        "SEG binary 512x512, 1 label": lambda: dicom_result.segmentation(source, mask, ["background", "lesion"], m),
        "SEG fractional 512x512, 1 label": lambda: dicom_result.segmentation(
            source, mask, ["background", "lesion"], fractional, probabilities=probabilities),
        "SR, top-5 classification": lambda: dicom_result.report(source, answer, m),
    }
    for call in calls.values():
        call()  # highdicom's first-use tables
    results = {name: [] for name in calls}
    for _ in range(3):  # alternated rounds: the machine is shared
        for name, call in calls.items():
            results[name].append(median_ms(call, max(1, args.runs // 3)))
    size = len(calls["SEG binary 512x512, 1 label"]())
    for name, values in results.items():
        print(f"{name + ':':34s} {statistics.median(values):6.1f} ms (rounds: "
              f"{', '.join(f'{v:.1f}' for v in values)})")
    print(f"SEG binary 512x512 size: {size} bytes")


if __name__ == "__main__":
    main()
