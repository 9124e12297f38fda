"""Latency statistics of one candidate's timed runs."""
from __future__ import annotations

import math
import statistics

import numpy as np


def summarize(samples: list[float], rounds: list[list[float]], noise: float) -> dict:
    """Percentiles, mean, spread of the round medians (noisy above `noise`) and the samples themselves."""
    a = np.asarray(samples, dtype=np.float64)
    medians = [float(np.median(r)) for r in rounds if r]
    mid = statistics.median(medians) if medians else float("nan")
    spread = (max(medians) - min(medians)) / mid if medians and mid > 0 else 0.0
    return {"runs": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "std_ms": float(a.std()),
            "min_ms": float(a.min()), "max_ms": float(a.max()),
            "round_medians_ms": [round(m, 4) for m in medians],
            "rounds": {"min_ms": min(medians), "median_ms": mid, "max_ms": max(medians)} if medians else None,
            "spread": spread, "noisy": bool(spread > noise),
            "samples_ms": [round(float(x), 4) for x in samples]}


def geomean(values: list[float]) -> float:
    """The geometric mean of the positive finite values (nan when there are none)."""
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else float("nan")
