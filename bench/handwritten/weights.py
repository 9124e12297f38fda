"""Where a pre-optimized .ort's weights live, and what it costs per run (issue 13): in-process, the hand-written
handler's session (ORT's defaults) against onnxfn's two sessions for the same artifact.

    python bench/handwritten/weights.py [--threads 1] [--rounds 80] [--variants hand,cold,steady,copy]

  hand    ORT's default options, intra-op threads set (bench/handwritten/func.py's session)
  cold    onnxfn's first session: the memory-mapped bytes used in place, weights not packed
  steady  onnxfn's settled session (`Runner.settle`): weights copied into ORT's memory and prepacked
  copy    copied, not prepacked (which of the two matters)

The bundle is bench/handwritten.py's (bench/.cache/handwritten/densenet121). Each round runs every session once
after 100 ms of idle, in rotating order; prints session creation, p50 and the median of the paired ratios to
`hand`."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "shared"))

from onnxfn.bundles import bundle as bundles  # noqa: E402
from onnxfn.runtime import session as sessions  # noqa: E402

BUNDLE = ROOT / "bench" / ".cache" / "handwritten" / "densenet121"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--variants", default="hand,cold,steady,copy")
    args = parser.parse_args()
    if not (BUNDLE / "manifest.json").exists():
        raise SystemExit(f"{BUNDLE} is missing: run python bench/handwritten.py --quick first")
    ort = sessions.engine()
    ort.set_default_logger_severity(3)
    bundle = bundles.load(BUNDLE, eager=False)
    artifact = next(a for a in bundle.manifest.artifacts if a.kind == "optimized" and a.path.endswith(".ort"))
    path = BUNDLE / artifact.path

    def options(variant: str):
        if variant == "hand":
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            return opts
        opts = sessions.options(args.threads, artifact, first=variant == "cold")
        if variant == "copy":
            opts.add_session_config_entry("session.disable_prepacking", "1")
        return opts

    names = args.variants.split(",")
    x = {bundle.manifest.inputs[0].name: np.random.default_rng(0).random((1, 1, 224, 224), dtype=np.float32)}
    runs, created = {}, {}
    for name in names:
        started = time.perf_counter()
        runs[name] = ort.InferenceSession(str(path), options(name), providers=["CPUExecutionProvider"])
        created[name] = (time.perf_counter() - started) * 1000
        for _ in range(3):
            runs[name].run(None, x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order if r % 2 else order[::-1]:
            time.sleep(0.1)
            started = time.perf_counter()
            runs[name].run(None, x)
            times[name].append((time.perf_counter() - started) * 1000)
    print(f"{artifact.path}, {args.threads} thread(s), {args.rounds} rounds, load {os.getloadavg()}")
    for name in names:
        paired = (statistics.median(a / b for a, b in zip(times[name], times["hand"]))
                  if "hand" in times else float("nan"))
        print(f"  {name:8s} created {created[name]:6.1f} ms   p50 {statistics.median(times[name]):6.2f} ms   "
              f"paired / hand {paired:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
