"""The battery's memory rows: the demo U-Net under the real fdk inside a real memory cgroup (v1
`memory.limit_in_bytes`, swap capped too), one 16-bit PNG per size (a square lesion on zeros, so the files are
tiny and pass every body limit), at each memory limit. Every row must be answered (200, whole or tiled, or
413 insufficient_memory), the process alive and its peak under the limit.

    python bench/reliability/memory.py [--limits 256,512] [--sizes 512,1024,2048,3072,4096] [--tile 256]

Needs root and cgroup v1 (the cgroup is created and removed here)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "shared"), str(ROOT)]

from tests.support.cgroups import FDK, MEMORY_V1, remove  # noqa: E402
from tests.support.images import lesion_png  # noqa: E402

MB = 1 << 20


def tiled_bundle(folder: Path, tile: int, overlap: float = 0.25) -> Path:
    """The demo U-Net's bundle with `tiling` in its manifest (no memory cost: it is measured at the first load)."""
    bundle = folder / "lesion-unet-tiled"
    shutil.copytree(ROOT / "models" / "lesion-unet", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["inputs"][0]["image"]["tiling"] = {"tile": [tile, tile], "overlap": overlap, "blend": "gaussian"}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


class MemoryCgroup:
    """A child of the v1 memory controller with a hard limit (memory and memory+swap), removed on exit."""

    def __init__(self, limit_mb: int):
        self.folder = MEMORY_V1 / f"onnxfn-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.limit = limit_mb * MB

    def __enter__(self) -> "MemoryCgroup":
        self.folder.mkdir()
        (self.folder / "memory.limit_in_bytes").write_text(str(self.limit))
        try:
            (self.folder / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
        except OSError:
            pass  # no swap accounting: no swap to escape to either
        return self

    def read(self, name: str) -> int:
        """An integer file of the cgroup (memory.max_usage_in_bytes, memory.failcnt ...)."""
        return int((self.folder / name).read_text().split()[0])

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup."""
        for line in (self.folder / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def reset_peak(self) -> None:
        (self.folder / "memory.max_usage_in_bytes").write_text("0")

    def __exit__(self, *exc) -> None:
        remove(self.folder)


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_limit(limit_mb: int, sizes: list[int], bundle: Path, threads: int) -> list[dict]:
    """Every size through one function inside a cgroup of `limit_mb`: status, code, RSS after, cgroup peak."""
    from onnxfn.tools.dev.agent import Function

    rows = []
    with MemoryCgroup(limit_mb) as group:
        fn = Function(env={"MODEL_URI": str(bundle), "ONNXFN_BAKED_BUNDLE": "", "ONNXFN_THREADS": str(threads)},
                      command=[sys.executable, "-c", FDK, str(group.folder)], timeout=300).start()
        try:
            fn.call(lesion_png(64), "image/png", deadline=120)  # the cold start, out of the rows
            for size in sizes:
                body = lesion_png(size)
                group.reset_peak()
                started = time.perf_counter()
                try:
                    reply = fn.call(body, "image/png", method="POST", url="/predict", deadline=120)
                    status = reply.http_status
                    answer = reply.json() if reply.body[:1] == b"{" else {}
                except Exception as e:  # the process died under us: that is the finding
                    status, answer = 0, {"code": f"no answer: {type(e).__name__}"}
                rows.append({"limit_mb": limit_mb, "size": size, "png_bytes": len(body), "status": status,
                             "answer": answer.get("code") or ("tiled" if answer.get("tiling") else "whole"),
                             "ms": round((time.perf_counter() - started) * 1000),
                             "rss_after_mb": rss_mb(fn.process.pid),
                             "peak_mb": round(group.read("memory.max_usage_in_bytes") / MB, 1),
                             "alive": fn.alive, "oom_kills": group.oom_kills()})
                time.sleep(0.2)  # an OOM kill lands after the connection drops
                rows[-1]["alive"] = fn.alive
                if not fn.alive:
                    fn.stop()
                    fn.start()
                    fn.call(lesion_png(64), "image/png", deadline=120)
        finally:
            fn.stop()
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Run the memory rows, print them as a table and return them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="256,512", help="memory limits in MB, comma-separated")
    parser.add_argument("--sizes", default="512,1024,2048,3072,4096", help="image sides in pixels")
    parser.add_argument("--tile", type=int, default=256, help="the tile side the bundle is packaged with")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not os.access(MEMORY_V1 / "cgroup.procs", os.W_OK):
        print("memory rows skipped: the v1 memory controller is not writable here (needs root and cgroup v1)")
        return {"skipped": True}
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="onnxfn-memory-") as tmp:
        bundle = tiled_bundle(Path(tmp), args.tile)
        rows = [row for limit in args.limits.split(",") for row in run_limit(int(limit), sizes, bundle, args.threads)]
    print(f"memory rows: demo U-Net, tile {args.tile}, {args.threads} thread(s), real fdk in a v1 memory cgroup")
    print("| limit | image | PNG bytes | status | answer | ms | RSS after | cgroup peak | alive | OOM kills |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['limit_mb']} MB | {r['size']}² | {r['png_bytes']:,} | {r['status']} | {r['answer']} | {r['ms']} "
              f"| {r['rss_after_mb'] or 0:.0f} MB | {r['peak_mb']:.0f} MB | {r['alive']} | {r['oom_kills']} |")
    ok = all(r["status"] in (200, 413) and r["alive"] and r["oom_kills"] == 0 and r["peak_mb"] < r["limit_mb"]
             for r in rows)
    print("memory rows:", "PASS" if ok else "FAIL", "(every row 200 or 413, alive, no OOM kill, peak under the limit)")
    return {"rows": rows, "ok": ok}


if __name__ == "__main__":
    sys.exit(0 if main().get("ok", True) else 1)
