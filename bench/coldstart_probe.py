"""Helper of bench/coldstart.py: ONE fresh process times ONE piece of onnxfn's cold path and
prints a JSON line. It calls onnxfn's own functions (source.resolve, session.options,
model.example, store._client, bundle.sha256_file) in the order loader.load() does, so the
figures split the function's `load` into fetch / session creation / warm-up without touching
shared/. Configuration comes from the environment, exactly as for the function
(MODEL_URI, ONNXFN_BAKED_BUNDLE, ONNXFN_CACHE_DIR, ONNXFN_THREADS, AWS_*).

    python bench/coldstart_probe.py MODE [ARG]

MODE
  import        `import onnxruntime` alone (after what the function has imported by then)
  fetch         source.resolve() alone (onnxruntime never imported)
  serial        import onnxruntime, THEN resolve, session, _check, warm-up, one more run
  overlap       import onnxruntime in a thread || resolve, join, session, _check, warm-up, one more run (the
                alternative to loader.load(), which fetches, then imports under session.IMPORTS)
  costs_s3      `import boto3` and onnxfn's boto3 client creation
  costs_misc    `import urllib.request`, `import PIL.Image`, `import pydicom`, sha256 of the artifact
  session VARIANT [PATH]  session creation + two runs with onnxfn's options ("onnxfn") or a variant:
                offline_optimised PATH (the ORT_ENABLE_ALL model saved offline, loaded with optimisation
                disabled), extended, basic, no_prepacking, no_arena
  naive_fetch debug|quiet   the naive handler's boto3 import + client + download_file, with the root
                logger at DEBUG writing to a file (as under the fdk) or left quiet
"""
from __future__ import annotations

import time

T_START = time.perf_counter()

import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import procfs  # noqa: E402  (bench/procfs.py, standard library only)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "shared"))


COLD_PATH = ("__init__", "fn", "app", "logs", "errors", "settings", "service", "runtime/cpu", "codecs/payload",
             "tasks/postprocess", "tasks/preprocess", "codecs/tensor", "runtime/loader", "runtime/model",
             "runtime/session", "runtime/selection", "bundles/bundle", "bundles/manifest", "bundles/cache",
             "bundles/source", "storage/store", "codecs/image")


def ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def cpu(since: float) -> float:
    """CPU time of the whole process (every thread) since `since` (time.process_time()), ms."""
    return round((time.process_time() - since) * 1000, 3)


def hwm() -> float:
    """This process's peak RSS so far (VmHWM), MB."""
    return round(procfs.status()["VmHWM"], 1)


def session_and_runs(out: dict, bundle, threads: int, options=None, path: str | None = None) -> None:
    from onnxfn.runtime import session as sessions
    from onnxfn.runtime.model import example
    artifact = bundle.manifest.portable
    sessions.engine()  # onnxruntime is imported before the clock starts, as before
    t = time.perf_counter()
    session = sessions.create(path or bundle.fetch(artifact), threads, session_options=options)
    out["session_ms"] = ms(t)
    out["hwm_after_session_mb"] = hwm()
    t = time.perf_counter()
    sessions.check(bundle.manifest, session)
    out["check_ms"] = ms(t)
    feeds = {spec.name: example(spec) for spec in bundle.manifest.inputs}
    t = time.perf_counter()
    session.run(None, feeds)
    out["warmup_ms"] = ms(t)          # the first run of a new session
    t = time.perf_counter()
    session.run(None, feeds)
    out["second_run_ms"] = ms(t)      # what a run costs once the session is warm
    out["hwm_after_runs_mb"] = hwm()


def main(argv: list[str]) -> int:
    mode = argv[1]
    out: dict = {"mode": mode}
    if mode == "naive_fetch":
        return naive_fetch(out, argv[2])
    t = time.perf_counter()
    importlib.import_module("onnxfn.service")
    from onnxfn.bundles import bundle as bundles
    from onnxfn.bundles import source
    importlib.import_module("onnxfn.runtime.loader")  # what the function holds when load() starts
    from onnxfn.settings import Settings
    out["pre_import_ms"] = ms(t)
    out["hwm_after_pre_import_mb"] = hwm()
    settings = Settings.from_env()
    threads = settings.threads or 2
    deadline = time.monotonic() + 300

    if mode == "import":
        t = time.perf_counter()
        import onnxruntime  # noqa: F401
        out["import_ort_ms"] = ms(t)
        out["hwm_after_import_ort_mb"] = hwm()
    elif mode == "fetch":
        t, c = time.perf_counter(), time.process_time()
        bundle, out["source"] = source.resolve(settings, deadline)
        out["fetch_ms"] = ms(t)
        out["cpu_fetch_ms"] = cpu(c)
        out["ort_imported"] = "onnxruntime" in sys.modules
        out["hwm_after_fetch_mb"] = hwm()
    elif mode == "serial":
        t0, c0 = time.perf_counter(), time.process_time()
        import onnxruntime  # noqa: F401
        out["import_ort_ms"] = ms(t0)
        t = time.perf_counter()
        bundle, out["source"] = source.resolve(settings, deadline)
        out["fetch_ms"] = ms(t)
        out["import_plus_fetch_ms"] = ms(t0)
        out["cpu_import_plus_fetch_ms"] = cpu(c0)
        out["hwm_after_fetch_mb"] = hwm()
        session_and_runs(out, bundle, threads)
        out["load_ms"] = ms(t0)
    elif mode == "overlap":
        done: dict = {}

        def engine() -> None:
            importlib.import_module("onnxruntime")
            done["t"] = time.perf_counter()

        t0, c0 = time.perf_counter(), time.process_time()
        thread = threading.Thread(target=engine, daemon=True)
        thread.start()
        bundle, out["source"] = source.resolve(settings, deadline)
        fetched = time.perf_counter()
        out["fetch_ms"] = round((fetched - t0) * 1000, 3)
        thread.join()
        out["import_thread_ms"] = round((done["t"] - t0) * 1000, 3)
        out["join_wait_ms"] = ms(fetched)
        out["import_plus_fetch_ms"] = ms(t0)   # the overlapped pair
        out["cpu_import_plus_fetch_ms"] = cpu(c0)
        out["hwm_after_fetch_mb"] = hwm()
        session_and_runs(out, bundle, threads)
        out["load_ms"] = ms(t0)
    elif mode == "costs_s3":
        from onnxfn.storage import s3
        t = time.perf_counter()
        importlib.import_module("boto3")
        out["import_boto3_ms"] = ms(t)
        t = time.perf_counter()
        s3.Boto3(None, None, float(settings.storage_timeout))
        out["boto3_client_ms"] = ms(t)
    elif mode == "costs_misc":
        t = time.perf_counter()
        importlib.import_module("urllib.request")
        out["import_urllib_request_ms"] = ms(t)
        t = time.perf_counter()
        importlib.import_module("PIL.Image")
        out["import_pil_ms"] = ms(t)
        t = time.perf_counter()
        importlib.import_module("pydicom")
        out["import_pydicom_ms"] = ms(t)
        path = Path(settings.baked_bundle) / "model.onnx"
        t = time.perf_counter()
        bundles.sha256_file(path)
        out["sha256_artifact_ms"] = ms(t)
        out["artifact_bytes"] = path.stat().st_size
        # what a container whose /function is read-only (no __pycache__ written) compiles on every cold start
        sources = [ROOT / "functions" / "func.py"] + [ROOT / "shared" / "onnxfn" / f"{m}.py" for m in COLD_PATH]
        texts = [(str(p), p.read_text()) for p in sources]
        t = time.perf_counter()
        for name, text in texts:
            compile(text, name, "exec")
        out["compile_onnxfn_sources_ms"] = ms(t)
    elif mode == "session":
        import onnxruntime as ort
        out["hwm_after_import_ort_mb"] = hwm()
        variant, path = argv[2], None
        out["variant"] = variant
        bundle = bundles.load(Path(settings.baked_bundle), eager=False)
        from onnxfn.runtime import session as sessions
        options = sessions.options(threads)
        level = ort.GraphOptimizationLevel
        if variant == "offline_optimised":   # argv[3]: the model saved by ORT_ENABLE_ALL, loaded as is
            options.graph_optimization_level, path = level.ORT_DISABLE_ALL, argv[3]
        elif variant == "extended":
            options.graph_optimization_level = level.ORT_ENABLE_EXTENDED
        elif variant == "basic":
            options.graph_optimization_level = level.ORT_ENABLE_BASIC
        elif variant == "no_prepacking":
            options.add_session_config_entry("session.disable_prepacking", "1")
        elif variant == "no_arena":
            options.enable_cpu_mem_arena = False
        elif variant != "onnxfn":
            raise SystemExit(f"unknown session variant {variant!r}")
        session_and_runs(out, bundle, threads, options=options, path=path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    out["process_ms"] = ms(T_START)
    out["hwm_mb"] = hwm()
    print(json.dumps(out))
    return 0


def naive_fetch(out: dict, logging_mode: str) -> int:
    """boto3 import + client + download_file, as the naive handler does (fresh file)."""
    import logging
    import tempfile
    importlib.import_module("numpy")  # imported before boto3 in the naive handler
    importlib.import_module("onnxruntime")
    log_file = None
    if logging_mode == "debug":  # what the fdk does to the root logger
        handle, log_name = tempfile.mkstemp(prefix="coldstart-naive-log-")
        log_file = os.fdopen(handle, "w")
        root = logging.getLogger()
        root.setLevel(logging.DEBUG)
        root.addHandler(logging.StreamHandler(log_file))
    t = time.perf_counter()
    import boto3
    out["import_boto3_ms"] = ms(t)
    t = time.perf_counter()
    client = boto3.client("s3")
    out["client_ms"] = ms(t)
    folder = tempfile.mkdtemp(prefix="coldstart-naive-probe-")
    t = time.perf_counter()
    client.download_file(os.environ["NAIVE_BUCKET"], os.environ["NAIVE_KEY"], os.path.join(folder, "model.onnx"))
    out["download_ms"] = ms(t)
    os.unlink(os.path.join(folder, "model.onnx"))
    os.rmdir(folder)
    if log_file is not None:
        log_file.close()
        out["log_bytes"] = os.path.getsize(log_name)
        os.unlink(log_name)
    out["process_ms"] = ms(T_START)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
