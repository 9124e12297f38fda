"""The bench's worker processes: one per candidate, started by multiprocessing (forkserver, else
spawn), so each is measured alone (import, session creation, peak RSS) and native libraries' output
stays off the terminal. The process runs `worker_main`, which this module must keep importable by
its module path (onnxfn.tools.bench.workers)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
import time
from pathlib import Path

import numpy as np

from onnxfn.runtime import cpu
from onnxfn.tools.bench.environment import explain_load_error
from onnxfn.tools.bench.plan import TORCHSCRIPT_SUFFIXES, Candidate
from onnxfn.tools.bench.target import shape_text

def rss_mb() -> dict:
    """This process's RSS and peak RSS (VmHWM), MB."""
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        values = {"VmRSS": peak, "VmHWM": peak}
    return {"rss_mb": round(values.get("VmRSS", float("nan")), 1), "peak_rss_mb": round(values.get("VmHWM", float("nan")), 1)}


class _OrtEngine:
    """An onnxruntime session, built by the one session factory with the options the runner would use."""

    def __init__(self, spec: dict, output_index: int):
        from onnxfn.bundles.manifest import Artifact, Requirement, Tuning
        from onnxfn.errors import BundleError
        from onnxfn.runtime import session as sessions
        artifact = Artifact(path=spec["artifact"], sha256="0" * 64, size=0, kind=spec["kind"],
                            preoptimized=spec["preoptimized"])
        tuning = Tuning(requires=Requirement(cpu.arch()), graph_optimization_level=spec["level"],
                        intra_op_threads=spec["threads"], allow_spinning=spec["spinning"],
                        disable_prepacking=not spec["prepacking"])
        if spec["provider"] == "OpenVINOExecutionProvider":
            providers = [("OpenVINOExecutionProvider", {"device_type": "CPU", "num_of_threads": str(spec["threads"])}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = sessions.create(spec["path"], spec["threads"], artifact, tuning, providers=providers,
                                           what=spec["path"])
        except BundleError as e:  # onnxruntime's own message is the one explained
            raise RuntimeError(explain_load_error(str(e.__context__ or e.message), spec["provider"])) from None
        self.names = [o.name for o in self.session.get_outputs()]
        self.index = output_index
        self.providers = self.session.get_providers()

    def prepare(self, feed):
        return feed

    def run(self, feed):
        return self.session.run(self.names, feed)

    def primary(self, out) -> np.ndarray:
        return np.asarray(out[self.index])


def _torch_module(spec: str):
    import torch
    if spec.endswith(TORCHSCRIPT_SUFFIXES) or Path(spec).is_file():
        try:
            return torch.jit.load(spec, map_location="cpu").eval()
        except Exception as e:
            raise RuntimeError(f"--torch {spec!r} is not a TorchScript file torch.jit.load can read ({e}); a module "
                               "saved with torch.save is not supported: give a module:function factory") from None
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise RuntimeError(f"--torch {spec!r}: expected module:function (or path/to/file.py:function) returning an "
                           "nn.Module, or a TorchScript file")
    if module_name.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if loader is None:
            raise RuntimeError(f"--torch: cannot import {module_name!r}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise RuntimeError(f"--torch: {module_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise RuntimeError(f"--torch {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


class _TorchEngine:
    """A PyTorch module (eager, TorchScript or torch.compile) at the candidate's threads."""

    def __init__(self, spec: dict, output_index: int, input_names: list[str]):
        import torch
        torch.set_num_threads(spec["threads"])
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.torch = torch
        self.model = _torch_module(spec["torch"])
        if spec["engine"] == "torch.compile":
            self.model = torch.compile(self.model)
        self.index, self.inputs = output_index, input_names
        self.providers = [f"torch {torch.__version__}"]

    def prepare(self, feed):
        return tuple(self.torch.from_numpy(np.ascontiguousarray(feed[name])) for name in self.inputs)

    def run(self, tensors):
        with self.torch.inference_mode():
            return self.model(*tensors)

    def primary(self, out) -> np.ndarray:
        if isinstance(out, dict):
            out = list(out.values())
        if isinstance(out, (list, tuple)):
            out = out[self.index if self.index < len(out) else 0]
        return out.detach().cpu().numpy()


class _SklearnEngine:
    """A pickled scikit-learn estimator's predict_proba."""

    def __init__(self, spec: dict, input_names: list[str]):
        with open(spec["sklearn"], "rb") as f:
            self.model = pickle.load(f)
        if not hasattr(self.model, "predict_proba"):
            raise RuntimeError(f"{spec['sklearn']!r} holds a {type(self.model).__name__}, which has no predict_proba")
        try:
            from threadpoolctl import threadpool_limits
            self.limits = threadpool_limits(spec["threads"])
        except ImportError:
            self.limits = None
        self.name = input_names[0]
        import sklearn
        self.providers = [f"scikit-learn {sklearn.__version__}"]

    def prepare(self, feed):
        x = feed[self.name]
        return x.reshape(len(x), -1)

    def run(self, x):
        return self.model.predict_proba(x)

    def primary(self, out) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)


def worker_main(conn, log_path: str) -> None:
    """One candidate's process: builds its session on `load`, times batches on `time`."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)  # native libraries print to fd 1 and 2: keep them off the terminal
    os.dup2(fd, 2)
    engine = None
    prepared: list = []
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg.get("op")
        if op == "stop":
            conn.send({"ok": True})
            return
        try:
            if op == "load":
                engine, prepared, reply = worker_load(msg)
            elif op == "time":
                case, n = prepared[msg["case"]], msg["n"]
                times = []
                for _ in range(n):
                    started = time.perf_counter_ns()
                    engine.run(case)
                    times.append((time.perf_counter_ns() - started) / 1e6)
                reply = {"ms": times}
            elif op == "rss":
                reply = rss_mb()
            else:
                reply = {"error": f"unknown operation {op!r}"}
        except Exception as e:
            reply = {"error": str(e) if isinstance(e, RuntimeError) and str(e) else f"{type(e).__name__}: {e}"}
        conn.send(reply)


def worker_load(msg: dict):
    """Build the candidate's engine, time its creation and first run, and run the accuracy inputs."""
    spec, index, names = msg["spec"], msg["output_index"], msg["input_names"]
    started = time.perf_counter()
    importlib.import_module({"onnxruntime": "onnxruntime", "sklearn": "sklearn"}.get(spec["engine"], "torch"))
    import_ms = (time.perf_counter() - started) * 1000  # onnxruntime: preloaded by the fork server
    before = rss_mb()
    started = time.perf_counter()
    if spec["engine"] == "onnxruntime":
        engine = _OrtEngine(spec, index)
    elif spec["engine"] == "sklearn":
        engine = _SklearnEngine(spec, names)
    else:
        engine = _TorchEngine(spec, index, names)
    create_ms = (time.perf_counter() - started) * 1000
    prepared = [engine.prepare(feed) for feed in msg["cases"]]
    started = time.perf_counter()
    try:
        engine.run(prepared[0])
    except Exception as e:
        raise RuntimeError(f"first run at input shape {msg['labels'][0]} failed: {type(e).__name__}: {e}") from None
    first_ms = (time.perf_counter() - started) * 1000
    outputs = []
    for k, item in enumerate(msg["items"]):
        try:
            outputs.append(engine.primary(engine.run(engine.prepare(item))))
        except Exception as e:
            shape = "+".join(shape_text(v.shape) for v in item.values())
            raise RuntimeError(f"inference at input shape {shape} (accuracy input {k}) failed: "
                               f"{type(e).__name__}: {e}") from None
    return engine, prepared, {"import_ms": import_ms, "create_ms": create_ms, "first_run_ms": first_ms, "outputs": outputs,
                              "base_rss_mb": before["rss_mb"], "providers": list(engine.providers)}


class Worker:
    """The parent's handle on one candidate's worker process."""

    def __init__(self, ctx, candidate: Candidate, logdir: Path):
        self.candidate = candidate
        self.log = logdir / (re.sub(r"[^A-Za-z0-9._-]+", "_", candidate.id) + ".log")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, str(self.log)), daemon=True,
                                   name=f"onnxfn-bench {candidate.id}")
        self.process.start()
        child.close()

    def call(self, message: dict, timeout: float) -> dict:
        """Send `message`; the reply, or {"error": ...} when the process died or took over `timeout` s."""
        try:
            self.conn.send(message)
            if not self.conn.poll(timeout):
                self.process.terminate()
                return {"error": f"no answer within {timeout:.0f} s (stopped)"}
            reply = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.process.join(1)
            tail = self.log_tail()
            reply = {"error": f"the worker process died (exit code {self.process.exitcode})"
                              f"{': ' + tail if tail else ''}"}
        return reply

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the process printed, joined."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        """Ask the process to stop; terminate it if it does not."""
        try:
            if self.process.is_alive():
                self.conn.send({"op": "stop"})
                self.conn.poll(5)
        except (OSError, BrokenPipeError, EOFError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


def context():
    """The multiprocessing context: a forkserver with numpy, onnxruntime and this module preloaded, else spawn."""
    import multiprocessing
    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "onnxruntime", "onnxfn.runtime.loader",
                                     "onnxfn.tools.bench.workers"])
        return ctx
    except ValueError:
        return multiprocessing.get_context("spawn")
