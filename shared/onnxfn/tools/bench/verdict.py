"""What the bench concludes from its figures: each candidate's accuracy against the reference (the
one judge, with the bench's scaled max abs bound), the winner within tolerance, and the comparisons."""
from __future__ import annotations

import numpy as np

from onnxfn.tools.accuracy import Figures, Thresholds, compare, judge
from onnxfn.tools.bench.report import accuracy_text
from onnxfn.tools.bench.target import Target


def score(target: Target, reference: list[np.ndarray], got: list[np.ndarray], kind: str,
          limits: Thresholds) -> tuple[dict, bool]:
    """The accuracy record of `got` against `reference` (one array per accuracy input), and whether it is
    within tolerance for this kind: fp32 (and the frameworks) by max abs diff <= max_abs_diff x max(1,
    largest |reference|) (absolute within [-1, 1], relative for larger logits); int8 by top-1 agreement
    (classification), mask Dice (segmentation), else max rel diff. Top-1 is measured for classifiers and
    for tensor models whose outputs are all [N, C>1]."""
    rank2 = all(r.ndim == 2 and r.shape[-1] > 1 for r in reference)
    classes = target.task == "classification" or (target.task == "tensor" and rank2)
    figures = compare(reference, got, agreement="flat" if classes else None,
                      mask=target.primary if target.task == "segmentation" else None)
    record: dict = {"samples": figures.samples}
    if figures.error:
        record["error"] = figures.error
        return record, False
    record.update(max_abs_diff=figures.max_abs_diff, mean_abs_diff=figures.mean_abs_diff,
                  max_rel_diff=figures.max_rel_diff)
    if figures.agreement is not None:
        record["top1_agreement"] = figures.agreement
    if figures.dice is not None:
        record["dice"] = figures.dice
    record["scale"] = figures.scale
    return record, rejudge(record, kind, target.task, limits)


def rejudge(record: dict, kind: str, task: str, limits: Thresholds) -> bool:
    """Whether an accuracy record is within tolerance (see `score`); records the rule applied in it."""
    verdict = judge(Figures.from_record(record), limits, kind=kind, task=task, scaled=True)
    if verdict.error is None:
        record["rule"] = verdict.rule
    return verdict.ok


def finish(result: dict) -> dict:
    """Winner, the runner's default, and the comparisons, from the candidates' figures."""
    cands = [c for c in result["candidates"] if c["status"] == "ok" and c.get("p50_ms")]
    main = main_runtime(result)
    # eligible: onnxruntime within tolerance; on the CPU provider, only this environment's onnxruntime (in a merge,
    # the first file's: the one the function ships); other providers (OpenVINO) from any run
    eligible = sorted((c for c in cands if c["engine"] == "onnxruntime" and c["within_tolerance"] and
                       (c["runtime"] == main or c["provider"] != "CPUExecutionProvider")), key=lambda c: c["p50_ms"])
    result["ranking"] = [c["id"] for c in sorted(cands, key=lambda c: c["p50_ms"])]
    best = eligible[0] if eligible else None
    # what the runner can apply: the CPU provider of this environment's onnxruntime (in a merge, the first file's)
    best_cpu = next((c for c in eligible if c["provider"] == "CPUExecutionProvider" and c["runtime"] == main), None)
    default = next((c for c in cands if c.get("default")), None)
    result["winner"] = _verdict(best, eligible, default) if best else None
    result["winner_cpu_provider"] = _verdict(best_cpu, [c for c in eligible if c["provider"] ==
                                                        "CPUExecutionProvider"], default) if best_cpu else None
    result["default"] = {"id": default["id"], "p50_ms": default["p50_ms"]} if default else None
    result["comparisons"] = comparisons(cands, main)
    return result


def main_runtime(result: dict) -> str | None:
    """The onnxruntime build of the first run (in a merge: the first file's, the one the function ships)."""
    return next((c["runtime"] for c in result["candidates"] if c["engine"] == "onnxruntime"), None)


def _verdict(best: dict, pool: list[dict], default: dict | None) -> dict:
    runner_up = next((c for c in pool if c is not best), None)
    verdict = {"id": best["id"], "provider": best["provider"], "artifact": best["artifact"], "level": best["level"],
               "threads": best["threads"], "spinning": best["spinning"], "prepacking": best["prepacking"],
               "p50_ms": best["p50_ms"], "p90_ms": best["p90_ms"], "p99_ms": best["p99_ms"],
               "accuracy": best["accuracy"], "noisy": best["noisy"]}
    if runner_up is not None:
        margin = runner_up["p50_ms"] / best["p50_ms"] - 1
        verdict["runner_up"] = {"id": runner_up["id"], "p50_ms": runner_up["p50_ms"], "margin": margin}
        spreads = [case["spread"] for c in (best, runner_up) for case in c["cases"]]
        verdict["margin_within_noise"] = bool(spreads and margin < max(spreads))
    if default is not None:
        verdict["default_p50_ms"] = default["p50_ms"]
        verdict["speedup_vs_default"] = default["p50_ms"] / best["p50_ms"]
    return verdict


def _best(cands: list[dict], **where) -> dict | None:
    pool = [c for c in cands if all((where[k](c[k]) if callable(where[k]) else c[k] == where[k]) for k in where)]
    return min(pool, key=lambda c: c["p50_ms"]) if pool else None


def comparisons(cands: list[dict], main: str | None = None) -> list[dict]:
    """Named head-to-heads: `a` is `speedup` times as fast as `b` (b's p50 / a's p50). Comparisons of
    settings use the main onnxruntime's candidates; OpenVINO is compared with the CPU provider measured
    alongside it (same run, same onnxruntime) and, after a merge, with the main one."""
    out: list[dict] = []

    def add(what: str, a: dict | None, b: dict | None):
        if a is None or b is None or a is b:
            return
        out.append({"what": what, "a": a["id"], "b": b["id"], "a_p50_ms": a["p50_ms"], "b_p50_ms": b["p50_ms"],
                    "speedup": b["p50_ms"] / a["p50_ms"],
                    "a_accuracy": accuracy_text(a["accuracy"]), "b_accuracy": accuracy_text(b["accuracy"])})

    ort_ok = [c for c in cands if c["engine"] == "onnxruntime" and c["within_tolerance"]]
    every_cpu = [c for c in ort_ok if c["provider"] == "CPUExecutionProvider"]
    main = main or next((c["runtime"] for c in every_cpu), None)
    cpu_ok = [c for c in every_cpu if c["runtime"] == main]
    threads = sorted({c["threads"] for c in cands})
    for t in threads:
        for engine, label in (("pytorch", "PyTorch eager"), ("torchscript", "TorchScript"),
                              ("torch.compile", "torch.compile"), ("sklearn", "scikit-learn")):
            add(f"onnxruntime CPU provider (best within tolerance) vs {label}, {t} thread(s)", _best(cpu_ok, threads=t),
                _best(cands, engine=engine, threads=t))
    for t in threads:
        ov = _best(ort_ok, provider="OpenVINOExecutionProvider", threads=t)
        if ov is not None:
            add(f"OpenVINO vs CPU provider ({ov['runtime']}, same run), {t} thread(s)", ov,
                _best(every_cpu, runtime=ov["runtime"], threads=t))
            if ov["runtime"] != main:
                add(f"OpenVINO vs CPU provider ({main}, merged run), {t} thread(s)", ov, _best(cpu_ok, threads=t))
    for t in threads:
        add(f"ORT_ENABLE_ALL vs ORT_ENABLE_EXTENDED (portable, CPU, no spinning, prepacking), {t} thread(s)",
            _best(cpu_ok, kind="portable", level="ALL", threads=t, spinning=False, prepacking=True),
            _best(cpu_ok, kind="portable", level="EXTENDED", threads=t, spinning=False, prepacking=True))
    if len(threads) > 1:
        add(f"{threads[-1]} threads vs 1 thread (best CPU provider each)", _best(cpu_ok, threads=threads[-1]),
            _best(cpu_ok, threads=threads[0]))
    cpu_all = [c for c in cands if c["engine"] == "onnxruntime" and c["provider"] == "CPUExecutionProvider"
               and c["runtime"] == main]
    for t in threads:
        add(f"int8 vs fp32 (best each, CPU provider), {t} thread(s)", _best(cpu_all, kind="int8", threads=t),
            _best(cpu_ok, kind=lambda k: k in ("portable", "optimized"), threads=t))
        add(f"pre-optimized fp32 vs portable (CPU provider), {t} thread(s)",
            _best(cpu_ok, kind="optimized", threads=t), _best(cpu_ok, kind="portable", threads=t))
    # one setting changed, the others as in the best CPU-provider candidate (matched pairs)
    base = min(cpu_ok, key=lambda c: c["p50_ms"]) if cpu_ok else None
    if base is not None:
        same = [c for c in cands if c["engine"] == "onnxruntime" and c["provider"] == "CPUExecutionProvider"
                and c["runtime"] == main]

        def twin(**change):
            keys = ("artifact", "level", "threads", "spinning", "prepacking")
            want = {k: change.get(k, base[k]) for k in keys}
            return next((c for c in same if all(c[k] == want[k] for k in keys)), None)
        if base["threads"] > 1:
            on, off = twin(spinning=True), twin(spinning=False)
            add(f"spinning on vs off ({base['artifact']}, {base['level']}, {base['threads']} threads)", on, off)
        add(f"prepacking off vs on ({base['artifact']}, {base['level']}, {base['threads']} thread(s))",
            twin(prepacking=False), twin(prepacking=True))
    best = min(cpu_ok, key=lambda c: c["p50_ms"]) if cpu_ok else None
    add("best CPU provider settings vs the runner's default settings", best,
        next((c for c in cands if c.get("default")), None))
    return out
