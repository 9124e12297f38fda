"""Function overhead: a warm request through the real fdk socket vs bare `session.run`.

    python bench/overhead.py [--runs 40] [--threads 2]

DenseNet-121 (MONAI, 1x1x224x224; exported by bench/export_densenet.py, dev extra) is
packaged as a classification bundle. In one run, alternating call by call:
  A. a 512x512 8-bit PNG sent to the function under the real fdk (the agent's side of the
     unix socket, as Fn does): decode, resize, normalise, infer, softmax, JSON;
  B. `session.run` on the already pre-processed tensor, same session options and threads;
  C. `session.run` on that tensor in a session with ORT's DEFAULT options but the thread count (what a
     hand-written handler builds). B alone hid that onnxfn's options once made inference slower than ORT's
     defaults (intra-op spinning was off: issue 13); A/C shows it. The whole hand-written handler under
     the fdk is bench/handwritten.py.
Prints medians, the ratios A/B (goal <= 1.10) and A/C, the entry module's import time, the core's
import time and the function process's peak RSS.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import procfs  # bench/procfs.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
sys.path.insert(0, str(ROOT / "shared"))

from onnxfn.codecs import image as images
from onnxfn.tasks import preprocess
from onnxfn.runtime import loader as runner  # noqa: E402
from onnxfn.tools.dev.agent import ENTRY, Function  # noqa: E402
from onnxfn.tools.package import Options, build  # noqa: E402


def densenet_onnx() -> Path:
    """DenseNet-121 (MONAI) as ONNX, exported once by bench/export_densenet.py (dev extra)."""
    onnx_path = CACHE / "densenet121.onnx"
    if not onnx_path.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "export_densenet.py"), str(onnx_path)], check=True)
    return onnx_path


def densenet_bundle() -> Path:
    onnx_path = densenet_onnx()
    bundle = CACHE / "densenet121"
    if not (bundle / "manifest.json").exists():
        build(onnx_path, bundle, Options(name="densenet121", task="classification", activation="softmax",
                                         image={"scaling": "unit", "mean": [0.5], "std": [0.25]}, force=True))
    return bundle


def sample_png() -> bytes:
    from PIL import Image
    y, x = np.mgrid[0:512, 0:512]
    pixels = (127 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def import_ms(code: str, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", f"import time; t = time.perf_counter(); {code}; "
                              "print((time.perf_counter() - t) * 1000)"], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        times.append(float(out.stdout.strip()))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle", type=float, default=0.05, help="seconds of idle after each request or run")
    args = parser.parse_args()

    bundle = densenet_bundle()
    body = sample_png()
    settings = runner.Settings(model_uri=str(bundle), threads=args.threads)
    model = runner.load(settings)
    tensor, _ = preprocess.prepare(images.decode(body, "png", 1 << 30), model.manifest.image_input)
    session, feeds = model.session, {"image": tensor}
    import onnxruntime
    defaults = onnxruntime.SessionOptions()
    defaults.intra_op_num_threads = args.threads
    ort_default = onnxruntime.InferenceSession(str(bundle / model.artifact), defaults,
                                               providers=["CPUExecutionProvider"])
    ort_default.run(None, feeds)

    fn = Function(env={"MODEL_URI": str(bundle), "ONNXFN_THREADS": str(args.threads)}).start()
    try:
        cold = fn.call(body, "image/png").json()
        assert "result" in cold, cold
        via_fdk, bare, default, steps = [], [], [], []
        for i in range(args.warmup + args.runs):
            t = time.perf_counter()
            reply = fn.call(body, "image/png")
            a = time.perf_counter() - t
            time.sleep(args.idle)
            t = time.perf_counter()
            session.run(None, feeds)
            b = time.perf_counter() - t
            time.sleep(args.idle)
            t = time.perf_counter()
            ort_default.run(None, feeds)
            c = time.perf_counter() - t
            time.sleep(args.idle)
            assert reply.status == 200
            if i >= args.warmup:
                via_fdk.append(a * 1000)
                bare.append(b * 1000)
                default.append(c * 1000)
                timings = reply.json()["timings_ms"]
                steps.append({**timings, "outside the handler (fdk, socket, JSON)": a * 1000 - timings["total"]})
        rss = procfs.status(fn.process.pid)["VmHWM"]
    finally:
        fn.stop()

    med_a, med_b, med_c = statistics.median(via_fdk), statistics.median(bare), statistics.median(default)
    entry = import_ms(f"import importlib.util as u; s = u.spec_from_file_location('func', {str(ENTRY)!r}); "
                      "m = u.module_from_spec(s); s.loader.exec_module(m)")
    core = import_ms("import sys; sys.path.insert(0, 'shared'); import onnxfn.service")
    figures = {
        "model": "densenet121 1x1x224x224 fp32", "input": "512x512 8-bit PNG", "threads": args.threads,
        "runs": args.runs, "fdk_request_median_ms": round(med_a, 2), "bare_session_run_median_ms": round(med_b, 2),
        "ratio": round(med_a / med_b, 3), "ort_default_session_run_median_ms": round(med_c, 2),
        "ratio_vs_ort_defaults": round(med_a / med_c, 3),
        "fdk_request_min_max_ms": [round(min(via_fdk), 2), round(max(via_fdk), 2)],
        "bare_min_max_ms": [round(min(bare), 2), round(max(bare), 2)],
        "function_step_medians_ms": {k: round(statistics.median(step[k] for step in steps), 3) for k in steps[0]},
        "cold_call_timings_ms": cold["timings_ms"], "load_average": open("/proc/loadavg").read().split()[:3],
        "entry_module_import_ms": round(entry, 1), "core_import_ms (numpy, Pillow, onnxruntime)": round(core, 1),
        "function_peak_rss_mb": round(rss, 1),
    }
    print(json.dumps(figures, indent=2))
    print(f"\nwarm request through the fdk / bare session.run = {med_a:.2f} / {med_b:.2f} ms "
          f"= {med_a / med_b:.3f} (goal <= 1.10)")
    print(f"warm request through the fdk / session.run with ORT's default options = {med_a:.2f} / {med_c:.2f} ms "
          f"= {med_a / med_c:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
