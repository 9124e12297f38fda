"""`onnxfn bench`'s measurement, in steps: plan (inputs and candidates), load (each candidate in its
own worker: creation, first run, accuracy against the reference), time (warm-up, then round-robin
timed batches), collect (peak RSS, latency statistics) and report (the result document, its winner
and comparisons)."""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from onnxfn.errors import OnnxfnError
from onnxfn.tools.bench.environment import engine_version, explain_load_error, loadavg, machine
from onnxfn.tools.bench.options import SCHEMA, BenchError, BenchOptions
from onnxfn.tools.bench.plan import Candidate, plan
from onnxfn.tools.bench.report import accuracy_text
from onnxfn.tools.bench.stats import geomean, summarize
from onnxfn.tools.bench.target import Inputs, Target, plan_inputs
from onnxfn.tools.bench.verdict import finish, score
from onnxfn.tools.bench.workers import Worker, context

LOAD_TIMEOUT_S = 1800.0   # torch.compile of a large model on 2 cores takes minutes
BATCH_TIMEOUT_S = 900.0
#: After a batch of a spinning candidate: onnxruntime's workers keep spinning ~40-50 ms after a run
#: (measured here), which would slow whichever candidate runs next.
SPIN_GAP_S = 0.1
FRAMEWORKS = ("pytorch", "torchscript", "sklearn")


@dataclass
class Bench:
    """One run's state, handed from step to step."""
    target: Target
    o: BenchOptions                            # resolved
    inputs: Inputs
    candidates: list[Candidate]
    notes: list[str]
    skipped: list[dict]
    load_before: list[float] | None
    started_at: str
    results: dict[str, dict] = field(default_factory=dict)       # by candidate id, in plan order
    workers: dict[str, Worker] = field(default_factory=dict)     # the candidates still running
    reference_outputs: list[np.ndarray] | None = None
    reference_id: str | None = None
    samples: dict[tuple[str, int], list[list[float]]] = field(default_factory=dict)  # (id, shape) -> batches
    sizes: list[int] = field(default_factory=list)               # runs per round
    during: list[list[float] | None] = field(default_factory=list)

    @property
    def say(self) -> Callable[[str], None]:
        """Where progress lines go."""
        return self.o.progress


def run(target: Target, options: BenchOptions, argv: list[str] | None = None) -> dict:
    """Measure every candidate; the result (JSON-ready) with winner and comparisons."""
    bench = prepare(target, options.resolved())
    logdir = Path(tempfile.mkdtemp(prefix="onnxfn-bench-"))
    try:
        load(bench, context(), logdir)
        time_rounds(bench)
        collect(bench)
    finally:
        for worker in bench.workers.values():
            worker.stop()
        shutil.rmtree(logdir, ignore_errors=True)
    return report(bench, argv)


def prepare(target: Target, o: BenchOptions) -> Bench:
    """The plan step: the model's outputs, the output compared, the inputs and the candidates."""
    load_before = loadavg()
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    notes: list[str] = []
    skipped: list[dict] = []
    _, portable_path = target.portable
    try:
        from onnxfn.tools.package import describe
        _, outs = describe(portable_path)
        target.output_names = [x["name"] for x in outs]
    except OnnxfnError as e:
        raise BenchError(explain_load_error(e.message.split(": ", 1)[-1])) from None
    if o.sklearn and target.task != "segmentation":
        primary = target.primary.name
        proba = next((n for n in target.output_names if "prob" in n.lower()), None)
        if proba and proba != primary and "prob" not in primary.lower():
            notes.append(f"compared on output {proba!r} (what predict_proba returns), not {primary!r}")
            target.primary = replace(target.primary, name=proba)
    inputs = plan_inputs(target, o)
    candidates = plan(target, o, notes, skipped)
    o.progress(f"{target.name}: {len(candidates)} candidates, {len(inputs.cases)} input shape(s) "
               f"({', '.join(inputs.labels)}), {o.runs} timed runs each in {o.rounds} round(s) after {o.warmup} "
               f"warm-up, accuracy on {len(inputs.items)} input(s); load average {load_before}")
    return Bench(target, o, inputs, candidates, notes, skipped, load_before, started_at)


def load(bench: Bench, ctx, logdir: Path) -> None:
    """The load step: each candidate's worker builds it, runs it once and on the accuracy inputs;
    its accuracy is judged against the reference (the first framework, else the reference candidate)."""
    b, count = bench, len(bench.candidates)
    names = [s.name for s in b.target.inputs]
    index = b.target.output_names.index(b.target.primary.name)
    for n, cand in enumerate(b.candidates, 1):
        entry = b.results[cand.id] = _entry(cand)
        worker = Worker(ctx, cand, logdir)
        reply = worker.call({"op": "load", "spec": cand.spec(b.o), "output_index": index, "input_names": names,
                             "cases": b.inputs.cases, "labels": b.inputs.labels, "items": b.inputs.items},
                            LOAD_TIMEOUT_S)
        if "error" in reply:
            entry.update(status="failed", error=reply["error"])
            worker.stop()
            b.say(f"[{n}/{count}] {cand.id}: FAILED: {reply['error']}")
            if cand.reference:
                raise BenchError(f"the reference {cand.id} failed: {reply['error']}"
                                 f"{_shape_hint(b.target, reply['error'])}")
            continue
        b.workers[cand.id] = worker
        entry.update(status="ok", import_ms=reply["import_ms"], create_ms=reply["create_ms"],
                     first_run_ms=reply["first_run_ms"], base_rss_mb=reply["base_rss_mb"],
                     providers=reply["providers"])
        outputs = reply["outputs"]
        entry["reference"] = b.reference_outputs is None and (cand.engine in FRAMEWORKS or cand.reference)
        if entry["reference"]:
            b.reference_outputs, b.reference_id = outputs, cand.id
        figures, ok = score(b.target, b.reference_outputs, outputs, cand.kind, b.o.thresholds)
        figures["reference"] = b.reference_id
        entry.update(accuracy=figures, within_tolerance=ok)
        b.say(f"[{n}/{count}] {cand.id}: created in {reply['create_ms']:.0f} ms, first run "
              f"{reply['first_run_ms']:.1f} ms, {accuracy_text(figures)}{'' if ok else ' (OUT OF TOLERANCE)'}")
    if not b.workers:
        raise BenchError("no candidate could run")


def _shape_hint(target: Target, error: str) -> str:
    if "input shape" not in error:
        return ""
    image = next((i.image for i in target.inputs if i.image is not None), None)
    return ("; the model does not take that input shape: pass --shapes with sizes it accepts" +
            (f" (this bundle pads images to multiples of {image.pad_multiple})"
             if image is not None and image.pad_multiple > 1 else ""))


def time_rounds(bench: Bench) -> None:
    """The time step: warm-up, then the timed runs in rounds, one batch of every candidate and shape
    per round (order rotated, and reversed every other round), pausing between batches."""
    b, o = bench, bench.o
    units = [(cid, k) for cid in b.workers for k in range(len(b.inputs.cases))]
    b.samples = {u: [] for u in units}
    if o.warmup:
        b.say(f"warm-up: {o.warmup} run(s) per candidate and shape")
        for cid, k in units:
            reply = b.workers[cid].call({"op": "time", "case": k, "n": o.warmup}, BATCH_TIMEOUT_S)
            if "error" in reply:
                _fail(b, cid, reply["error"])
    b.sizes = [o.runs // o.rounds + (1 if r < o.runs % o.rounds else 0) for r in range(o.rounds)]
    for r, size in enumerate(b.sizes):
        if size == 0:
            continue
        order = units[r % len(units):] + units[:r % len(units)]
        if r % 2:
            order.reverse()
        for cid, k in order:
            if cid not in b.workers:
                continue
            reply = b.workers[cid].call({"op": "time", "case": k, "n": size}, BATCH_TIMEOUT_S)
            if "error" in reply:
                _fail(b, cid, reply["error"])
                continue
            b.samples[(cid, k)].append(reply["ms"])
            pause = max(o.gap, SPIN_GAP_S) if b.workers[cid].candidate.spinning else o.gap
            if pause:
                time.sleep(pause)
        b.during.append(loadavg())
        _say_round(b, units, r, size)


def _say_round(b: Bench, units: list[tuple[str, int]], r: int, size: int) -> None:
    alive = [(cid, k) for cid, k in units if cid in b.workers and b.samples[(cid, k)]]
    best = min(alive, key=lambda u: statistics.median(b.samples[u][-1])) if alive else None
    if best is None:
        b.say(f"round {r + 1}/{len(b.sizes)}: nothing ran")
        return
    shape = f" at {b.inputs.labels[best[1]]}" if len(b.inputs.cases) > 1 else ""
    b.say(f"round {r + 1}/{len(b.sizes)}: {size} run(s) each; fastest this round {best[0]} "
          f"({statistics.median(b.samples[best][-1]):.2f} ms{shape})")


def collect(bench: Bench) -> None:
    """The collect step: each running candidate's peak RSS and its latency statistics per shape."""
    b = bench
    for cid, worker in b.workers.items():
        reply = worker.call({"op": "rss"}, 30)
        entry = b.results[cid]
        if "error" not in reply:
            entry["peak_rss_mb"] = reply["peak_rss_mb"]
            entry["model_rss_mb"] = round(reply["peak_rss_mb"] - entry["base_rss_mb"], 1)
        entry["cases"] = []
        for k, label in enumerate(b.inputs.labels):
            rounds = b.samples.get((cid, k), [])
            flat = [x for batch in rounds for x in batch]
            if flat:
                entry["cases"].append({"shape": label, **summarize(flat, rounds, b.o.noise)})
        if entry["cases"]:
            for key in ("p50_ms", "p90_ms", "p99_ms"):
                entry[key] = geomean([c[key] for c in entry["cases"]])
            entry["noisy"] = any(c["noisy"] for c in entry["cases"])


def report(bench: Bench, argv: list[str] | None) -> dict:
    """The report step: the result document (machine, load, settings, inputs, candidates), judged by `finish`."""
    b, o = bench, bench.o
    load_after = loadavg()
    result = {
        "onnxfn_bench": SCHEMA, "created": b.started_at, "command": argv or [],
        "target": b.target.describe(), "machine": machine(),
        "loadavg": {"before": b.load_before, "after": load_after, "during": b.during,
                    "max_1min": max((v[0] for v in [b.load_before, load_after, *b.during] if v), default=None)},
        "settings": {"runs": o.runs, "warmup": o.warmup, "rounds": o.rounds, "batches": b.sizes,
                     "threads": o.threads, "levels": o.levels, "spinning": o.spinning, "prepacking": o.prepacking,
                     "providers": o.providers, "samples": o.samples, "gap_s": o.gap, "noise_threshold": o.noise,
                     "quick": o.quick, "torch": o.torch, "torch_compile": o.compile,
                     "sklearn": str(o.sklearn) if o.sklearn else None,
                     "thresholds": o.thresholds.accuracy(), "seed": o.seed},
        "inputs": {"source": b.inputs.source, "accuracy_inputs": len(b.inputs.items),
                   "cases": [{"shape": label, "source": src}
                             for label, src in zip(b.inputs.labels, b.inputs.case_sources)]},
        "reference": {"candidate": b.reference_id,
                      "engine": b.results[b.reference_id]["engine"] if b.reference_id else None},
        "candidates": list(b.results.values()),
        "skipped": b.skipped, "notes": b.notes,
    }
    peak = result["loadavg"]["max_1min"]
    if peak is not None and peak > (os.cpu_count() or 1):
        result["notes"].append(f"the machine was busy (1-minute load average up to {peak:.2f} on "
                               f"{os.cpu_count()} cores while timing): figures are noisier than on an idle machine")
    return finish(result)


def _entry(c: Candidate) -> dict:
    return {"id": c.id, "engine": c.engine, "provider": c.provider, "artifact": c.artifact, "kind": c.kind,
            "level": c.level, "threads": c.threads, "spinning": c.spinning, "prepacking": c.prepacking,
            "preoptimized": c.preoptimized, "default": c.default, "runtime": engine_version(c.engine),
            "status": "pending", "error": None, "import_ms": None, "create_ms": None, "first_run_ms": None,
            "base_rss_mb": None, "peak_rss_mb": None, "model_rss_mb": None, "accuracy": None,
            "within_tolerance": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "noisy": None, "cases": []}


def _fail(b: Bench, cid: str, error: str) -> None:
    b.results[cid].update(status="failed", error=error)
    b.workers.pop(cid).stop()
    b.say(f"{cid}: FAILED while timing: {error}")
