"""The reliability battery in one command: memory under real cgroup limits, fuzzing of every decoder,
a soak of varied calls, and storage faults, each printing its figures (docs/reliability.md quotes them).

    python bench/reliability                  # every row at the issue's sizes (about 30 minutes on 2 cores)
    python bench/reliability --quick          # every row, small counts (a few minutes)
    python bench/reliability --only fuzz,soak # some rows

Each row is a module of this folder with `main(argv) -> dict`; it can also be run on its own with its options
(`python bench/reliability/fuzz.py --help`). The exit status is 1 when a row fails its goal."""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ROWS = ("memory", "fuzz", "soak", "faults")
#: the small counts of --quick, per row
QUICK = {"memory": ["--limits", "256", "--sizes", "512,2048,4096"], "fuzz": ["--count", "5000"],
         "soak": ["--calls", "500"], "faults": []}


def cpu() -> str:
    """The CPU model and whether it has AVX-512 VNNI, for the record."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return f"{model} ({'avx512_vnni' if 'avx512_vnni' in text else 'no VNNI'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run, comma-separated ({', '.join(ROWS)})")
    parser.add_argument("--quick", action="store_true", help="small counts, to try the battery")
    parser.add_argument("--out", type=Path, help="write every row's figures here as JSON")
    args = parser.parse_args(argv)
    print(f"reliability battery on {cpu()}, {platform.python_version()}")
    results, failed = {}, []
    for row in args.only.split(","):
        if row not in ROWS:
            parser.error(f"unknown row {row!r}; rows are {', '.join(ROWS)}")
        print(f"\n== {row} ==", flush=True)
        started = time.perf_counter()
        result = importlib.import_module(row).main(QUICK[row] if args.quick else [])
        result["seconds"] = round(time.perf_counter() - started, 1)
        results[row] = result
        if result.get("ok") is False:
            failed.append(row)
    times = ", ".join(f"{row} {result['seconds']} s" for row, result in results.items())
    print(f"\nbattery: {'FAIL: ' + ', '.join(failed) if failed else 'PASS'} ({times})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
