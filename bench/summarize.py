"""Markdown tables for BENCHMARKS.md from `onnxfn bench` results (bench/results/*/merged|main/results.json).

    python bench/summarize.py bench/results/densenet121/merged/results.json [--top 12]

Prints the machine line, the candidates (the fastest `--top` ONNX Runtime ones plus every framework
and OpenVINO candidate) and the comparisons, each with its accuracy column.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
from onnxfn.tools.bench import _accuracy_text, _ms  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    r = json.loads(args.results.read_text())
    load = r["loadavg"]
    sources = r.get("merged_from") or [{"loadavg": load, "onnxruntime": r["machine"]["libraries"]["onnxruntime"]}]
    print(f"_{r['target']['name']}: {', '.join(c['shape'] for c in r['inputs']['cases'])}; inputs "
          f"{r['inputs']['source']}; {r['settings']['runs']} runs in {r['settings']['rounds']} rounds; reference "
          f"`{r['reference']['candidate']}`; load average " +
          "; ".join(f"{s['onnxruntime']}: {s['loadavg']['before'][0]} before, "
                    f"{s['loadavg'].get('max_1min', s['loadavg']['after'][0])} highest" for s in sources) + "_")
    print()
    shapes = [c["shape"] for c in r["inputs"]["cases"]]
    multi = len(shapes) > 1
    print("| candidate | create ms | first run ms | p50 ms | p90 ms | p99 ms | rounds min/med/max ms | peak RSS MB "
          "| accuracy vs reference | |" + ("".join(f" p50 {s} |" for s in shapes) if multi else ""))
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" * len(shapes) if multi else ""))
    rank = {cid: k for k, cid in enumerate(r["ranking"])}
    ok = sorted((c for c in r["candidates"] if c["status"] == "ok"), key=lambda c: rank.get(c["id"], 1e9))
    shown, n = [], 0
    for c in ok:
        cpu = c["engine"] == "onnxruntime" and c["provider"] == "CPUExecutionProvider"
        if cpu and n >= args.top and not c.get("default"):
            continue
        n += cpu
        shown.append(c)
    winner = (r.get("winner") or {}).get("id")
    for c in shown:
        rounds = c["cases"][0]["rounds"] if len(c["cases"]) == 1 else None
        flags = [f for f, on in (("**winner**", c["id"] == winner), ("default", c.get("default")),
                                 ("reference", c.get("reference")), ("noisy", c.get("noisy")),
                                 ("OUT OF TOLERANCE", c.get("within_tolerance") is False)) if on]
        rr = f"{_ms(rounds['min_ms'])}/{_ms(rounds['median_ms'])}/{_ms(rounds['max_ms'])}" if rounds else "-"
        per = "".join(f" {_ms(next((k['p50_ms'] for k in c['cases'] if k['shape'] == s), None))} |" for s in shapes) \
            if multi else ""
        print(f"| `{c['id']}` | {_ms(c['create_ms'])} | {_ms(c['first_run_ms'])} | {_ms(c['p50_ms'])} | "
              f"{_ms(c['p90_ms'])} | {_ms(c['p99_ms'])} | {rr} | {c['peak_rss_mb']:.0f} | "
              f"{_accuracy_text(c['accuracy'])} | {' '.join(flags)} |{per}")
    hidden = len(ok) - len(shown)
    failed = [c for c in r["candidates"] if c["status"] != "ok"]
    if hidden or failed:
        print(f"\n({hidden} slower CPU-provider candidates not shown{'; failed: ' if failed else ''}"
              f"{', '.join(c['id'] + ': ' + (c['error'] or '')[:80] for c in failed)})")
    print()
    print("| comparison | a | b | a p50 ms | b p50 ms | a is x times as fast | a accuracy | b accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for c in r["comparisons"]:
        print(f"| {c['what']} | `{c['a']}` | `{c['b']}` | {_ms(c['a_p50_ms'])} | {_ms(c['b_p50_ms'])} | "
              f"**{c['speedup']:.2f}** | {c['a_accuracy']} | {c['b_accuracy']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
