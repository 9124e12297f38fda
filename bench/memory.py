"""Memory: how ORT's arena options and onnxfn's release keep RSS down, what they cost in warm latency, and how well
the measured memory cost (runtime/memory.py) predicts larger runs.

    python bench/memory.py [--runs 15] [--threads 2]

1. RSS after each call of the demo U-Net (models/lesion-unet, dynamic H and W) at 256, 2048, 256, 1024, 256,
   512 px, per option, each in a fresh process: ORT's defaults (the arena keeps its peak), the arena shrinkage
   run option on every run, no CPU arena, no memory patterns, with glibc's malloc_trim, and onnxfn's choice
   (`Model.run`: a release after a call whose measured cost is above RELEASE_ABOVE).
2. Warm latency of every option relative to the defaults, alternated run by run in one process: the U-Net at
   512x512, DenseNet-121 (1x1x224x224, bench/.cache, exported by bench/export_densenet.py; skipped if absent) and
   digits-cnn (fixed shapes).
3. `memory.measure` (64, 128, 192 px) on a fresh session: its prediction vs the actual peak at 512, 1024 and
   2048 px, each actual on a fresh session in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNET = ROOT / "models" / "lesion-unet"
FIXED = {"densenet-121": (ROOT / "bench" / ".cache" / "densenet121.onnx", (1, 1, 224, 224)),
         "digits-cnn": (ROOT / "models" / "digits-cnn" / "model.onnx", (1, 1, 8, 8))}
OPTIONS = ("default", "shrink-every-run", "no-arena", "no-pattern", "no-arena-no-pattern", "shrink-no-pattern",
           "no-arena-trim", "onnxfn")
SIZES = (256, 2048, 256, 1024, 256, 512)


def session(path: Path, option: str, threads: int):
    """(session, run options, trim after each run) for one option; "onnxfn" is the function's own session."""
    from onnxfn.runtime import session as sessions
    ort = sessions.engine()
    opts = sessions.options(threads)
    opts.enable_cpu_mem_arena = "no-arena" not in option
    opts.enable_mem_pattern = "no-pattern" not in option
    run = sessions.release_options() if option.startswith("shrink") else ort.RunOptions()
    return ort.InferenceSession(str(path), opts, providers=[sessions.CPU]), run, option.endswith("trim")


def rss_child(option: str, threads: int) -> None:
    """In a fresh process: RSS (MB) after each call of SIZES, printed as JSON."""
    import numpy as np
    from onnxfn.runtime import loader, memory
    from onnxfn.settings import Settings
    if option == "onnxfn":
        model = loader.load(Settings(model_uri=str(UNET), threads=threads))
        call = lambda x: model.run({"image": x})  # noqa: E731
    else:
        s, run, trim = session(UNET / "model.onnx", option, threads)

        def call(x):
            s.run(None, {"image": x}, run)
            if trim:
                memory.trim()
    out = {"start": memory.rss() >> 20}
    for n in SIZES:
        x = np.zeros((1, 1, n, n), np.float32)
        started = time.perf_counter()
        call(x)
        out[n if n not in out else f"{n}'" if f"{n}'" not in out else f"{n}''"] = \
            (memory.rss() >> 20, round((time.perf_counter() - started) * 1000))
    print(json.dumps(out))


def latency(path: Path, shape: tuple, threads: int, runs: int) -> dict[str, float]:
    """Median warm latency per option, relative to the defaults, alternated run by run; and the defaults' ms."""
    import numpy as np
    from onnxfn.runtime import memory
    from onnxfn.runtime.model import RELEASE_ABOVE
    sessions = {o: session(path, o, threads) for o in OPTIONS if o != "onnxfn"}
    name = sessions["default"][0].get_inputs()[0].name
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    times: dict[str, list[float]] = {o: [] for o in sessions}
    for _ in range(3):
        for s, run, _ in sessions.values():
            s.run(None, {name: x}, run)
    for _ in range(runs):
        for option, (s, run, trim) in sessions.items():
            started = time.perf_counter()
            s.run(None, {name: x}, run)
            if trim:
                memory.trim()
            times[option].append(time.perf_counter() - started)
    median = {o: sorted(t)[len(t) // 2] for o, t in times.items()}
    out = {o: round(m / median["default"], 2) for o, m in median.items()}
    out["default_ms"] = round(median["default"] * 1000, 1)
    # onnxfn runs a warm call as the defaults do unless its cost is above RELEASE_ABOVE (U-Net: ~280 B/element)
    out["onnxfn"] = "default" if x.size * 300 < RELEASE_ABOVE else "default + release"
    return out


def actual_child(size: int, threads: int) -> None:
    """In a fresh process: the peak growth (bytes) of one run at size x size on a fresh session."""
    import numpy as np
    from onnxfn.runtime import memory, session as sessions
    s = sessions.create(UNET / "model.onnx", threads)
    x = np.zeros((1, 1, size, size), np.float32)
    base = memory.rss()
    with memory.Peak() as peak:
        s.run(None, {"image": x})
    print(peak.before + peak.bytes - base)


def child(*args: str) -> str:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "shared")})
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        rss_child(a.child[1], a.threads) if a.child[0] == "rss" else actual_child(int(a.child[1]), a.threads)
        return
    print(f"1. U-Net RSS (MB) after each call, and the call's ms; {a.threads} threads, a fresh process per option")
    for option in OPTIONS:
        print(f"  {option:22s} {child('--threads', str(a.threads), '--child', 'rss', option)}")
    print(f"2. warm latency relative to ORT's defaults (median of {a.runs}, alternated run by run)")
    print(f"  {'unet-512':14s} {latency(UNET / 'model.onnx', (1, 1, 512, 512), a.threads, a.runs)}")
    for name, (path, shape) in FIXED.items():
        if path.is_file():
            print(f"  {name:14s} {latency(path, shape, a.threads, a.runs)}")
        else:
            print(f"  {name:14s} skipped: {path} is missing (bench/export_densenet.py)")
    from onnxfn.bundles import manifest as mf
    from onnxfn.runtime import memory, session as sessions
    spec = mf.parse(json.loads((UNET / "manifest.json").read_text())).inputs[0]
    started = time.perf_counter()
    cost = memory.measure(sessions.create(UNET / "model.onnx", a.threads), spec)
    took = (time.perf_counter() - started) * 1000
    print(f"3. measure() at {list(memory.SIZES)} px: fixed {cost.fixed} B + {cost.per_element} B/element "
          f"({took:.0f} ms); prediction vs actual peak growth on a fresh session")
    for size in (512, 1024, 2048):
        actual = int(child("--threads", str(a.threads), "--child", "actual", str(size)))
        predicted = cost.bytes(size * size)
        print(f"  {size}x{size}: predicted {predicted >> 20} MB, actual {actual >> 20} MB, "
              f"ratio {predicted / actual:.2f}")


if __name__ == "__main__":
    main()
