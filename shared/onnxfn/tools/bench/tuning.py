"""`--write`: the fastest CPU-provider candidate within tolerance, as the bundle's tuning entry for this CPU class."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from onnxfn.bundles import bundle as bundles
from onnxfn.bundles import manifest as mf
from onnxfn.runtime import cpu
from onnxfn.tools.bench.options import BenchError


def tuning_entry(result: dict) -> mf.Tuning:
    """The tuning entry for this CPU class from a result's CPU-provider winner, with what was measured."""
    w = result.get("winner_cpu_provider")
    if not w:
        raise BenchError("no ONNX Runtime candidate on the CPU provider was within tolerance: nothing to record")
    here = cpu.arch()
    if here not in mf.ARCHES:
        raise BenchError(f"this machine's architecture {here!r} is not one a manifest can name "
                         f"({', '.join(mf.ARCHES)})")
    features = tuple(sorted(f for f in (cpu.features() or ()) if f in mf.CPU_FEATURES))
    cand = next(c for c in result["candidates"] if c["id"] == w["id"])
    measured = {
        "p50_ms": round(cand["p50_ms"], 4), "p90_ms": round(cand["p90_ms"], 4), "p99_ms": round(cand["p99_ms"], 4),
        "create_ms": round(cand["create_ms"], 2), "first_run_ms": round(cand["first_run_ms"], 2),
        "peak_rss_mb": cand["peak_rss_mb"], "shapes": {c["shape"]: round(c["p50_ms"], 4) for c in cand["cases"]},
        "provider": cand["provider"], "onnxruntime": cand["runtime"], "candidates": len(result["candidates"]),
        "runs": result["settings"]["runs"], "rounds": result["settings"]["rounds"], "noisy": bool(cand["noisy"]),
        "accuracy": dict(cand["accuracy"] or {}),
        "cpu_model": result["machine"]["cpu_model"],
        "loadavg": {k: result["loadavg"].get(k) for k in ("before", "after", "max_1min")},
        "date": result["created"], "tool": "onnxfn bench",
    }
    if w.get("runner_up"):
        measured["runner_up"] = {"id": w["runner_up"]["id"], "p50_ms": round(w["runner_up"]["p50_ms"], 4),
                                 "margin": round(w["runner_up"]["margin"], 4)}
        measured["margin_within_noise"] = w.get("margin_within_noise", False)
    if w.get("default_p50_ms"):
        measured["default_p50_ms"] = round(w["default_p50_ms"], 4)
        measured["speedup_vs_default"] = round(w["speedup_vs_default"], 4)
    overall = result.get("winner")
    if overall and overall["id"] != w["id"]:
        measured["best_overall"] = {"id": overall["id"], "provider": overall["provider"],
                                    "p50_ms": round(overall["p50_ms"], 4),
                                    "speedup_vs_recorded": round(cand["p50_ms"] / overall["p50_ms"], 4),
                                    "note": "the runner builds CPUExecutionProvider sessions only: this provider's "
                                            "settings are recorded, not applied"}
    return mf.Tuning(requires=mf.Requirement(here, features), artifact=cand["artifact"],
                     graph_optimization_level=cand["level"], intra_op_threads=cand["threads"],
                     allow_spinning=bool(cand["spinning"]), disable_prepacking=not cand["prepacking"],
                     measured=measured)


def _specificity(t: mf.Tuning):
    from onnxfn.runtime.selection import specificity
    widest, count = specificity(t.requires.features)
    return -count, -widest, t.requires.arch


def write_tuning(root: Path, tuning: mf.Tuning) -> bundles.Bundle:
    """Record `tuning` in the bundle's manifest (atomically), replacing the entry for the same CPU class;
    entries are kept most specific first (the runner applies the first that matches). The bundle must
    load and verify afterwards, else the old manifest is put back."""
    manifest, _ = bundles.read_manifest(Path(root))
    kept = [t for t in manifest.tuning if t.requires != tuning.requires]
    entries = sorted(kept + [tuning], key=_specificity)
    return bundles.rewrite_manifest(Path(root), replace(manifest, tuning=tuple(entries)))


def record(result: dict) -> dict:
    """`--write`: record the result's CPU-provider winner in the benched bundle (still holding the model
    measured) as the tuning for this CPU class; what was written, for the result."""
    root = Path(result["target"]["path"])
    if result["target"]["kind"] != "bundle":
        raise BenchError("--write needs results for a bundle folder")
    current, _ = bundles.read_manifest(root)
    if (bundles.artifact_for(root / current.portable.path, current.portable.path).sha256
            != result["target"]["portable_sha256"]):
        raise BenchError(f"{str(root)!r} no longer holds the model these results measured: bench it again")
    tuning = tuning_entry(result)
    write_tuning(root, tuning)
    return {"manifest": str(root / bundles.MANIFEST),
            "requires": {"arch": tuning.requires.arch, "features": list(tuning.requires.features)},
            "tuning": {k: v for k, v in tuning.__dict__.items() if k not in ("requires", "measured")}}
