"""What this container may use of the CPU: its architecture, the instruction-set features
that decide which artifact runs fastest, and its real CPU quota (cgroup limits and
affinity, never the host's core count)."""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")
#: Features onnxfn looks for, per architecture, as /proc/cpuinfo names them (amx_int8 is reported as amx).
FEATURES = {"x86_64": ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"),
            "aarch64": ("asimddp", "i8mm", "bf16", "sve")}
KNOWN = {name for names in FEATURES.values() for name in names} | {"amx"}
_features: dict[Path, tuple[str, ...] | None] = {}


def arch() -> str:
    """The architecture as manifests name it: x86_64 or aarch64 (amd64, arm64 renamed), else the machine's own name."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def features(cpuinfo: Path = CPUINFO, machine: str | None = None) -> tuple[str, ...] | None:
    """The known features this CPU has (sorted), or None where /proc/cpuinfo cannot be read
    (some FaaS sandboxes hide it): then only portable artifacts are chosen."""
    if cpuinfo in _features and machine is None:
        return _features[cpuinfo]
    machine = machine or arch()
    wanted = FEATURES.get(machine, ())
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        found = None
    else:
        flags: set[str] = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags.update(value.split())
                break  # the first CPU speaks for all: functions run on one CPU model
        found = tuple(sorted("amx" if f == "amx_int8" else f for f in wanted if f in flags)) if flags else None
    if machine == arch():
        _features[cpuinfo] = found
    return found


def describe() -> dict:
    """What answers report about the CPU."""
    found = features()
    return {"arch": arch(), "features": list(found) if found is not None else None}


def quota(cgroup: Path = CGROUP) -> float | None:
    """CPUs granted by the cgroup's CFS quota (v2 `cpu.max`, else v1), or None when unlimited."""
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]
        if limit != "max":
            return int(limit) / int(period) if int(limit) > 0 and int(period) > 0 else None
        return None
    except (OSError, ValueError):
        pass
    try:
        limit = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return limit / period if limit > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def affinity() -> int:
    """The CPUs this process may be scheduled on (its affinity mask), else the host's count where that is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads(cgroup: Path = CGROUP) -> int:
    """Intra-op threads: the CPUs this process may run on, capped by the quota (rounded up:
    1.5 CPUs of quota still profit from a second thread), at least one."""
    cpus = affinity()
    granted = quota(cgroup)
    if granted is not None:
        cpus = min(cpus, math.ceil(granted - 1e-9))
    return max(1, cpus)
