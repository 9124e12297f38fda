"""Per-CPU artifacts: session creation, warm latency and accuracy of portable fp32,
pre-optimized and int8 artifacts, measured side by side (alternated) on this machine.

    python bench/artifacts.py [--rounds 7] [--runs 20]

Packages DenseNet-121 (bench/.cache/densenet121.onnx, from bench/export_densenet.py), the digits
CNN and the lesion U-Net with `--optimize-for native --int8 native` into bench/.cache/artifacts/,
then for each artifact: session creation (ms, median over rounds), warm latency at 1 and 2
threads (median of runs), and the accuracy the packaging gate recorded. Goals (tracker issue):
pre-optimized creation <= 0.25x portable; int8 >= 2.0x faster than fp32 at 1 thread and >= 1.8x
at 2; top-1 agreement >= 99% (digits); Dice drop <= 0.01 (phantoms).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache" / "artifacts"
sys.path[:0] = [str(ROOT / "shared"), str(ROOT)]

from onnxfn.bundles import bundle as bundles
from onnxfn.runtime import cpu
from onnxfn.runtime import session as sessions  # noqa: E402
from onnxfn.runtime.model import example  # noqa: E402
from onnxfn.tools.package import Options, build  # noqa: E402


def calibration(name: str, folder: Path) -> Path:
    if name == "digits-cnn":
        held = np.load(ROOT / "models" / "data" / "digits-heldout.npz")
        path = folder / "digits.npy"
        np.save(path, (held["images"][:200].astype(np.float32) / 255)[:, None])
        return path
    if name == "lesion-unet":
        from models.train import phantoms
        path = folder / "phantoms"
        path.mkdir(exist_ok=True)
        for seed in range(24):
            hu, _ = phantoms.make_phantom(400000 + seed, (128, 128))
            phantoms.write_dicom(path / f"{seed}.dcm", hu)
        return path
    rng = np.random.default_rng(0)  # DenseNet-121 (random weights): smooth synthetic images
    y, x = np.mgrid[0:224, 0:224] / 224.0
    images = [0.5 + 0.4 * np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * np.cos(5 * y * rng.uniform(0.5, 2))
              for _ in range(32)]
    path = folder / "densenet.npy"
    np.save(path, ((np.stack(images) - 0.5) / 0.25).astype(np.float32)[:, None])
    return path


def package(name: str) -> bundles.Bundle:
    out = CACHE / name
    if (out / "manifest.json").exists():
        return bundles.load(out)
    source = bundles.load(ROOT / "models" / name) if name != "densenet121" else None
    with tempfile.TemporaryDirectory() as tmp:
        cal = calibration(name, Path(tmp))
        if source is None:
            from overhead import densenet_onnx  # exports it when missing
            model = densenet_onnx()
            options = Options(name=name, task="classification", activation="softmax", image={"scaling": "unit"})
        else:
            m = source.manifest
            model = source.fetch(m.portable)
            out_spec = m.primary_output
            image = {k: v for k, v in vars(m.inputs[0].image).items() if v is not None}
            if image.get("window") is not None:
                image["window"] = vars(image["window"])
            options = Options(name=name, task=m.task, activation=out_spec.activation, decision=out_spec.decision,
                              labels=list(out_spec.labels or []) or None, image=image, layout=m.inputs[0].layout)
        options.optimize_for, options.int8, options.calibration, options.force = ["native"], ["native"], cal, True
        from onnxfn.tools.accuracy import Thresholds
        options.thresholds = Thresholds(min_dice=0.95)
        bundle = build(model, out, options)
        for line in options.report:
            print(f"  {name}: {line}")
        return bundle


def measure(bundle: bundles.Bundle, rounds: int, runs: int) -> list[dict]:
    m = bundle.manifest
    spec = m.inputs[0]
    x = example(spec).astype(np.float32)
    if spec.image and spec.image.size is None:
        x = np.zeros((1, 1, 256, 256), dtype=np.float32)
    x[...] = np.random.default_rng(1).random(x.shape, dtype=np.float32)
    create = {a.path: [] for a in m.artifacts}
    latency = {(a.path, t): [] for a in m.artifacts for t in (1, 2)}
    for _ in range(rounds):  # alternate artifacts every round
        for artifact in m.artifacts:
            for threads in (1, 2):
                sessions.engine()  # imported before the clock starts
                started = time.perf_counter()
                session = sessions.create(bundle.fetch(artifact), threads, artifact)
                if threads == 1:
                    create[artifact.path].append((time.perf_counter() - started) * 1000)
                session.run(None, {spec.name: x})
                for _ in range(runs):
                    started = time.perf_counter()
                    session.run(None, {spec.name: x})
                    latency[(artifact.path, threads)].append((time.perf_counter() - started) * 1000)
    rows = []
    for artifact in m.artifacts:
        rows.append({"artifact": artifact.path, "kind": artifact.kind,
                     "create_ms": statistics.median(create[artifact.path]),
                     "p50_1t_ms": statistics.median(latency[(artifact.path, 1)]),
                     "p50_2t_ms": statistics.median(latency[(artifact.path, 2)]),
                     "accuracy": artifact.accuracy or {}})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--models", default="densenet121,digits-cnn,lesion-unet")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"cpu: {cpu.describe()}, load average before: {open('/proc/loadavg').read().split()[:3]}")
    report = {"cpu": cpu.describe(), "models": {}}
    for name in args.models.split(","):
        bundle = package(name)
        rows = measure(bundle, args.rounds, args.runs)
        portable = next(r for r in rows if r["kind"] == "portable")
        print(f"\n{name}")
        print(f"  {'artifact':34s} {'create ms':>10s} {'x portable':>10s} {'1t ms':>8s} {'speedup':>8s} "
              f"{'2t ms':>8s} {'speedup':>8s}  accuracy")
        for r in rows:
            r["create_ratio"] = r["create_ms"] / portable["create_ms"]
            r["speedup_1t"] = portable["p50_1t_ms"] / r["p50_1t_ms"]
            r["speedup_2t"] = portable["p50_2t_ms"] / r["p50_2t_ms"]
            print(f"  {r['artifact']:34s} {r['create_ms']:10.1f} {r['create_ratio']:10.2f} {r['p50_1t_ms']:8.2f} "
                  f"{r['speedup_1t']:8.2f} {r['p50_2t_ms']:8.2f} {r['speedup_2t']:8.2f}  {r['accuracy']}")
        report["models"][name] = rows
    print(f"\nload average after: {open('/proc/loadavg').read().split()[:3]}")
    (CACHE / "artifacts.json").write_text(json.dumps(report, indent=2))
    print(f"figures: {CACHE / 'artifacts.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
