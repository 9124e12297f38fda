"""onnxfn against what a user writes by hand (bench/handwritten/func.py), both under the real fdk.

    python bench/handwritten.py [--calls 40] [--quota-calls 60] [--cold-rounds 8] [--quick]
                                [--phases warm,cold,quota] [--variants onnxfn,spin,nospin]

DenseNet-121 (MONAI, 1x1x224x224; bench/overhead.py's densenet_onnx()) packaged once into
bench/.cache/handwritten/densenet121 with a pre-optimized native artifact (`--optimize-for native`:
an .ort for this CPU class). A 512x512 8-bit grey PNG (bench/overhead.py's sample_png) is sent by
direct invocation (onnxfn.tools.dev.agent.Function: the agent's side of the fdk's unix socket).

  hand     bench/handwritten/func.py: ORT's default session options but the intra-op threads, the same
           model file (HANDWRITTEN_MODEL) and threads (HANDWRITTEN_THREADS) as onnxfn
  onnxfn   functions/func.py as deployed: the bundle baked (ONNXFN_BAKED_BUNDLE), ONNXFN_ARTIFACT=portable
           or the .ort's path, ONNXFN_THREADS (0 under a quota: sized from the function's own cgroup)
  spin, nospin, ...   onnxfn with session options overridden (bench/handwritten/onnxfn_variant.py;
           VARIANTS below): intra-op spinning forced on or off, spin duration, prepacking, arena

Phases (every candidate of a phase is a live function; calls alternate candidate by candidate, the
order rotating every round and reversing every other one, with --idle (100 ms) of idle after each
call, as a function sees sporadic traffic):
  warm   per artifact (portable, pre-optimized) x threads (1, 2): p50/p90/p99 of --calls timed calls
         after --warmup, ratio to the hand-written handler's p50 and the median of the paired ratios
  cold   fresh process start -> first answer (spawn, fdk, import, session, first run), hand vs onnxfn,
         baked bundle, 2 threads, --cold-rounds rounds alternated, per artifact
  quota  each function in its own child cgroup of the v1 cpu controller (cpu.cfs_period_us 100000,
         cpu.cfs_quota_us 100000/150000/200000), pre-optimized artifact, threads as onnxfn sizes them
         from that quota (ONNXFN_THREADS=0; the hand-written handler gets the same count): p50/p99, and
         nr_throttled / throttled_time deltas of cpu.stat and the process's CPU time over the timed calls;
         --burst N sends N calls back to back per candidate and round (sustained traffic, which is what
         a quota throttles; sporadic calls with 100 ms idle rarely exhaust it)

Every child cgroup made here is removed at the end (its processes moved back to the root first).
Writes every figure to bench/.cache/handwritten.json and prints tables.
"""
from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
OUT = CACHE / "handwritten.json"
HAND = BENCH / "handwritten" / "func.py"
VARIANT = BENCH / "handwritten" / "onnxfn_variant.py"
for extra in (ROOT, ROOT / "shared", BENCH):
    sys.path.insert(0, str(extra))

import procfs  # noqa: E402  (bench/procfs.py)
from tests.support.cgroups import CPU_V1, FDK, remove  # noqa: E402

from onnxfn.runtime import cpu  # noqa: E402
from onnxfn.tools.dev.agent import ENTRY, Function  # noqa: E402

SPIN, PREPACK = "session.intra_op.allow_spinning", "session.disable_prepacking"
#: onnxfn variants: session config entries set on top of onnxfn's own options (bench/handwritten/onnxfn_variant.py;
#: "spin_duration_us" replaces onnxfn's bound on the spin, None: ORT's own default)
VARIANTS = {
    "spin": {SPIN: "1", "spin_duration_us": None},          # ORT's own spin duration
    "nospin": {SPIN: "0"},
    "spin-50us": {SPIN: "1", "spin_duration_us": 50},
    "spin-5ms": {SPIN: "1", "spin_duration_us": 5000},
    "spin-prepack": {SPIN: "1", "spin_duration_us": None, PREPACK: "0"},
    "spin-50us-prepack": {SPIN: "1", "spin_duration_us": 50, PREPACK: "0"},
    "nospin-prepack": {SPIN: "0", PREPACK: "0"},
    "spin-50us-copy": {SPIN: "1", "spin_duration_us": 50, "session.use_ort_model_bytes_for_initializers": "0"},
    "spin-50us-copy-prepack": {SPIN: "1", "spin_duration_us": 50, PREPACK: "0",
                               "session.use_ort_model_bytes_for_initializers": "0"},
    "spin-noarena": {SPIN: "1", "spin_duration_us": None, "arena": "0"},
    "basic": {"level": "ORT_ENABLE_BASIC"},                 # the graph optimized at the basic level only
    "same": {},                                              # onnxfn through the variant entry: its baseline
    "hash-1mib": {"hash_block": 1 << 20},                    # the artifact hashed in 1 MiB blocks (before f99d700)
    "preimport": {"preimport": 1},                           # runtime.loader imported before the fdk starts
    "overlap": {"overlap_engine": 1},                        # onnxruntime imported beside the sha256 (+ preimport)
    "nopyc": {},                                             # onnxfn without .pyc, as layers/Dockerfile ships it
}
#: where the `nopyc` variant's copy of functions/ and shared/onnxfn (no __pycache__) is made
NOPYC = CACHE / "handwritten" / "nopyc"


# -- the bundle ------------------------------------------------------------------------------------

def bundle() -> tuple[Path, str]:
    """The DenseNet-121 bundle with a pre-optimized native artifact (built once), and that artifact's path."""
    from overhead import densenet_onnx
    from onnxfn.bundles import bundle as bundles
    from onnxfn.tools.package import Options, build
    out = CACHE / "handwritten" / "densenet121"
    if not (out / "manifest.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        options = Options(name="densenet121", task="classification", activation="softmax",
                          image={"scaling": "unit", "mean": [0.5], "std": [0.25]}, optimize_for=["native"],
                          force=True)
        build(densenet_onnx(), out, options)
    manifest = bundles.load(out).manifest
    optimized = [a for a in manifest.artifacts if a.kind == "optimized" and a.preoptimized]
    if not optimized:
        raise SystemExit(f"{out} has no pre-optimized artifact: remove it and run again")
    return out, optimized[0].path


# -- child cgroups ---------------------------------------------------------------------------------

class Cgroup:
    """A child cgroup of the v1 cpu controller with a CFS quota; removed by `remove` (and at exit)."""
    made: list["Cgroup"] = []

    def __init__(self, name: str, cpus: float, period: int = 100000):
        self.path = CPU_V1 / f"onnxfn-handwritten-{os.getpid()}-{name}"
        self.path.mkdir()
        Cgroup.made.append(self)
        (self.path / "cpu.cfs_period_us").write_text(str(period))
        (self.path / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))

    def stat(self) -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in (self.path / "cpu.stat").read_text().splitlines())}

    def remove(self) -> None:
        remove(self.path)
        if self in Cgroup.made:
            Cgroup.made.remove(self)


@atexit.register
def _remove_cgroups() -> None:
    for group in list(Cgroup.made):
        group.remove()


# -- candidates ------------------------------------------------------------------------------------

class Candidate:
    def __init__(self, name: str, env: dict[str, str], entry: Path, cgroup: Cgroup | None = None):
        self.name, self.env, self.entry, self.cgroup = name, env, entry, cgroup
        self.fn: Function | None = None
        self.ms: list[float] = []
        self.answers: set[str] = set()

    def start(self) -> "Candidate":
        command = [sys.executable, "-c", FDK, str(self.cgroup.path)] if self.cgroup else None
        self.fn = Function(entry=self.entry, env=self.env, command=command, timeout=120).start(wait=60)
        return self

    def call(self, body: bytes) -> float:
        t = time.perf_counter()
        reply = self.fn.call(body, "image/png", deadline=60)
        ms = (time.perf_counter() - t) * 1000
        if reply.status != 200:
            raise RuntimeError(f"{self.name} answered {reply.status}: {reply.body[:300]!r}\n{self.fn.logs()[-2000:]}")
        answer = reply.json()
        self.answers.add(str(answer.get("label") or answer.get("result", {}).get("label")))
        self.last = answer
        return ms

    def stop(self) -> None:
        if self.fn is not None:
            self.fn.stop()


def candidates(names: list[str], model: Path, bundle_dir: Path, artifact: str, threads: int,
               cgroups: dict[str, Cgroup] | None = None) -> list[Candidate]:
    """`threads` 0: sized by onnxfn from its cgroup's quota (the hand-written handler gets `cpu.threads()`
    of that quota, passed by the caller as HANDWRITTEN_THREADS through `cgroups`' quota)."""
    out = []
    for name in names:
        group = cgroups[name] if cgroups else None
        if name == "hand":
            hand_threads = threads or _threads_for(group)
            env = {"HANDWRITTEN_MODEL": str(model), "HANDWRITTEN_THREADS": str(hand_threads)}
            out.append(Candidate(name, env, HAND, group))
            continue
        env = {"ONNXFN_BAKED_BUNDLE": str(bundle_dir), "MODEL_URI": str(bundle_dir), "ONNXFN_ARTIFACT": artifact,
               "ONNXFN_THREADS": str(threads), "ONNXFN_BENCH_SESSION": json.dumps(VARIANTS.get(name, {}))}
        if name == "nopyc":  # a read-only image without onnxfn's .pyc compiles every module at every cold start
            out.append(Candidate(name, {**env, "PYTHONDONTWRITEBYTECODE": "1"}, _without_pyc(), group))
            continue
        out.append(Candidate(name, env, ENTRY if name == "onnxfn" else VARIANT, group))
    return out


def compiled() -> None:
    """Byte-compile onnxfn and the entry points in place, as a built image holds them: the checkout's .pyc go stale
    as files are edited, and with PYTHONDONTWRITEBYTECODE (inherited by the functions) every cold start would
    compile them again, which no deployed function does once its image is built right."""
    import compileall
    for folder in (ROOT / "shared" / "onnxfn", ROOT / "functions", BENCH / "handwritten"):
        compileall.compile_dir(folder, quiet=1)


def _without_pyc() -> Path:
    """A fresh copy of functions/ and shared/onnxfn without __pycache__; its entry point."""
    import shutil
    shutil.rmtree(NOPYC, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "tools")
    shutil.copytree(ROOT / "functions", NOPYC / "functions", ignore=skip)
    shutil.copytree(ROOT / "shared" / "onnxfn", NOPYC / "shared" / "onnxfn", ignore=skip)
    return NOPYC / "functions" / "func.py"


def _threads_for(group: Cgroup | None) -> int:
    if group is None:
        return cpu.threads()
    quota = int((group.path / "cpu.cfs_quota_us").read_text()) / int((group.path / "cpu.cfs_period_us").read_text())
    return max(1, min(cpu.affinity(), math.ceil(quota - 1e-9)))


# -- measuring -------------------------------------------------------------------------------------

def order(names: list, round_: int) -> list:
    i = round_ % len(names)
    rotated = names[i:] + names[:i]
    return rotated[::-1] if round_ % 2 else rotated


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def alternate(group: list[Candidate], body: bytes, calls: int, warmup: int, idle: float,
              load: list[float], burst: int = 1) -> dict:
    """Start every candidate, answer one call each (its cold call), then `warmup` + `calls` rounds of one
    call per candidate (`burst` back-to-back calls: sustained traffic), alternated; the timed calls'
    latencies, CPU time and cgroup throttling."""
    try:
        for c in group:
            c.start()
            c.call(body)
        for r in range(warmup):
            for c in order(group, r):
                c.call(body)
                time.sleep(idle)
        before = {c.name: (procfs.cpu_ms(c.fn.process.pid), c.cgroup.stat() if c.cgroup else None) for c in group}
        for r in range(math.ceil(calls / burst)):
            for c in order(group, r):
                for _ in range(burst):
                    c.ms.append(c.call(body))
                time.sleep(idle)
            load.append(procfs.loadavg()[0])
        figures = {}
        hand = next((c for c in group if c.name == "hand"), None)
        for c in group:
            cpu_before, stat_before = before[c.name]
            row = {"p50_ms": round(statistics.median(c.ms), 2), "p90_ms": round(pct(c.ms, 0.90), 2),
                   "p99_ms": round(pct(c.ms, 0.99), 2), "min_ms": round(min(c.ms), 2), "max_ms": round(max(c.ms), 2),
                   "calls": len(c.ms),
                   "cpu_ms_per_call": round((procfs.cpu_ms(c.fn.process.pid) - cpu_before) / len(c.ms), 1),
                   "labels": sorted(c.answers), "peak_rss_mb": round(procfs.status(c.fn.process.pid)["VmHWM"], 1)}
            if c.name != "hand" and "runtime" in getattr(c, "last", {}):
                row["runtime"] = {k: c.last["runtime"].get(k) for k in ("artifact", "threads", "tuned")}
            if stat_before is not None:
                after = c.cgroup.stat()
                row["nr_periods"] = after["nr_periods"] - stat_before["nr_periods"]
                row["nr_throttled"] = after["nr_throttled"] - stat_before["nr_throttled"]
                row["throttled_ms"] = round((after["throttled_time"] - stat_before["throttled_time"]) / 1e6, 1)
            if hand is not None and c is not hand:
                row["ratio_p50"] = round(statistics.median(c.ms) / statistics.median(hand.ms), 3)
                row["ratio_p99"] = round(pct(c.ms, 0.99) / pct(hand.ms, 0.99), 3)
                row["paired_ratio_median"] = round(statistics.median(a / b for a, b in zip(c.ms, hand.ms)), 3)
            figures[c.name] = row
        return figures
    finally:
        for c in group:
            c.stop()


def cold(names: list[str], model_for: dict, bundle_dir: Path, body: bytes, rounds: int, threads: int,
         load: list[float]) -> dict:
    """Fresh process start -> first answer, candidate by candidate, alternated every round."""
    times: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [] for n in names}
    phases: dict[str, dict[str, list[float]]] = {n: {} for n in names}  # onnxfn's cold timings_ms
    for r in range(rounds):
        for name in order(names, r):
            artifact, model = model_for[name]
            (c,) = candidates([name], model, bundle_dir, artifact, threads)
            try:
                c.fn = Function(entry=c.entry, env=c.env, timeout=120)
                c.fn.start(wait=60)
                c.call(body)
                times[name].append((time.perf_counter() - c.fn.started_at) * 1000)
                rss[name].append(procfs.status(c.fn.process.pid)["VmHWM"])
                for phase, ms in (c.last.get("timings_ms") or {}).items():
                    phases[name].setdefault(phase, []).append(ms)
            finally:
                c.stop()
            time.sleep(0.3)
        load.append(procfs.loadavg()[0])
    out = {n: {"p50_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1), "max_ms": round(max(v), 1),
               "runs": len(v), "peak_rss_mb": round(statistics.median(rss[n]), 1)} for n, v in times.items()}
    for n in names:
        if phases[n]:
            out[n]["timings_ms_p50"] = {k: round(statistics.median(v), 1) for k, v in phases[n].items()}
    hand = times.get("hand")
    for n, v in times.items():
        if hand and n != "hand":
            out[n]["ratio_p50"] = round(statistics.median(v) / statistics.median(hand), 3)
            out[n]["paired_ratio_median"] = round(statistics.median(a / b for a, b in zip(v, hand)), 3)
    return out


# -- main ------------------------------------------------------------------------------------------

def table(title: str, rows: dict, columns: list[str]) -> None:
    print(f"\n{title}")
    print("  " + f"{'candidate':16s}" + "".join(f"{c:>20s}" for c in columns))
    for name, row in rows.items():
        print("  " + f"{name:16s}" + "".join(f"{str(row.get(c, '-')):>20s}" for c in columns))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", default="warm,cold,quota")
    parser.add_argument("--variants", default="onnxfn,spin,nospin", help="onnxfn variants besides the hand-written "
                        f"handler: onnxfn (as deployed), {', '.join(VARIANTS)}")
    parser.add_argument("--quota-variants", default=None, help="variants under quotas (default: --variants)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--artifacts", default="portable,preoptimized")
    parser.add_argument("--quotas", default="1.0,1.5,2.0")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--quota-calls", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cold-rounds", type=int, default=8)
    parser.add_argument("--idle", type=float, default=0.1, help="seconds of idle after each call")
    parser.add_argument("--burst", type=int, default=1, help="under quotas: back-to-back calls per candidate and "
                        "round (sustained traffic; --idle after each burst)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls, one quota")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.quick:
        args.calls, args.quota_calls, args.warmup, args.cold_rounds, args.quotas = 6, 6, 1, 2, "1.5"
    phases = args.phases.split(",")
    variants = ["hand"] + [v for v in args.variants.split(",") if v]
    quota_variants = ["hand"] + [v for v in (args.quota_variants or args.variants).split(",") if v]
    for v in set(variants + quota_variants) - {"hand", "onnxfn"} - set(VARIANTS):
        raise SystemExit(f"unknown variant {v!r}: onnxfn, {', '.join(VARIANTS)}")

    from overhead import sample_png
    import onnxruntime
    bundle_dir, ort_path = bundle()
    body = sample_png()
    artifacts = {"portable": ("portable", bundle_dir / "model.onnx"),
                 "preoptimized": (ort_path, bundle_dir / ort_path)}
    started = time.perf_counter()
    report = {"machine": {"cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                       if line.startswith("model name")), platform.processor()),
                          "describe": cpu.describe(), "affinity": cpu.affinity(), "quota": cpu.quota(),
                          "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "bundle": str(bundle_dir), "preoptimized_artifact": ort_path, "load_before": procfs.loadavg()}
    load: list[float] = []
    print(f"cpu {report['machine']['describe']}, onnxruntime {onnxruntime.__version__}, "
          f"load average {report['load_before']}", flush=True)

    compiled()
    if "warm" in phases:
        report["warm"] = {}
        for kind in args.artifacts.split(","):
            artifact, model = artifacts[kind]
            for threads in (int(t) for t in args.threads.split(",")):
                group = candidates(variants, model, bundle_dir, artifact, threads)
                figures = alternate(group, body, args.calls, args.warmup, args.idle, load)
                report["warm"][f"{kind}/t{threads}"] = figures
                table(f"warm, {kind} artifact, {threads} thread(s) (load {procfs.loadavg()[0]})", figures,
                      ["p50_ms", "p90_ms", "p99_ms", "ratio_p50", "paired_ratio_median", "cpu_ms_per_call"])

    if "cold" in phases:
        report["cold"] = {}
        for kind in args.artifacts.split(","):
            artifact, model = artifacts[kind]
            model_for = {name: (artifact, model) for name in variants}
            figures = cold(variants, model_for, bundle_dir, body, args.cold_rounds, 2, load)
            report["cold"][kind] = figures
            table(f"cold start (process start -> first answer), {kind} artifact, baked, 2 threads", figures,
                  ["p50_ms", "min_ms", "max_ms", "ratio_p50", "paired_ratio_median", "peak_rss_mb"])
            for name, row in figures.items():
                if "timings_ms_p50" in row:
                    print(f"  {name}'s cold answer, timings_ms p50:", row["timings_ms_p50"])

    if "quota" in phases:
        if not os.access(CPU_V1 / "cgroup.procs", os.W_OK):
            print("\nquota phase skipped: the v1 cpu controller is not writable here", file=sys.stderr)
        else:
            report["quota"] = {}
            artifact, model = artifacts["preoptimized"]
            for cpus in (float(q) for q in args.quotas.split(",")):
                groups = {name: Cgroup(f"{name}-{cpus}", cpus) for name in quota_variants}
                try:
                    group = candidates(quota_variants, model, bundle_dir, artifact, 0, groups)
                    figures = alternate(group, body, args.quota_calls, args.warmup, args.idle, load, args.burst)
                finally:
                    for g in groups.values():
                        g.remove()
                report["quota"][str(cpus)] = figures
                table(f"quota {cpus} CPU (own child cgroup each), pre-optimized, threads from the quota "
                      f"(load {procfs.loadavg()[0]})", figures,
                      ["p50_ms", "p99_ms", "ratio_p50", "ratio_p99", "nr_throttled", "throttled_ms",
                       "cpu_ms_per_call"])

    report["load_during"] = load
    report["load_after"] = procfs.loadavg()
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nload average during: {min(load, default=0):.2f}-{max(load, default=0):.2f}, after "
          f"{report['load_after']}; {report['seconds']} s; figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
