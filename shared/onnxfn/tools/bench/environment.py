"""What the bench records about this machine and its libraries, and onnxruntime's load errors in a sentence."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import numpy as np

from onnxfn.runtime import cpu
from onnxfn.tools.bench.options import BenchError

#: The providers the bench knows, by short name (--providers).
PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
SHORT = {v: k for k, v in PROVIDERS.items()}


def explain_load_error(message: str, provider: str = "CPUExecutionProvider") -> str:
    """Turn onnxruntime's load errors into one sentence naming the operator at fault."""
    version = ort_version()
    m = re.search(r"Could not find an implementation for (\S+?)\((\d+)\) node with name '([^']*)'", message)
    if m:
        return (f"onnxruntime {version} ({provider}) has no kernel for operator {m[1]} (opset {m[2]}, node "
                f"{m[3]!r}): re-export the model with operators and types this runtime supports, or use a newer "
                f"onnxruntime")
    m = re.search(r"([\w.]+:)?(\w+)\((-?\d+)\) is not a registered function/op", message)
    if m:
        domain = (m[1] or "").rstrip(":") or "ai.onnx"
        return (f"onnxruntime {version} ({provider}) does not know operator {m[2]} (domain {domain}"
                f"{', opset ' + m[3] if m[3] != '-1' else ''}): a custom operator needs its library registered, "
                f"else re-export with standard operators")
    m = re.search(r"Type '([^']+)' of input parameter \(([^)]*)\) of operator \((\w+)\)", message)
    if m:
        return (f"onnxruntime {version} ({provider}) cannot run operator {m[3]} on {m[1]} (input {m[2]!r}): the "
                f"operator does not take that type; cast or re-export the model")
    m = re.search(r"No Op registered for (\w+) with domain_version of (\d+)", message)
    if m:
        return (f"onnxruntime {version} ({provider}) has no operator {m[1]} at opset {m[2]}: re-export the model "
                f"at an opset this runtime supports")
    return f"onnxruntime {version} ({provider}) cannot load the model: {message.strip()}"


def available_providers() -> list[str]:
    """The execution providers of this onnxruntime build the bench knows (PROVIDERS)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BenchError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-openvino)") from None
    return [p for p in ort.get_available_providers() if p in SHORT]


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where /proc/loadavg is missing)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def ort_version() -> str:
    """onnxruntime's version, or "(not installed)"."""
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return "(not installed)"


def dist_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def runtime_label() -> str:
    """Which onnxruntime build this is: `onnxruntime 1.32.0`, `onnxruntime-openvino 1.24.1`, ..."""
    for dist in ("onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime"):
        version = dist_version(dist)
        if version:
            return f"{dist} {version}"
    return f"onnxruntime {ort_version()}"


def machine() -> dict:
    """The CPU (model, features, quota), memory, platform, libraries and providers, for results.json."""
    model, flags = None, []
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and model is None:
                model = value.strip()
            if key in ("flags", "features") and not flags:
                flags = value.split()
    except OSError:
        pass
    vector = sorted(f for f in flags if re.match(r"(avx|sse|fma|f16c|amx|vnni|asimd|sve|i8mm|bf16)", f))
    memory = None
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, IndexError, ValueError):
        pass
    libraries = {"python": platform.python_version(), "onnxruntime": runtime_label(),
                 "numpy": np.__version__, "onnxfn": dist_version("onnxfn")}
    for dist in ("torch", "scikit-learn", "matplotlib", "openvino"):
        version = dist_version(dist)
        if version:
            libraries[dist] = version
    try:
        providers = available_providers()
    except BenchError:
        providers = []
    return {"cpu_model": model or platform.processor() or "unknown", "cpu": cpu.describe(),
            "vector_flags": vector, "cores": os.cpu_count(), "affinity": cpu.affinity(), "quota": cpu.quota(),
            "threads": cpu.threads(), "memory_mb": memory, "platform": platform.platform(),
            "libraries": libraries, "providers": providers}


def engine_version(engine: str) -> str:
    """The library and version behind a candidate's engine."""
    if engine == "onnxruntime":
        return runtime_label()
    if engine == "sklearn":
        return f"scikit-learn {dist_version('scikit-learn')}"
    return f"torch {dist_version('torch')}"
