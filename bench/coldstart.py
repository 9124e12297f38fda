"""Cold start: process start -> first answer, naive handler vs onnxfn (s3://, PAR URL, baked).

    python bench/coldstart.py [--runs 10] [--threads 2] [--probe-runs 5] [--no-probe]

DenseNet-121 (MONAI, 1x1x224x224, 28 MB; bench/overhead.py's densenet_bundle()) served to a
512x512 8-bit grey PNG sent by direct invocation, under the real fdk (onnxfn.tools.dev.agent.Function),
by four candidates, ALTERNATED round by round (the order rotates every round):

  naive  a hand-written func.py (written to a temp dir by this script): numpy, onnxruntime,
         boto3 and PIL imported at module top; on the first call boto3 `download_file` of the
         model from SeaweedFS into a fresh /tmp folder, a default `InferenceSession(path)`,
         PIL decode + resize to 224 + normalise, run, softmax, JSON. It stamps
         time.perf_counter() (CLOCK_MONOTONIC, shared with this process) at every step.
  s3     onnxfn, MODEL_URI=s3://... on SeaweedFS (tests/support/s3server.py) on loopback
  par    onnxfn, MODEL_URI=<pre-authenticated-style URL> (tests/support/parserver.py) on loopback
  baked  onnxfn, ONNXFN_BAKED_BUNDLE=<the bundle folder> (as baked into the image)

Every cold start is a fresh function process with an empty cache (ONNXFN_CACHE_DIR a new temp
dir; the naive handler downloads again), ONNXFN_THREADS=2 (the naive default session also takes
2 intra-op threads on this 2-core machine: the thread count is recorded). Measured: spawn ->
socket ready (python + fdk), socket ready -> first answer, the answer's own timings, and the
function process's peak RSS (VmHWM) after the first answer.

onnxfn's answer gives `load` as one figure; its fetch / session creation / warm-up split and the
import-overlap question come from probes (bench/coldstart_probe.py): fresh processes that call
onnxfn's own runner functions step by step, alternated the same way.

Writes every figure to bench/.cache/coldstart.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
OUT = CACHE / "coldstart.json"
PROBE = BENCH / "coldstart_probe.py"
for extra in (ROOT / "shared", BENCH, ROOT):
    sys.path.insert(0, str(extra))

import procfs  # bench/procfs.py: this script's folder is on sys.path

from onnxfn.tools.dev.agent import ENTRY, Function  # noqa: E402

CANDIDATES = ("naive", "s3", "par", "baked")
GOALS = {"s3": 0.70, "par": 0.50, "baked": 0.35}   # cold start vs the naive handler
RSS_GOAL = 0.80                                      # peak RSS vs the naive handler
PREFIX = "densenet121/"

NAIVE_FUNC = r'''"""A naive Fn handler serving an ONNX model (the baseline of bench/coldstart.py)."""
import time
T_MODULE = time.perf_counter()

import io
import json
import os

import boto3
import numpy as np
import onnxruntime
from fdk import response
from PIL import Image

T_IMPORTED = time.perf_counter()

BUCKET = os.environ["NAIVE_BUCKET"]
KEY = os.environ["NAIVE_KEY"]
LOCAL = os.path.join(os.environ.get("NAIVE_TMP", "/tmp"), "model.onnx")
session = None


def handler(ctx, data: io.BytesIO = None):
    global session
    t = {"module": T_MODULE, "imported": T_IMPORTED, "handler": time.perf_counter()}
    cold = session is None
    if cold:
        s3 = boto3.client("s3")
        t["client"] = time.perf_counter()
        s3.download_file(BUCKET, KEY, LOCAL)
        t["downloaded"] = time.perf_counter()
        session = onnxruntime.InferenceSession(LOCAL)
        t["session"] = time.perf_counter()
    t["run_start"] = time.perf_counter()
    image = Image.open(io.BytesIO(data.getvalue())).convert("L").resize((224, 224), Image.BILINEAR)
    x = (np.asarray(image, dtype=np.float32) / 255.0 - 0.5) / 0.25
    t["preprocessed"] = time.perf_counter()
    logits = session.run(None, {session.get_inputs()[0].name: x[None, None]})[0][0]
    t["inferred"] = time.perf_counter()
    e = np.exp(logits - logits.max())
    p = e / e.sum()
    top = [{"index": int(i), "probability": float(p[i])} for i in np.argsort(p)[::-1][:5]]
    t["answered"] = time.perf_counter()
    body = {"result": {"index": top[0]["index"], "probability": top[0]["probability"], "top": top},
            "cold": cold, "stamps": t}
    return response.Response(ctx, response_data=json.dumps(body), headers={"Content-Type": "application/json"})
'''


# -- helpers ---------------------------------------------------------------------------------------

class LoadSampler(threading.Thread):
    def __init__(self, every: float = 2.0):
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(procfs.loadavg()[0])
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def stats(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "n": len(values)}


def fmt(s: dict | None, unit: str = "") -> str:
    if not s:
        return "-"
    return f"{s['median']:.0f}{unit} [{s['min']:.0f}-{s['max']:.0f}]"


def rotate(seq, i: int) -> list:
    i %= len(seq)
    return list(seq[i:]) + list(seq[:i])


# -- the benchmark ---------------------------------------------------------------------------------

class ColdStart:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="onnxfn-coldstart-"))
        self.s3 = self.par = None
        self.records: list[dict] = []
        self.probes: list[dict] = []

    # setup
    def setup(self) -> None:
        from overhead import densenet_bundle, sample_png  # packages bench/.cache/densenet121.onnx once
        from tests.support.parserver import ParServer
        from tests.support.s3server import S3Server
        self.bundle = self.args.bundle or densenet_bundle()
        self.png = sample_png()
        t = time.perf_counter()
        self.s3 = S3Server().start()
        self.bucket = self.s3.new_bucket("coldstart")
        client = self.s3.client()
        for path in sorted(self.bundle.iterdir()):
            client.upload_file(str(path), self.bucket, PREFIX + path.name)
        print(f"SeaweedFS S3 on {self.s3.endpoint} ready, bundle uploaded to s3://{self.bucket}/{PREFIX} "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
        self.par = ParServer(self.bundle).start()
        self.naive_dir = self.tmp / "naive"
        self.naive_dir.mkdir()
        (self.naive_dir / "func.py").write_text(NAIVE_FUNC)
        self.no_bundle = str(self.tmp / "no-baked-bundle")

    def env(self, name: str, scratch: Path) -> dict[str, str]:
        threads = str(self.args.threads)
        if name == "naive":
            return {**self.s3.env(), "NAIVE_BUCKET": self.bucket, "NAIVE_KEY": PREFIX + "model.onnx",
                    "NAIVE_TMP": str(scratch)}
        common = {"ONNXFN_CACHE_DIR": str(scratch), "ONNXFN_THREADS": threads}
        if name == "s3":
            return {**self.s3.env(), **common, "MODEL_URI": f"s3://{self.bucket}/{PREFIX}",
                    "ONNXFN_BAKED_BUNDLE": self.no_bundle}
        if name == "par":
            return {**common, "MODEL_URI": self.par.url, "ONNXFN_BAKED_BUNDLE": self.no_bundle}
        if name == "baked":
            return {**common, "MODEL_URI": str(self.bundle), "ONNXFN_BAKED_BUNDLE": str(self.bundle)}
        raise ValueError(name)

    # one cold start
    def cold_start(self, name: str) -> dict:
        scratch = Path(tempfile.mkdtemp(prefix=f"coldstart-{name}-", dir="/tmp"))
        entry = self.naive_dir / "func.py" if name == "naive" else ENTRY
        fn = Function(entry=entry, env=self.env(name, scratch), timeout=120)
        try:
            fn.start(wait=60)
            ready = time.perf_counter()
            reply = fn.call(self.png, "image/png", deadline=120)
            answered = time.perf_counter()
            status = procfs.status(fn.process.pid)
            cpu = procfs.cpu_ms(fn.process.pid)
            answer = reply.json()
            if "result" not in answer:
                raise RuntimeError(f"{name}: no result in the first answer: {answer}\n{fn.logs()[-2000:]}")
            log_bytes = len(fn.logs().encode())
        finally:
            fn.stop()
            shutil.rmtree(scratch, ignore_errors=True)
        spawn = fn.started_at
        rec = {"candidate": name, "total_ms": (answered - spawn) * 1000, "start_ms": (ready - spawn) * 1000,
               "call_ms": (answered - ready) * 1000, "rss_mb": status.get("VmHWM"),
               "rss_now_mb": status.get("VmRSS"), "threads": status.get("Threads"), "log_bytes": log_bytes,
               "cpu_ms": cpu}
        if name == "naive":
            s = answer["stamps"]
            d = lambda a, b: (s[b] - s[a]) * 1000  # noqa: E731
            rec.update(load_ms=d("handler", "session"), fetch_ms=d("handler", "downloaded"),
                       client_ms=d("handler", "client"), download_ms=d("client", "downloaded"),
                       session_ms=d("downloaded", "session"), first_run_ms=d("run_start", "answered"),
                       decode_preprocess_ms=d("run_start", "preprocessed"), inference_ms=d("preprocessed", "inferred"),
                       module_import_ms=d("module", "imported"),
                       dispatch_to_module_ms=(s["module"] - ready) * 1000,
                       reply_transit_ms=(answered - s["answered"]) * 1000)
        else:
            tm = answer["timings_ms"]
            assert answer["cold"] is True and answer["runtime"]["threads"] == self.args.threads, answer["runtime"]
            rec.update(load_ms=tm["load"], first_run_ms=tm["total"] - tm["load"],
                       decode_preprocess_ms=tm.get("decode", 0) + tm.get("preprocess", 0),
                       inference_ms=tm.get("inference"), postprocess_ms=tm.get("postprocess"),
                       source=answer["runtime"].get("source"), timings_ms=tm)
            # onnxfn reports its load split on cold calls
            rec.update(fetch_ms=tm["load_fetch"], session_ms=tm["load_session"], warmup_ms=tm["load_warmup"])
        rec["import_dispatch_ms"] = rec["call_ms"] - rec["load_ms"] - rec["first_run_ms"]
        rec = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in rec.items()}
        return rec

    # probes
    def probe(self, mode: str, source: str, *extra: str) -> dict:
        """One fresh probe process (bench/coldstart_probe.py) with `source`'s function environment."""
        scratch = Path(tempfile.mkdtemp(prefix=f"coldstart-probe-{source}-", dir="/tmp"))
        env = {**os.environ, **self.env("baked" if source == "any" else source, scratch)}
        try:
            done = subprocess.run([sys.executable, str(PROBE), mode, *extra], env=env, capture_output=True,
                                  text=True, timeout=120, cwd=ROOT)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if done.returncode != 0:
            raise RuntimeError(f"probe {mode} {source} failed:\n{done.stderr[-3000:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        out["source"] = {"naive_fetch": lambda: f"naive-{extra[0]}", "session": lambda: extra[0]}.get(
            mode, lambda: source)()
        return out

    def optimised_model(self) -> Path:
        """DenseNet-121 optimised offline (ORT_ENABLE_ALL, this machine) for the `session offline_optimised` probe."""
        path = CACHE / "densenet121.opt-all.onnx"
        if not path.exists():
            code = ("import onnxruntime as ort, sys; o = ort.SessionOptions(); "
                    "o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL; "
                    "o.optimized_model_filepath = sys.argv[2]; o.log_severity_level = 3; "
                    "ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])")
            subprocess.run([sys.executable, "-c", code, str(self.bundle / "model.onnx"), str(path)], check=True)
        return path

    def run_probes(self) -> None:
        """Primary probes (load split, overlap) for --probe-runs rounds; secondary ones (costs, naive
        logging, session variants) for at most 3 rounds. Each round in a rotated order."""
        primary = [("import", "any")]
        for source in ("s3", "par", "baked"):
            primary += [("fetch", source), ("serial", source), ("overlap", source)]
        secondary = [("costs_s3", "s3"), ("costs_misc", "baked"),
                     ("naive_fetch", "naive", "debug"), ("naive_fetch", "naive", "quiet")]
        secondary += [("session", "baked", v) for v in ("onnxfn", "extended", "no_arena")]
        secondary.append(("session", "baked", "offline_optimised", str(self.optimised_model())))
        n = self.args.probe_runs
        plan = [(r, job) for r in range(n) for job in rotate(primary, r * 3)]
        plan += [(r, job) for r in range(min(n, 3)) for job in rotate(secondary, r * 3)]
        for k, (r, job) in enumerate(plan, 1):
            out = self.probe(job[0], job[1], *job[2:])
            out["round"] = r
            self.probes.append(out)
            key = next((f for f in ("load_ms", "fetch_ms", "session_ms", "import_ort_ms", "import_boto3_ms",
                                    "import_urllib_request_ms") if f in out), None)
            print(f"  probe [{k:2d}/{len(plan)}] {job[0]:<11} {out['source']:<17} {key}={out.get(key)}  "
                  f"peak RSS {out.get('hwm_mb', '-')} MB", flush=True)

    # main loop
    def run(self) -> None:
        rounds = self.args.warmup_rounds + self.args.runs
        total, k = rounds * len(CANDIDATES), 0
        for r in range(rounds):
            for pos, name in enumerate(rotate(CANDIDATES, r)):
                k += 1
                rec = self.cold_start(name)
                rec.update(round=r - self.args.warmup_rounds, position=pos, warmup=r < self.args.warmup_rounds,
                           load1=procfs.loadavg()[0])
                self.records.append(rec)
                tag = "warm-up, discarded" if rec["warmup"] else f"round {rec['round'] + 1}"
                print(f"[{k:2d}/{total}] {name:<5} total {rec['total_ms']:7.1f} ms  (start {rec['start_ms']:5.1f}, "
                      f"import+dispatch {rec['import_dispatch_ms']:6.1f}, load {rec['load_ms']:6.1f}, first run "
                      f"{rec['first_run_ms']:6.1f})  peak RSS {rec['rss_mb']:5.1f} MB  threads {rec['threads']}  "
                      f"[{tag}, load1 {rec['load1']:.2f}]", flush=True)

    def close(self) -> None:
        if self.par is not None:
            self.par.stop()
        if self.s3 is not None:
            self.s3.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- summary -----------------------------------------------------------------------------------------

PHASES = [  # (key, label)
    ("total_ms", "TOTAL spawn -> first answer"),
    ("start_ms", "  python + fdk start (spawn -> socket)"),
    ("call_ms", "  first call (socket -> answer)"),
    ("import_dispatch_ms", "    import + dispatch (call - load - run)"),
    ("module_import_ms", "      naive: module imports (stamped)"),
    ("load_ms", "    load (answer's timings / stamps)"),
    ("fetch_ms", "      fetch (naive: client + download)"),
    ("client_ms", "        naive: boto3.client('s3')"),
    ("download_ms", "        naive: download_file"),
    ("session_ms", "      session creation"),
    ("warmup_ms", "      warm-up run"),
    ("first_run_ms", "    first run (decode..answer)"),
    ("decode_preprocess_ms", "      decode + preprocess"),
    ("inference_ms", "      inference"),
    ("cpu_ms", "CPU time user+sys at 1st answer (ms)"),
    ("rss_mb", "peak RSS VmHWM (MB)"),
    ("threads", "threads after 1st answer"),
]


def summarise(bench: ColdStart, load_before, load_after, sampler: LoadSampler, started: float) -> dict:
    measured = [r for r in bench.records if not r["warmup"]]
    by = {c: [r for r in measured if r["candidate"] == c] for c in CANDIDATES}
    table = {c: {key: stats([r.get(key) for r in by[c]]) for key, _ in PHASES} for c in CANDIDATES}

    # probes, by source and mode
    P = {}
    for p in bench.probes:
        P.setdefault((p["mode"], p["source"]), []).append(p)

    def pm(mode, source, field):
        return stats([p.get(field) for p in P.get((mode, source), [])])

    probe_split = {}
    for c in ("s3", "par", "baked"):
        probe_split[c] = {
            "fetch_alone_ms": pm("fetch", c, "fetch_ms"),
            "fetch_in_overlap_ms": pm("overlap", c, "fetch_ms"),
            "import_thread_in_overlap_ms": pm("overlap", c, "import_thread_ms"),
            "join_wait_ms": pm("overlap", c, "join_wait_ms"),
            "import_plus_fetch_overlapped_ms": pm("overlap", c, "import_plus_fetch_ms"),
            "import_plus_fetch_serial_ms": pm("serial", c, "import_plus_fetch_ms"),
            "cpu_import_plus_fetch_overlapped_ms": pm("overlap", c, "cpu_import_plus_fetch_ms"),
            "cpu_import_plus_fetch_serial_ms": pm("serial", c, "cpu_import_plus_fetch_ms"),
            "cpu_fetch_alone_ms": pm("fetch", c, "cpu_fetch_ms"),
            "session_ms": pm("overlap", c, "session_ms"),
            "check_ms": pm("overlap", c, "check_ms"),
            "warmup_ms": pm("overlap", c, "warmup_ms"),
            "second_run_ms": pm("overlap", c, "second_run_ms"),
            "probe_load_overlap_ms": pm("overlap", c, "load_ms"),
            "probe_load_serial_ms": pm("serial", c, "load_ms"),
            "function_load_ms": table[c]["load_ms"],
        }
    import_alone = pm("import", "any", "import_ort_ms")

    # overlap verdict: paired by round (serial vs overlap of the same round)
    overlap = {}
    for c in ("s3", "par", "baked"):
        ser = {p["round"]: p for p in P.get(("serial", c), [])}
        ovl = {p["round"]: p for p in P.get(("overlap", c), [])}
        pairs = [(ser[r]["import_plus_fetch_ms"] - ovl[r]["import_plus_fetch_ms"],
                  ser[r]["load_ms"] - ovl[r]["load_ms"]) for r in sorted(set(ser) & set(ovl))]
        saves = [a for a, _ in pairs]
        won = sum(1 for s in saves if s > 0)
        med = statistics.median(saves) if saves else 0.0
        if saves and med > 0 and won >= 0.7 * len(saves):
            verdict = "overlap WINS"
        elif saves and med < 0 and won <= 0.3 * len(saves):
            verdict = "overlap LOSES"
        else:
            verdict = "no clear difference (within noise)"
        overlap[c] = {"saving_import_plus_fetch_ms": stats(saves), "saving_load_ms": stats([b for _, b in pairs]),
                      "rounds_won": f"{won}/{len(saves)}", "verdict": verdict,
                      "ideal_saving_ms (min(import, fetch) alone)": round(min(
                          (import_alone or {}).get("median", 0), (probe_split[c]["fetch_alone_ms"] or {}).get("median", 0)), 1)}

    costs = {
        "import_onnxruntime_ms": import_alone,
        "import_boto3_ms": pm("costs_s3", "s3", "import_boto3_ms"),
        "boto3_client_ms (onnxfn store._client)": pm("costs_s3", "s3", "boto3_client_ms"),
        "import_urllib_request_ms": pm("costs_misc", "baked", "import_urllib_request_ms"),
        "import_PIL_Image_ms": pm("costs_misc", "baked", "import_pil_ms"),
        "import_pydicom_ms (not on the PNG path)": pm("costs_misc", "baked", "import_pydicom_ms"),
        "sha256_28MB_artifact_ms": pm("costs_misc", "baked", "sha256_artifact_ms"),
        "compile_onnxfn_cold_path_sources_ms (no __pycache__, e.g. read-only /function)":
            pm("costs_misc", "baked", "compile_onnxfn_sources_ms"),
        "import_onnxfn_service_ms (numpy + onnxfn core, fresh process)": stats(
            [p.get("pre_import_ms") for p in bench.probes if p["mode"] not in ("naive_fetch",)]),
        "warmup_first_run_ms (baked overlap probe)": pm("overlap", "baked", "warmup_ms"),
        "warm_second_run_ms (baked overlap probe)": pm("overlap", "baked", "second_run_ms"),
        "naive_fetch_debug_logging": {f: pm("naive_fetch", "naive-debug", f)
                                      for f in ("import_boto3_ms", "client_ms", "download_ms", "log_bytes")},
        "naive_fetch_quiet_logging": {f: pm("naive_fetch", "naive-quiet", f)
                                      for f in ("import_boto3_ms", "client_ms", "download_ms")},
    }

    sessions = {v: {f: pm("session", v, f) for f in ("session_ms", "warmup_ms", "second_run_ms",
                                                     "hwm_after_import_ort_mb", "hwm_after_session_mb",
                                                     "hwm_after_runs_mb")}
                for v in ("onnxfn", "extended", "no_arena", "offline_optimised")}
    memory = {c: {f: pm("overlap", c, f) for f in ("hwm_after_pre_import_mb", "hwm_after_fetch_mb",
                                                    "hwm_after_session_mb", "hwm_after_runs_mb")}
              for c in ("s3", "par", "baked")}
    memory["import_onnxruntime_alone"] = {"hwm_after_pre_import_mb": pm("import", "any", "hwm_after_pre_import_mb"),
                                          "hwm_after_import_ort_mb": pm("import", "any", "hwm_after_import_ort_mb")}
    memory["fetch_alone_no_ort"] = {c: pm("fetch", c, "hwm_after_fetch_mb") for c in ("s3", "par", "baked")}

    # ratios vs the naive handler: ratio of medians, and the median of per-round paired ratios
    naive_by_round = {r["round"]: r for r in by["naive"]}
    ratios = {}
    nmed = table["naive"]["total_ms"]["median"]
    nrss = table["naive"]["rss_mb"]["median"]
    for c in ("s3", "par", "baked"):
        paired = [r["total_ms"] / naive_by_round[r["round"]]["total_ms"] for r in by[c] if r["round"] in naive_by_round]
        paired_rss = [r["rss_mb"] / naive_by_round[r["round"]]["rss_mb"] for r in by[c] if r["round"] in naive_by_round]
        ratio = table[c]["total_ms"]["median"] / nmed
        rss_ratio = table[c]["rss_mb"]["median"] / nrss
        ratios[c] = {"cold_start_ratio": round(ratio, 3), "paired_ratio": stats(paired) and
                     {k: (round(v, 3) if k != "n" else v) for k, v in (
                         ("median", statistics.median(paired)), ("min", min(paired)), ("max", max(paired)),
                         ("n", len(paired)))},
                     "goal": GOALS[c], "pass": ratio <= GOALS[c],
                     "paired_pass": statistics.median(paired) <= GOALS[c],
                     "ms_over_goal": round(table[c]["total_ms"]["median"] - GOALS[c] * nmed, 1),
                     "rss_ratio": round(rss_ratio, 3), "rss_goal": RSS_GOAL, "rss_pass": rss_ratio <= RSS_GOAL,
                     "paired_rss_ratio": round(statistics.median(paired_rss), 3),
                     "cpu_time_ratio": round(table[c]["cpu_ms"]["median"] / table["naive"]["cpu_ms"]["median"], 3)}

    samples = sampler.samples
    import onnxruntime
    import boto3
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "boto3": boto3.__version__},
        "config": {"runs": bench.args.runs, "warmup_rounds": bench.args.warmup_rounds, "threads": bench.args.threads,
                   "probe_runs": bench.args.probe_runs, "model": "densenet121 1x1x224x224 fp32, 28.7 MB",
                   "request": "512x512 8-bit grey PNG, direct invocation", "order": "rotated every round"},
        "loadavg": {"before": load_before, "after": load_after,
                    "during_1min": stats(samples) and {"median": round(statistics.median(samples), 2),
                                                       "min": min(samples), "max": max(samples), "n": len(samples)}},
        "table": table, "ratios": ratios, "probe_split": probe_split, "overlap": overlap, "costs": costs,
        "session_variants": sessions, "probe_memory_mb": memory,
        "records": bench.records, "probes": bench.probes,
    }


def report(s: dict, out: Path = OUT) -> None:
    t = s["table"]
    width = 43
    print("\n" + "=" * 110)
    print(f"COLD START, DenseNet-121, {s['config']['runs']} alternated rounds, threads {s['config']['threads']}"
          "   median [min-max], ms unless stated")
    print("=" * 110)
    print(f"{'phase':<{width}}" + "".join(f"{c:>17}" for c in CANDIDATES))
    for key, label in PHASES:
        cells = [fmt(t[c][key]) for c in CANDIDATES]
        if all(cell == "-" for cell in cells):
            continue
        print(f"{label:<{width}}" + "".join(f"{cell:>17}" for cell in cells))
    ps = s["probe_split"]
    print(f"\nonnxfn load split (probe processes replaying runner.load(), {s['config']['probe_runs']} rounds):")
    print(f"{'':<{width}}" + "".join(f"{c:>17}" for c in ("s3", "par", "baked")))
    for key, label in (("fetch_in_overlap_ms", "fetch (resolve, ort import in parallel)"),
                       ("join_wait_ms", "wait for the ort import thread"),
                       ("session_ms", "session creation (ENABLE_ALL)"),
                       ("warmup_ms", "warm-up run (zeros)"),
                       ("probe_load_overlap_ms", "probe load (sum)"),
                       ("function_load_ms", "function's timings.load (main runs)")):
        print(f"{label:<{width}}" + "".join(f"{fmt(ps[c][key]):>17}" for c in ("s3", "par", "baked")))

    print("\nRATIOS vs the naive handler (same run):")
    for c, r in s["ratios"].items():
        pr = r["paired_ratio"]
        print(f"  {c:<6} cold start {r['cold_start_ratio']:.3f}x (paired per round: median {pr['median']:.3f}, "
              f"{pr['min']:.3f}-{pr['max']:.3f})  goal <= {r['goal']:.2f}  "
              f"{'PASS' if r['pass'] else 'MISS'}{'' if r['pass'] == r['paired_pass'] else ' (paired: ' + ('PASS' if r['paired_pass'] else 'MISS') + ')'}"
              f"  [{r['ms_over_goal']:+.0f} ms vs goal]")
        print(f"  {'':<6} CPU time   {r['cpu_time_ratio']:.3f}x (user+sys of the function process: less "
              "sensitive to other load than wall time; not a goal)")
        print(f"  {'':<6} peak RSS   {r['rss_ratio']:.3f}x (paired {r['paired_rss_ratio']:.3f})  goal <= "
              f"{r['rss_goal']:.2f}  {'PASS' if r['rss_pass'] else 'MISS'}")

    print("\nOVERLAP of `import onnxruntime` with the fetch (runner.load), serial - overlapped, paired by round:")
    print(f"  import onnxruntime alone: {fmt(s['costs']['import_onnxruntime_ms'])} ms")
    for c, o in s["overlap"].items():
        print(f"  {c:<6} fetch alone {fmt(ps[c]['fetch_alone_ms'])}, import+fetch serial "
              f"{fmt(ps[c]['import_plus_fetch_serial_ms'])} vs overlapped {fmt(ps[c]['import_plus_fetch_overlapped_ms'])}"
              f" -> saves {fmt(o['saving_import_plus_fetch_ms'])} ms (won {o['rounds_won']}), whole load saves "
              f"{fmt(o['saving_load_ms'])}: {o['verdict']}")
        print(f"  {'':<6} CPU (all threads) of import+fetch: serial {fmt(ps[c]['cpu_import_plus_fetch_serial_ms'])}, "
              f"overlapped {fmt(ps[c]['cpu_import_plus_fetch_overlapped_ms'])}; fetch alone "
              f"{fmt(ps[c]['cpu_fetch_alone_ms'])} CPU vs {fmt(ps[c]['fetch_alone_ms'])} wall")

    print("\ncosts on the cold path (fresh processes):")
    for k, v in s["costs"].items():
        if isinstance(v, dict) and v and "median" not in v:
            print(f"  {k}: " + ", ".join(f"{f} {fmt(x)}" for f, x in v.items()))
        else:
            print(f"  {k}: {fmt(v)}")
    print("\nsession variants (baked bundle, fresh process each; ms and peak RSS MB):")
    print(f"  {'variant':<18}{'session':>17}{'1st run':>17}{'2nd run':>17}{'HWM ort imported':>18}"
          f"{'HWM +session':>17}{'HWM +runs':>17}")
    for v, f in s["session_variants"].items():
        print(f"  {v:<18}" + "".join(f"{fmt(f[k]):>17}" for k in ("session_ms", "warmup_ms", "second_run_ms"))
              + f"{fmt(f['hwm_after_import_ort_mb']):>18}"
              + "".join(f"{fmt(f[k]):>17}" for k in ("hwm_after_session_mb", "hwm_after_runs_mb")))
    m = s["probe_memory_mb"]
    print("peak RSS (MB) along runner.load() in the overlap probes:  "
          + "; ".join(f"{c}: onnxfn.service {fmt(m[c]['hwm_after_pre_import_mb'])} -> +ort&fetch "
                      f"{fmt(m[c]['hwm_after_fetch_mb'])} -> +session {fmt(m[c]['hwm_after_session_mb'])} -> +runs "
                      f"{fmt(m[c]['hwm_after_runs_mb'])}" for c in ("s3", "par", "baked")))
    print("  fetch alone (no onnxruntime): " + ", ".join(f"{c} {fmt(v)}" for c, v in m["fetch_alone_no_ort"].items())
          + f"; onnxruntime import alone {fmt(m['import_onnxruntime_alone']['hwm_after_import_ort_mb'])}")
    la = s["loadavg"]
    print(f"\nload average before {la['before']}, after {la['after']}, 1-min during {la['during_1min']} "
          f"on {s['machine']['cpus']} CPUs" + ("  -- HIGH: other work was running; trust the paired ratios"
                                                if max(la["before"][0], la["after"][0],
                                                       (la["during_1min"] or {}).get("max", 0)) > 0.75 * s["machine"]["cpus"]
                                                else ""))
    print(f"wall time {s['wall_s']} s; every figure in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="measured cold starts per candidate (default 10)")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="rounds run first and discarded (page cache)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundle", type=Path, help="the bundle to serve (default: portable DenseNet-121); e.g. one "
                                                    "packaged with --optimize-for native")
    parser.add_argument("--probe-runs", type=int, default=5, help="rounds of the probe processes (default 5)")
    parser.add_argument("--no-probe", action="store_true", help="skip the probes (split, overlap, costs)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args()
    if args.no_probe:
        args.probe_runs = 0
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    started = time.perf_counter()
    load_before = procfs.loadavg()
    print(f"load average before: {load_before} ({os.cpu_count()} CPUs)", flush=True)
    sampler = LoadSampler()
    sampler.start()
    bench = ColdStart(args)
    try:
        bench.setup()
        bench.run()
        if args.probe_runs:
            print("probes: onnxfn's load split, the import/fetch overlap, cold-path costs", flush=True)
            bench.run_probes()
    finally:
        bench.close()
        sampler.stop()
    load_after = procfs.loadavg()
    summary = summarise(bench, load_before, load_after, sampler, started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    report(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
