"""Joining bench results measured in separate runs (e.g. the OpenVINO venv's) for the same model."""
from __future__ import annotations

import json
from pathlib import Path

from onnxfn.tools.accuracy import Thresholds
from onnxfn.tools.bench.options import SCHEMA, BenchError
from onnxfn.tools.bench.verdict import finish, rejudge


def merge(files: list[Path], thresholds: Thresholds | None = None) -> dict:
    """Join results measured in separate runs (e.g. the OpenVINO venv's) for the same model; tolerance is
    judged again with `thresholds` (default: the first file's)."""
    docs = []
    for f in files:
        try:
            doc = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BenchError(f"--merge: cannot read {str(f)!r}: {e}") from None
        if doc.get("onnxfn_bench") != SCHEMA:
            raise BenchError(f"--merge: {str(f)!r} is not an onnxfn bench result (schema {SCHEMA})")
        docs.append(doc)
    shas = {d["target"]["portable_sha256"] for d in docs}
    if len(shas) != 1:
        raise BenchError("--merge: the results are for different models (portable sha256 "
                         f"{', '.join(sorted(s[:12] for s in shas))})")
    base = json.loads(json.dumps(docs[0]))
    seen = {c["id"] for c in base["candidates"]}
    for doc, f in zip(docs[1:], files[1:]):
        for c in doc["candidates"]:
            if c["id"] in seen:
                c["id"] = f"{c['id']}@{c['runtime'].replace(' ', '-')}"
                if c["id"] in seen:
                    c["id"] += f"@{Path(f).parent.name or Path(f).stem}"
            c["default"] = False
            c["reference"] = False
            seen.add(c["id"])
            base["candidates"].append(c)
        base["notes"] += [n for n in doc["notes"] if n not in base["notes"]]
    measured = {p for d in docs for p in d["machine"].get("providers", [])}
    base["skipped"] = []
    for s in (s for d in docs for s in d["skipped"]):
        if s["what"] not in measured and s not in base["skipped"]:
            base["skipped"].append(s)
    base["merged_from"] = [{"file": str(f), "created": d["created"], "onnxruntime": d["machine"]["libraries"]
                            ["onnxruntime"], "providers": d["machine"]["providers"], "loadavg": d["loadavg"],
                            "reference": d["reference"], "command": d["command"]} for f, d in zip(files, docs)]
    base["notes"].append("merged from separate runs: candidates of different files were not alternated with each "
                         "other, and each file's accuracy is against its own reference")
    limits = thresholds or Thresholds(**base["settings"]["thresholds"])
    base["settings"]["thresholds"] = limits.accuracy()
    for c in base["candidates"]:
        if c.get("accuracy"):
            if "scale" not in c["accuracy"] and c["accuracy"].get("max_rel_diff"):
                c["accuracy"]["scale"] = c["accuracy"]["max_abs_diff"] / c["accuracy"]["max_rel_diff"]
            c["within_tolerance"] = rejudge(c["accuracy"], c["kind"], base["target"]["task"], limits)
    if len({d["machine"]["cpu_model"] for d in docs}) > 1:
        base["notes"].append("WARNING: the merged results come from different CPU models")
    return finish(base)
