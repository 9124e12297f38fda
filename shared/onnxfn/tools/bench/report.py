"""The bench's reports: the terminal table and summary, report.md, latency.png and results.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from onnxfn.tools.bench.stats import geomean


def accuracy_text(figures: dict | None) -> str:
    """A candidate's accuracy record in a few words ("reference" for the reference itself)."""
    if not figures:
        return "-"
    if "error" in figures:
        return figures["error"]
    if figures.get("reference") is None:
        return "reference"
    parts = [f"max abs diff {figures['max_abs_diff']:.2g}"]
    if "top1_agreement" in figures:
        parts.append(f"top-1 {figures['top1_agreement']:.3f}")
    if "dice" in figures:
        parts.append(f"Dice {figures['dice']:.4f}")
    return ", ".join(parts)


def ms(v) -> str:
    """Milliseconds with the digits that matter ("-" for none)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _row(c: dict, winner: str | None) -> list[str]:
    ok = c["status"] == "ok"
    rounds = [case["rounds"] for case in c["cases"] if case.get("rounds")]
    rr = (f"{ms(geomean([r['min_ms'] for r in rounds]))}/{ms(geomean([r['median_ms'] for r in rounds]))}/"
          f"{ms(geomean([r['max_ms'] for r in rounds]))}") if rounds else "-"
    flags = []
    if c["id"] == winner:
        flags.append("WINNER")
    if c.get("default"):
        flags.append("default")
    if c.get("reference"):
        flags.append("reference")
    if c.get("noisy"):
        flags.append("noisy")
    if ok and c.get("within_tolerance") is False:
        flags.append("OUT OF TOLERANCE")
    if not ok:
        flags.append(f"FAILED: {c.get('error') or c['status']}"[:100])
    return [c["id"], ms(c.get("create_ms")), ms(c.get("first_run_ms")), ms(c.get("p50_ms")), ms(c.get("p90_ms")),
            ms(c.get("p99_ms")), rr, "-" if c.get("peak_rss_mb") is None else f"{c['peak_rss_mb']:.0f}",
            "-" if c.get("model_rss_mb") is None else f"{c['model_rss_mb']:.0f}",
            accuracy_text(c.get("accuracy")) if ok else "-", " ".join(flags)]


HEADER = ["candidate", "create ms", "first ms", "p50 ms", "p90 ms", "p99 ms", "rounds min/med/max",
          "peak RSS MB", "+model MB", "accuracy vs reference", "notes"]


def _ordered(result: dict) -> list[dict]:
    rank = {cid: k for k, cid in enumerate(result.get("ranking", []))}
    return sorted(result["candidates"], key=lambda c: rank.get(c["id"], len(rank)))


def table(result: dict) -> str:
    """The candidates, fastest first, as an aligned text table."""
    winner = (result.get("winner") or {}).get("id")
    rows = [HEADER] + [_row(c, winner) for c in _ordered(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(v.ljust(widths[i]) if i in (0, 9, 10) else v.rjust(widths[i]) for i, v in enumerate(r)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(result: dict, files: dict[str, str]) -> str:
    """report.md: the machine, the settings, the candidates, the comparisons and the verdict."""
    t, m = result["target"], result["machine"]
    s = result["settings"]
    lines = [f"# onnxfn bench: {t['name']}", "",
             f"- model: `{t['path']}` ({t['kind']}, task {t['task']}, portable sha256 `{t['portable_sha256'][:16]}…`)",
             f"- machine: {m['cpu_model']}, {m['cpu']['arch']}, features known to onnxfn: "
             f"{', '.join(m['cpu']['features'] or []) or 'none'}; vector flags: {' '.join(m['vector_flags']) or '-'}",
             f"- cores {m['cores']}, affinity {m['affinity']}, quota {m['quota'] or 'unlimited'}, "
             f"threads from quota {m['threads']}, memory {m['memory_mb']} MB",
             f"- libraries: {', '.join(v if str(v).startswith(k) else f'{k} {v}' for k, v in m['libraries'].items())}; providers "
             f"{', '.join(m['providers'])}",
             f"- load average (1, 5, 15 min): before {result['loadavg']['before']}, after {result['loadavg']['after']}"
             f"; highest 1-min value while timing {result['loadavg'].get('max_1min')}",
             f"- run: {result['created']}; {s['runs']} timed runs per candidate and shape in {s['rounds']} round-robin "
             f"rounds (batches {s['batches']}), {s['warmup']} warm-up; inputs: {result['inputs']['source']}; "
             f"shapes {', '.join(c['shape'] for c in result['inputs']['cases'])}; accuracy on "
             f"{result['inputs']['accuracy_inputs']} input(s) against `{result['reference']['candidate']}`",
             f"- tolerance: fp32 max abs diff <= {s['thresholds']['max_abs_diff']:g}; int8 top-1 >= "
             f"{s['thresholds']['min_top1']:g} (classification), Dice >= {s['thresholds']['min_dice']:g} "
             f"(segmentation), max rel diff <= {s['thresholds']['max_rel_diff']:g} (tensor)"]
    if result.get("command"):
        lines.append(f"- command: `{' '.join(result['command'])}`")
    for f in result.get("merged_from", []):
        lines.append(f"- merged: `{f['file']}` ({f['onnxruntime']}, providers {', '.join(f['providers'])}, "
                     f"load {f['loadavg']['before']} -> {f['loadavg']['after']})")
    lines += ["", "## Candidates (fastest first; latency = geometric mean over the shapes)", "",
              "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    winner = (result.get("winner") or {}).get("id")
    for c in _ordered(result):
        lines.append("| " + " | ".join(v.replace("|", "/") for v in _row(c, winner)) + " |")
    if any(len(c["cases"]) > 1 for c in result["candidates"]):
        shapes = [c["shape"] for c in result["inputs"]["cases"]]
        lines += ["", "### p50 ms per shape", "", "| candidate | " + " | ".join(shapes) + " |",
                  "|---|" + "---|" * len(shapes)]
        for c in _ordered(result):
            by = {case["shape"]: case for case in c["cases"]}
            lines.append(f"| {c['id']} | " + " | ".join(ms(by[s]["p50_ms"]) if s in by else "-" for s in shapes) + " |")
    lines += ["", "## Comparisons", "", "| comparison | a | b | a p50 ms | b p50 ms | a is x times as fast | "
              "a accuracy | b accuracy |", "|---|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        lines.append(f"| {c['what']} | {c['a']} | {c['b']} | {ms(c['a_p50_ms'])} | {ms(c['b_p50_ms'])} | "
                     f"{c['speedup']:.2f} | {c['a_accuracy']} | {c['b_accuracy']} |")
    lines += ["", "## Verdict", ""]
    w, wc = result.get("winner"), result.get("winner_cpu_provider")
    if w:
        lines.append(f"- fastest within tolerance: **{w['id']}**, p50 {ms(w['p50_ms'])} ms"
                     + (f", {w['speedup_vs_default']:.2f}x the runner's default ({result['default']['id']}, "
                        f"{ms(w['default_p50_ms'])} ms)" if w.get("default_p50_ms") else "")
                     + (f"; runner-up {w['runner_up']['id']} {w['runner_up']['margin'] * 100:.1f} % slower"
                        f"{' (within the noise between rounds)' if w.get('margin_within_noise') else ''}"
                        if w.get("runner_up") else ""))
        if wc and wc["id"] != w["id"]:
            lines.append(f"- fastest on the CPU provider (what the runner can apply): **{wc['id']}**, p50 "
                         f"{ms(wc['p50_ms'])} ms")
    else:
        lines.append("- no ONNX Runtime candidate was within tolerance")
    if result.get("written"):
        lines.append(f"- recorded in `{result['written']['manifest']}` as the tuning for "
                     f"{result['written']['requires']}")
    if result["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s['what']}: {s['why']}" for s in result["skipped"]]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in files.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> str | None:
    """Latency distributions per candidate (one panel per shape); None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: pip install -e '.[bench]' for the latency plot"
    cands = [c for c in _ordered(result) if c["status"] == "ok" and c["cases"]]
    if not cands:
        return "nothing to plot"
    shapes = [c["shape"] for c in result["inputs"]["cases"]]
    colors = {"CPUExecutionProvider": "#1f77b4", "OpenVINOExecutionProvider": "#6a3d9a", "pytorch": "#ff7f0e",
              "torch.compile": "#d62728", "torchscript": "#ff9896", "sklearn": "#2ca02c"}
    winner = (result.get("winner") or {}).get("id")
    height = max(3.0, 0.32 * len(cands) + 1.6)
    fig, axes = plt.subplots(1, len(shapes), figsize=(7.5 * len(shapes), height), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        data, labels, tint = [], [], []
        for c in reversed(cands):
            case = next((k for k in c["cases"] if k["shape"] == shape), None)
            data.append(case["samples_ms"] if case else [float("nan")])
            labels.append(("* " if c["id"] == winner else "") + c["id"] + ("" if c["within_tolerance"] is not False
                                                                           else " (inaccurate)"))
            tint.append(colors.get(c["provider"] or c["engine"], "#7f7f7f"))
        style = dict(patch_artist=True, widths=0.6, showfliers=True, flierprops={"markersize": 2, "alpha": 0.5})
        try:
            parts = ax.boxplot(data, orientation="horizontal", **style)
        except TypeError:  # matplotlib < 3.10
            parts = ax.boxplot(data, vert=False, **style)
        for patch, colour in zip(parts["boxes"], tint):
            patch.set_facecolor(colour)
            patch.set_alpha(0.55)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
        finite = [x for d in data for x in d if math.isfinite(x)]
        if finite and max(finite) / max(min(finite), 1e-9) > 30:
            ax.set_xscale("log")
        ax.set_xlabel("latency per inference (ms)")
        ax.set_title(f"{result['target']['name']} {shape}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    load = result["loadavg"]
    fig.suptitle(f"{result['machine']['cpu_model']}, {result['machine']['threads']} CPU(s); load "
                 f"{load['before']} -> {load['after']}; * = winner", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def save(result: dict, out: Path) -> dict[str, str]:
    """Write results.json, report.md and latency.png (when matplotlib is there) in `out`; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "results.json"), "markdown": str(out / "report.md"), "plot": str(out / "latency.png")}
    problem = plot(result, Path(files["plot"]))
    if problem:
        files.pop("plot")
        if problem not in result["notes"]:
            result["notes"].append(problem)
    result["files"] = files
    Path(files["markdown"]).write_text(markdown(result, files), encoding="utf-8")
    Path(files["json"]).write_text(json.dumps(result, indent=1, default=_json_default) + "\n", encoding="utf-8")
    return files


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def summary(result: dict, files: dict[str, str]) -> str:
    """What the command prints: the table, the comparisons, the winner, what was skipped and written."""
    lines = [table(result), ""]
    for c in result["comparisons"]:
        lines.append(f"{c['what']}: {c['a']} {ms(c['a_p50_ms'])} ms vs {c['b']} {ms(c['b_p50_ms'])} ms = "
                     f"{c['speedup']:.2f}x")
    w = result.get("winner")
    lines.append("")
    lines.append(f"winner: {w['id']} (p50 {ms(w['p50_ms'])} ms)" if w else "winner: none within tolerance")
    lines += [f"skipped {s['what']}: {s['why']}" for s in result["skipped"]]
    lines += [f"note: {n}" for n in result["notes"]]
    if result.get("written"):
        lines.append(f"recorded tuning {result['written']['tuning']} for {result['written']['requires']} in "
                     f"{result['written']['manifest']}")
    lines.append(f"wrote {', '.join(files.values())}")
    return "\n".join(lines)
