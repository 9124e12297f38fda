"""What this container may use of the CPU: its architecture, the instruction-set features
that decide which artifact runs fastest, and its real CPU quota (cgroup limits and
affinity, never the host's core count)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
PROC = Path("/proc/self")
CPUINFO = Path("/proc/cpuinfo")
#: Features onnxfn looks for, per architecture, as /proc/cpuinfo names them (amx_int8 is reported as amx).
FEATURES = {"x86_64": ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"),
            "aarch64": ("asimddp", "i8mm", "bf16", "sve")}
KNOWN = {name for names in FEATURES.values() for name in names} | {"amx"}
_features: dict[Path, tuple[str, ...] | None] = {}


def arch() -> str:
    """The architecture as manifests name it: x86_64 or aarch64 (amd64, arm64 renamed), else the machine's own name."""
    machine = os.uname().machine.lower()  # what platform.machine() reads, without importing platform
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


def quota(cgroup: Path | None = None, proc: Path = PROC) -> float | None:
    """CPUs granted by the CFS quota, or None when unlimited. By default the quota of this process's own
    cgroup and of its ancestors (the smallest wins), found through `/proc/self/cgroup` and
    `/proc/self/mountinfo` for cgroup v2 and v1 alike, as uber-go/automaxprocs does; a container that
    sees only its own cgroup at the mount root falls back to `/sys/fs/cgroup`. `cgroup` names one folder
    to read instead (v2 `cpu.max`, else v1 `cpu/cpu.cfs_quota_us`)."""
    if cgroup is not None:
        return _folder_quota(cgroup)
    levels = cgroup_folders(proc)
    if not levels:
        return _folder_quota(CGROUP)
    granted = [q for version, folder in levels if (q := _level_quota(version, folder)) is not None]
    return min(granted) if granted else None


def cgroup_folders(proc: Path = PROC, controller: str = "cpu") -> list[tuple[str, Path]]:
    """The folders of this process's cgroup for `controller` ("cpu", "memory": the v1 hierarchy that holds it;
    v2 has one) and of its ancestors up to the hierarchy's mount point, most specific first, each as ("v2" or
    "v1", folder); empty where /proc cannot tell."""
    try:
        membership = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    paths = {}
    for line in membership:  # hierarchy-id:controllers:path
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths["v2"] = parts[2]
        elif controller in parts[1].split(","):
            paths["v1"] = parts[2]
    found: list[tuple[str, Path]] = []
    for line in mounts:  # id parent major:minor root mount-point options [optional...] - fstype source super-options
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        v1 = tail[0] == "cgroup" and controller in tail[2].split(",")
        version = "v2" if tail[0] == "cgroup2" else "v1" if v1 else None
        if version is None or version not in paths or any(v == version for v, _ in found):
            continue
        root, point, path = _unescape(fields[3]), Path(_unescape(fields[4])), paths[version]
        if root != "/" and path != root and not path.startswith(root.rstrip("/") + "/"):
            continue  # this process's cgroup is not below what this mount shows
        relative = path[len(root):] if root != "/" else path
        folder = point / relative.strip("/")
        while True:
            found.append((version, folder))
            if folder == point or point not in folder.parents:
                break
            folder = folder.parent
    return found


def _unescape(field: str) -> str:
    """mountinfo writes spaces, tabs, newlines and backslashes in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _level_quota(version: str, folder: Path) -> float | None:
    return _v2(folder)[1] if version == "v2" else _v1(folder)


def _folder_quota(cgroup: Path) -> float | None:
    """One folder: v2 `cpu.max` when it can be read, else v1 `cpu/cpu.cfs_quota_us`."""
    readable, granted = _v2(cgroup)
    return granted if readable else _v1(cgroup / "cpu")


def _v2(folder: Path) -> tuple[bool, float | None]:
    """(whether `cpu.max` could be read, the CPUs it grants or None for unlimited)."""
    try:
        limit, period = (folder / "cpu.max").read_text().split()[:2]
        if limit == "max":
            return True, None
        return True, (int(limit) / int(period) if int(limit) > 0 and int(period) > 0 else None)
    except (OSError, ValueError):
        return False, None


def _v1(folder: Path) -> float | None:
    try:
        limit = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return limit / period if limit > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def affinity() -> int:
    """The CPUs this process may be scheduled on (its affinity mask), else the host's count where that is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads(cgroup: Path | None = None) -> int:
    """Intra-op threads: the CPUs this process may run on, capped by the quota (rounded up:
    1.5 CPUs of quota still profit from a second thread), at least one."""
    cpus = affinity()
    granted = quota(cgroup)
    if granted is not None:
        cpus = min(cpus, math.ceil(granted - 1e-9))
    return max(1, cpus)
