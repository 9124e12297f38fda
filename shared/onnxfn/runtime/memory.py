"""What this container may use of memory and what one inference costs of it: the function's limit (its own
cgroup's, or FN_MEMORY), what the process already holds, the peak growth of a block of code, the model's cost
as fixed + per-element bytes measured on a fresh session, and giving memory back after a large call."""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from onnxfn.bundles.manifest import InputSpec, MemoryCost
from onnxfn.runtime import cpu

if TYPE_CHECKING:
    import numpy as np

    from onnxfn.settings import Settings

PROC = Path("/proc/self")
#: v1 writes "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB pages); anything from here up
#: is no limit (no machine has 2**60 bytes)
UNLIMITED = 1 << 60
#: kept free below the limit whatever the model's cost says: the call's body, decoded image, mask and answer
#: live beside the inference, glibc keeps freed heap pages, the fdk and Python allocate while the model runs,
#: and the fitted cost follows ORT's arena, which grows in steps
HEADROOM = 32 << 20
#: image sizes (H = W, before rounding up to the input's pad multiple) a dynamic model is measured at, ascending:
#: small enough to cost a few ms each at the first load, large enough that the per-element part dominates
SIZES = (64, 128, 192)


def limit(settings_or_value: Settings | int | None = None, proc: Path = PROC,
          environ: dict[str, str] | None = None) -> int | None:
    """The function's memory limit in bytes: ONNXFN_MEMORY_BYTES when set (a `Settings`, or the value itself;
    0 or None: not set), else the smallest limit of this process's memory cgroup and its ancestors (v2
    `memory.max`, v1 `memory.limit_in_bytes`, found through `/proc/self/cgroup` and `/proc/self/mountinfo`),
    else FN_MEMORY (MB, what Fn sets), else None (unlimited, or unknown)."""
    value = getattr(settings_or_value, "memory_bytes", settings_or_value)
    if value:
        return int(value)
    found = cgroup_limit(proc)
    if found is not None:
        return found[0]
    megabytes = (os.environ if environ is None else environ).get("FN_MEMORY", "").strip()
    return int(megabytes) << 20 if megabytes.isdigit() and int(megabytes) > 0 else None


def cgroup_limit(proc: Path = PROC) -> tuple[int, str, Path] | None:
    """(bytes, "v1" or "v2", folder) of the smallest memory limit among this process's memory cgroup and its
    ancestors, or None where none is set or readable."""
    limits = [(b, version, folder) for version, folder, file in _folders(proc) if (b := _file_limit(file)) is not None]
    return min(limits) if limits else None


@functools.lru_cache(maxsize=8)
def _folders(proc: Path) -> tuple[tuple[str, Path, str], ...]:
    """The memory cgroup folders of a process and the file holding each one's limit, found once: a process does
    not change cgroup while it serves (the limits in them are read on every call; finding them took 0.2 ms of
    every call)."""
    return tuple((version, folder, str(folder / ("memory.max" if version == "v2" else "memory.limit_in_bytes")))
                 for version, folder in cpu.cgroup_folders(proc, "memory"))


def _read(path: Path | str) -> str:
    """A small kernel file's text: these are read on every call, and plain `os.read`s take a fraction of
    `Path.read_text`'s time (no text wrapper, no buffering); OSError where it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode("ascii", "replace")
    finally:
        os.close(fd)


def _file_limit(file: str) -> int | None:
    try:
        text = _read(file).strip()
    except OSError:
        return None
    if not text.isdigit() or not 0 < int(text) < UNLIMITED:  # v2 writes "max"
        return None
    return int(text)


def _status(key: str, proc: Path = PROC) -> int:
    """A kB figure of /proc/self/status in bytes (0 where it cannot be read)."""
    try:
        for line in _read(proc / "status").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss(proc: Path = PROC) -> int:
    """This process's resident memory (VmRSS) in bytes: what the OOM killer counts; 0 where /proc is hidden."""
    return _status("VmRSS", proc)


def working_set(proc: Path = PROC) -> int | None:
    """What the cgroup that sets the limit holds and cannot drop: its usage less its inactive file cache (the
    page cache the kernel reclaims before it OOM-kills), or None where no cgroup limit is readable. Unlike RSS it
    counts the container's other processes and files in tmpfs (/tmp on many FaaS platforms)."""
    found = _limiting(proc)
    if found is None:
        return None
    version, folder = found
    usage_file, inactive_key = ("memory.current", "inactive_file") if version == "v2" else \
        ("memory.usage_in_bytes", "total_inactive_file")
    try:
        usage = int(_read(folder / usage_file))
        stat = dict(line.split()[:2] for line in _read(folder / "memory.stat").splitlines() if " " in line)
        return max(0, usage - int(stat.get(inactive_key, 0)))
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=8)
def _limiting(proc: Path) -> tuple[str, Path] | None:
    """(version, folder) of the cgroup whose limit binds, found once per process (a container keeps its memory
    cgroup and limits): `working_set` runs on every call, and finding it reads every ancestor's limit file."""
    found = cgroup_limit(proc)
    return None if found is None else found[1:]


def available(memory_limit: int | None, proc: Path = PROC) -> int | None:
    """What a call may still allocate under `memory_limit`: the limit less what is held (the larger of this
    process's RSS and its cgroup's working set) and less `HEADROOM`; None when there is no limit."""
    if memory_limit is None:
        return None
    held = max(rss(proc), working_set(proc) or 0)
    return max(0, memory_limit - held - HEADROOM)


class Peak:
    """The peak growth of this process's resident memory inside a `with` block, in bytes (`.bytes`): VmHWM is
    reset to the current RSS on entry (writing 5 to /proc/self/clear_refs) and read on exit; where clear_refs
    cannot be written, RSS after less RSS before (which misses memory freed inside the block). The process is
    measured as a whole: other threads' allocations count too."""

    def __init__(self, proc: Path = PROC):
        self.proc = proc
        self.before = 0
        self.bytes = 0
        self.exact = False  # whether the peak (VmHWM) was measured, not only the growth

    def __enter__(self) -> Peak:
        self.before = rss(self.proc)
        try:
            (self.proc / "clear_refs").write_text("5")
            self.exact = True
            self.before = rss(self.proc)
        except OSError:
            self.exact = False
        return self

    def __exit__(self, *exc) -> None:
        after = _status("VmHWM", self.proc) if self.exact else rss(self.proc)
        self.bytes = max(0, after - self.before)


def trim() -> None:
    """Hand glibc's free heap pages back to the kernel (`malloc_trim(0)`); nothing where the C library is not
    glibc (musl, macOS)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc():
    """glibc, where it has malloc_trim (None elsewhere): loaded on the first large call, kept off the cold start."""
    import ctypes
    import ctypes.util
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return lib if hasattr(lib, "malloc_trim") else None


def dynamic(spec: InputSpec) -> bool:
    """Whether the input's image height or width is left to the image (a model whose cost grows with it)."""
    if not spec.layout or (spec.image is not None and spec.image.size is not None):
        return False
    return any(not isinstance(spec.shape[spec.layout.index(a)], int) for a in "HW" if a in spec.layout)


def shapes(spec: InputSpec, sizes: tuple[int, ...] = SIZES) -> list[list[int]]:
    """The input shapes `measure` runs: one per size for a dynamic image input (H = W = size rounded up to the
    pad multiple, batch 1), else the one shape the input takes."""
    from onnxfn.runtime.model import example
    fixed = list(example(spec).shape)
    if not dynamic(spec):
        return [fixed]
    out = []
    for size in sizes:
        shape = list(fixed)
        padded = spec.image.padded(size, size) if spec.image else (size, size)
        for axis, side in zip((spec.layout.index(a) for a in "HW"), padded):
            if not isinstance(spec.shape[axis], int):
                shape[axis] = side
        out.append(shape)
    return out


def measure(session, spec: InputSpec, sizes: tuple[int, ...] = SIZES,
            feeds: dict[str, np.ndarray] | None = None) -> MemoryCost:
    """The model's memory cost, from runs of `session` (which must be fresh: an arena grown by earlier runs
    would hide their cost) on zeros of `shapes(spec, sizes)`, in ascending order. Each run's peak is the growth
    over the RSS before the first run, so what the arena kept from the smaller runs still counts. The cost is
    fitted by least squares (non-negative), then its fixed part raised until no run is above the line: ORT's
    arena grows in steps, and an under-estimate is what gets a container OOM-killed. `feeds` holds the other
    inputs (and for a fixed-shape input, what to run instead of zeros); a fixed shape is one run, per_element 0."""
    import numpy as np
    from onnxfn.runtime.model import example
    others = {k: v for k, v in (feeds or {}).items() if k != spec.name}
    trim()  # freed heap pages the arena would reuse would hide its growth
    base = rss()
    runs = []
    dtype = example(spec).dtype
    for shape in shapes(spec, sizes):
        if feeds is not None and spec.name in feeds and not dynamic(spec):
            value = feeds[spec.name]
        else:
            value = np.zeros(shape, dtype=dtype)
        with Peak() as peak:
            session.run(None, {spec.name: value, **others})
            del value
        runs.append({"shape": shape, "peak": max(0, peak.before + peak.bytes - base)})
    return fit(runs)


def fit(runs: list[dict]) -> MemoryCost:
    """fixed + per_element x elements over the runs ({"shape", "peak"}): the least-squares slope (0 when
    negative), and the smallest fixed part that leaves every run on or under the line."""
    elements = [math.prod(r["shape"]) for r in runs]
    peaks = [r["peak"] for r in runs]
    slope = 0.0
    if len(set(elements)) > 1:
        mean_e, mean_p = sum(elements) / len(elements), sum(peaks) / len(peaks)
        spread = sum((e - mean_e) ** 2 for e in elements)
        slope = round(max(0.0, sum((e - mean_e) * (p - mean_p) for e, p in zip(elements, peaks)) / spread), 3)
    fixed = max(0, max(math.ceil(p - slope * e) for e, p in zip(elements, peaks)))
    return MemoryCost(fixed=fixed, per_element=slope, measured=tuple(runs))

