"""What /proc says about a process and the machine, for the benchmarks (standard library only, so that
the cold-start probe can import it without changing what it times)."""
from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def status(pid: int | str = "self") -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS in MB, and the thread count, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            out[key] = int(value)
    return out


def cpu_ms(pid: int | str = "self") -> float:
    """User + system CPU time the process has used so far, ms (/proc/<pid>/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
