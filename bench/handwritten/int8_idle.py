"""Why int8 gains less from a second thread after idle than back to back (issue 13, part 4).

    python bench/handwritten/int8_idle.py [--rounds 15] [--threads 2] [--int8 OTHER.ort,...]

DenseNet-121's fp32 .ort and int8 .ort (bench/artifacts.py --models densenet121 made them), in-process, sessions
built by onnxfn's own factory (runtime/session.py) with config entries overridden per variant. Every round runs
each (variant, model) once per pause, alternated, and prints p50s and int8 / fp32:
  b2b     back to back (an untimed run of the same session just ended)
  idle    100 ms of sleep before the run (sporadic traffic: thread pool parked, caches kept)
  evict   back to back, but 64 MB written in between (caches cold, the pool just worked)
  both    64 MB written, then 100 ms of sleep
Variants: onnxfn's default (50 us spin at 2 threads), no spinning, ORT's own spin, a long spin bound (workers
stay awake through a 100 ms idle), dynamic block base 4. `--int8` adds other int8 .ort files (e.g. an earlier
quantization) to the same alternation, each with its own ratio to the same fp32 runs."""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "shared"))

from onnxfn.bundles import bundle as bundles  # noqa: E402
from onnxfn.runtime import session as sessions  # noqa: E402

BUNDLE = ROOT / "bench" / ".cache" / "artifacts" / "densenet121"
MODELS = {"fp32": "model.x86_64-avx512f.opt.ort", "int8": "model.x86_64-vnni.int8.ort"}
VARIANTS = {
    "default": {},
    "nospin": {"session.intra_op.allow_spinning": "0"},
    "spin-ort": {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": None},
    "spin-200ms": {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": "200000"},
    "block4": {"session.dynamic_block_base": "4"},
}
PAUSES = ("b2b", "idle", "evict", "both")
SCRATCH = np.zeros(64 << 20, np.uint8)


def session(path: Path, artifact, threads: int, overrides: dict):
    duration = sessions.SPIN_DURATION_US
    if "session.intra_op.spin_duration_us" in overrides and overrides["session.intra_op.spin_duration_us"] is None:
        sessions.SPIN_DURATION_US = None  # ORT's own spin bound
    try:
        opts = sessions.options(threads, artifact)  # the session calls after the first get
    finally:
        sessions.SPIN_DURATION_US = duration
    for key, value in overrides.items():
        if value is not None:
            opts.add_session_config_entry(key, value)
    return sessions.create(path, threads, artifact, session_options=opts)


def pause(kind: str) -> None:
    if kind in ("evict", "both"):
        SCRATCH[::64] += 1  # one write per cache line: 64 MB through the caches
    if kind in ("idle", "both"):
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--int8", default="", help="other int8 .ort files to compare, comma-separated")
    args = parser.parse_args()
    bundle = bundles.load(BUNDLE, eager=False)
    artifacts = {a.path: a for a in bundle.manifest.artifacts}
    models = dict(MODELS)
    for path in filter(None, args.int8.split(",")):
        models[Path(path).stem] = path
        artifacts[path] = dataclasses.replace(artifacts[MODELS["int8"]], path=Path(path).name)
    x = {bundle.manifest.inputs[0].name: np.random.default_rng(0).random((1, 1, 224, 224), dtype=np.float32)}
    runs = {}
    for variant in args.variants.split(","):
        for model, path in models.items():
            s = session(BUNDLE / path, artifacts[path], args.threads, VARIANTS[variant])  # an absolute --int8 path is kept
            for _ in range(3):
                s.run(None, x)
            runs[(variant, model)] = s
    times: dict = {}
    keys = list(runs)
    for r in range(args.rounds):
        for kind in PAUSES:
            for key in keys if r % 2 else keys[::-1]:
                if kind in ("b2b", "evict"):
                    runs[key].run(None, x)  # this session's pool has just worked
                pause(kind)
                start = time.perf_counter()
                runs[key].run(None, x)
                times.setdefault((*key, kind), []).append((time.perf_counter() - start) * 1000)
    with open("/proc/loadavg") as f:
        print(f"threads {args.threads}, rounds {args.rounds}, load {f.read().split()[:3]}")
    int8s = [m for m in models if m != "fp32"]
    print(f"int8 models: {', '.join(f'{m} ({models[m]})' for m in int8s)}")
    width = 9 + 18 * len(int8s)
    print(f"{'variant':12} " + " ".join(f"{k + ' fp32/int8/ratio':>{width}}" for k in PAUSES))
    for variant in args.variants.split(","):
        cells = []
        for kind in PAUSES:
            fp = statistics.median(times[(variant, "fp32", kind)])
            qs = [statistics.median(times[(variant, m, kind)]) for m in int8s]
            cells.append(f"{fp:8.1f} " + " ".join(f"{q:8.1f} {fp / q:7.2f}x" for q in qs))
        print(f"{variant:12} " + " ".join(f"{c:>{width}}" for c in cells))


if __name__ == "__main__":
    main()
