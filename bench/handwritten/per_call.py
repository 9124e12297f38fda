"""onnxfn's own work per warm call, in-process: `App.handle` on bench/overhead.py's 512² PNG minus the model's run
(the answer's `timings_ms.inference`), with the step timings and optionally a cProfile of the calls.

    python bench/handwritten/per_call.py [--calls 200] [--artifact ort|portable] [--profile] [--idle-ms 0]

The bundle is bench/handwritten.py's (bench/.cache/handwritten/densenet121, made by it), 1 thread; the call's log
line goes to a file, not the terminal. Prints the median and p90 of the call minus its inference, and each step."""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bench/.cache/handwritten/densenet121"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--artifact", choices=("ort", "portable"), default="ort")
    parser.add_argument("--idle-ms", type=float, default=0.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    artifact = "portable" if args.artifact == "portable" else str(next(BUNDLE.glob("*.opt.ort")).name)
    os.environ.update({"ONNXFN_BAKED_BUNDLE": str(BUNDLE), "MODEL_URI": str(BUNDLE), "ONNXFN_ARTIFACT": artifact,
                       "ONNXFN_THREADS": "1"})
    sys.path[:0] = [str(ROOT / "shared"), str(ROOT / "bench")]
    log = tempfile.TemporaryFile("w")
    sys.stderr = log  # the log line is written as under the fdk, but not to the terminal
    from overhead import sample_png
    from onnxfn.app import App, Request
    body = sample_png()
    app = App()

    def call() -> tuple[float, dict]:
        started = time.perf_counter()
        reply = app.handle(Request("POST", "/", {"content-type": "image/png"}, body, "bench"))
        reply.encoded()
        return (time.perf_counter() - started) * 1000, reply.timings_ms or {}

    hand = _hand(BUNDLE / artifact if args.artifact == "ort" else BUNDLE / "model.onnx", body)
    cold, _ = call()
    for _ in range(10):
        call()
        hand()
    profiler = cProfile.Profile() if args.profile else None
    own, steps, hands = [], {}, []
    for _ in range(args.calls):
        hands.append(hand())
        if profiler:
            profiler.enable()
        ms, timings = call()
        if profiler:
            profiler.disable()
        own.append(ms - timings.get("inference", 0.0))
        for k, v in timings.items():
            steps.setdefault(k, []).append(v)
        if args.idle_ms:
            time.sleep(args.idle_ms / 1000)
    sys.stderr = sys.__stderr__
    own.sort()
    hands.sort()
    print(f"cold call {cold:.1f} ms; {args.calls} warm calls, artifact {artifact}")
    print(f"handle minus inference: p50 {statistics.median(own):.3f} ms, p90 {own[int(len(own) * 0.9)]:.3f} ms")
    print(f"hand-written handler minus its run: p50 {statistics.median(hands):.3f} ms, "
          f"p90 {hands[int(len(hands) * 0.9)]:.3f} ms")
    print("steps p50 ms: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in steps.items()))
    if profiler:
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(int(os.environ.get("TOP", "40")))
    return 0


def _hand(model: Path, body: bytes):
    """bench/handwritten/func.py's handler body, timed without its session's run (its own work per call)."""
    import io
    import json

    import numpy as np
    import onnxruntime as ort
    from PIL import Image
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def call() -> float:
        started = time.perf_counter()
        image = Image.open(io.BytesIO(body)).convert("L").resize((224, 224), Image.BILINEAR)
        x = (np.asarray(image, dtype=np.float32) / 255.0 - 0.5) / 0.25
        ran = time.perf_counter()
        logits = session.run(None, {name: x[None, None]})[0][0]
        run = time.perf_counter() - ran
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = int(p.argmax())
        json.dumps({"label": str(top), "probability": float(p[top])}).encode()
        return (time.perf_counter() - started - run) * 1000
    return call


if __name__ == "__main__":
    raise SystemExit(main())
