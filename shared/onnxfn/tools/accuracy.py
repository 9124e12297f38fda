"""The one tolerance judge: is this artifact's output close enough to the reference's?

Packaging (an optimized or int8 artifact against the portable model), the bench (every candidate
against the reference candidate) and proofs (the bundle's model against its source framework's
saved outputs) all measure with `compare` and decide with `judge`. What they measure is the same:

- max abs difference, element by element (NaN or inf anywhere fails it, with a count), with the
  index of the worst element; mean abs difference; max relative difference (max abs difference
  over the largest |reference| value);
- argmax agreement, when classes are compared (`agreement=`): top-1 of a classifier's scores;
- mask Dice, when segmentation masks are compared (`mask=`: the output spec whose decision makes
  the masks from scores).

Where the callers' rules differ, the difference is a parameter, not a second implementation:

- which figures gate (`gates`): fp32 artifacts by max abs difference; int8 ones by top-1 agreement
  (classification), Dice (segmentation), else max relative difference (`gates_for`); a proof by
  max abs difference *and* argmax agreement;
- the max abs bound (`scaled`): absolute (packaging, proofs) or `max_abs_diff x max(1, max|reference|)`
  (the bench, whose references include a framework's large logits);
- how classes are read (`agreement`): the last axis (packaging: a classifier's [N, ..., C]), each
  sample's flattened output (the bench: any [N, ...] output), or axis 1 at every position (proofs:
  [N, C, ...] outputs);
- the words of a failure: `names` for the two sides, `flags` for the command-line option a limit
  comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

#: How `compare` reads classes for the argmax agreement (see the module's docstring).
AGREEMENTS = ("last", "flat", "axis1")


@dataclass
class Thresholds:
    """The limits an output is held to; `min_int8_speedup` is packaging's speed gate, not accuracy."""
    max_abs_diff: float = 1e-3     # fp32 artifacts (and frameworks) vs the reference
    min_top1: float = 0.99         # int8 classifiers: top-1 agreement with the reference
    min_dice: float = 0.99         # int8 segmenters: Dice of masks vs the reference's masks
    max_rel_diff: float = 0.05     # int8 tensor models: max abs diff / max abs reference value
    min_int8_speedup: float = 1.0  # packaging: int8 artifacts made for this CPU class must beat the portable model

    def accuracy(self) -> dict:
        """The four accuracy limits by name (what a bench result records)."""
        return {"max_abs_diff": self.max_abs_diff, "min_top1": self.min_top1, "min_dice": self.min_dice,
                "max_rel_diff": self.max_rel_diff}


@dataclass
class Figures:
    """What `compare` measured: outputs against the reference's."""
    samples: int                       # one per array compared (a list), or per row (a single array)
    max_abs_diff: float = 0.0          # inf when a value is NaN or inf
    mean_abs_diff: float = 0.0
    max_rel_diff: float = 0.0          # max_abs_diff / scale
    scale: float = 1.0                 # the largest |reference| value (1 when there is none)
    worst: tuple[int, ...] = ()        # index of the largest difference (of the first non-finite one)
    worst_item: int = 0                # which of the arrays compared holds it
    worst_values: tuple[float, float] | None = None   # (output, reference) there
    non_finite: int = 0
    agreement: float | None = None     # argmax agreement; None when classes were not compared
    agreement_by: str | None = None    # one of AGREEMENTS
    positions: int = 0                 # argmax positions compared
    disagreements: int = 0
    first_disagreeing: list[int] = field(default_factory=list)   # sample numbers of the first five
    dice: float | None = None          # mask Dice; None when masks were not compared
    items: int = 1                     # arrays compared
    error: str | None = None           # the outputs could not be compared (shapes differ)

    @classmethod
    def from_record(cls, record: dict) -> "Figures":
        """Figures from a bench result's `accuracy` record (to judge a merged result again)."""
        if record.get("error"):
            return cls(int(record.get("samples", 0)), error=record["error"])
        return cls(int(record.get("samples", 0)), max_abs_diff=record["max_abs_diff"],
                   mean_abs_diff=record.get("mean_abs_diff", 0.0), max_rel_diff=record.get("max_rel_diff", 0.0),
                   scale=record.get("scale", 1.0), agreement=record.get("top1_agreement"),
                   agreement_by="flat" if "top1_agreement" in record else None, dice=record.get("dice"))


def compare(reference: np.ndarray | Sequence[np.ndarray], got: np.ndarray | Sequence[np.ndarray], *,
            agreement: str | None = None, mask=None) -> Figures:
    """Figures of `got` against `reference`: one array each, or one array per input (shapes may differ
    between inputs, not between the two sides). `agreement` reads classes (AGREEMENTS) for the argmax
    agreement; `mask` (an OutputSpec: decision, activation, threshold) makes masks for Dice."""
    if agreement is not None and agreement not in AGREEMENTS:
        raise ValueError(f"agreement {agreement!r} is not one of {', '.join(AGREEMENTS)}")
    single = isinstance(reference, np.ndarray)
    refs = [reference] if single else list(reference)
    outs = [got] if single else list(got)
    samples = len(reference) if single else len(refs)
    for k, (r, g) in enumerate(zip(refs, outs)):
        if r.shape != g.shape:
            return Figures(samples, error=f"output shape {list(g.shape)} differs from the reference's "
                                          f"{list(r.shape)} (input {k})")
    ref = [r.astype(np.float64) for r in refs]
    out = [g.astype(np.float64) for g in outs]
    figures = Figures(samples, items=len(ref))
    _differences(figures, ref, out)
    if agreement is not None:
        _agreement(figures, ref, out, agreement)
    if mask is not None:
        pairs = [(_mask(g, mask), _mask(r, mask)) for r, g in zip(ref, out)]
        inter = sum(int(np.logical_and(a, b).sum()) for a, b in pairs)
        total = sum(int(a.sum() + b.sum()) for a, b in pairs)
        figures.dice = 1.0 if total == 0 else 2 * inter / total
    return figures


def _differences(figures: Figures, ref: list[np.ndarray], out: list[np.ndarray]) -> None:
    diffs = [np.abs(g - r) for r, g in zip(ref, out)]
    figures.scale = max((float(np.max(np.abs(r))) for r in ref if r.size), default=0.0) or 1.0
    for k, d in enumerate(diffs):
        bad = ~np.isfinite(d)
        if bad.any():
            if not figures.non_finite:
                figures.worst, figures.worst_item = tuple(int(i) for i in np.argwhere(bad)[0]), k
            figures.non_finite += int(bad.sum())
    if figures.non_finite:
        figures.max_abs_diff = float("inf")
    else:
        best = -1.0
        for k, d in enumerate(diffs):
            if d.size and float(d.max()) > best:
                best, figures.worst_item = float(d.max()), k
                figures.worst = tuple(int(i) for i in np.unravel_index(int(d.argmax()), d.shape))
        if best >= 0:
            k, i = figures.worst_item, figures.worst
            figures.max_abs_diff, figures.worst_values = best, (float(out[k][i]), float(ref[k][i]))
    flat = [d.ravel() for d in diffs if d.size]
    figures.mean_abs_diff = float(np.mean(np.concatenate(flat))) if flat else 0.0
    figures.max_rel_diff = figures.max_abs_diff / figures.scale


def _classes(x: np.ndarray, by: str) -> np.ndarray:
    if by == "flat":
        return np.argmax(x.reshape(len(x), -1), axis=-1)
    return np.atleast_1d(np.argmax(x, axis=-1 if by == "last" else 1))


def _agreement(figures: Figures, ref: list[np.ndarray], out: list[np.ndarray], by: str) -> None:
    rows, same, first = 0, 0, []
    for r, g in zip(ref, out):
        agree = _classes(g, by) == _classes(r, by)
        first += [rows + int(i) for i in np.argwhere(~agree)[:5, 0]] if agree.ndim else []
        figures.positions += int(agree.size)
        same += int(agree.sum())
        rows += len(r) if r.ndim else 1
    figures.agreement_by = by
    figures.agreement = same / figures.positions if figures.positions else float("nan")
    figures.disagreements = figures.positions - same
    figures.first_disagreeing = first[:5]


def _mask(x: np.ndarray, spec) -> np.ndarray:
    """The segmentation mask `spec`'s decision makes of scores `x` ([N, C, ...] for argmax)."""
    if spec.decision == "argmax":
        return np.argmax(x, axis=1) > 0
    return x > (0.0 if spec.activation == "sigmoid" else spec.threshold)


# ------------------------------------------------------------------------------------------ verdict

@dataclass
class Check:
    """One figure held to its limit."""
    figure: str        # "max_abs_diff", "agreement", "dice" or "max_rel_diff"
    value: float
    limit: float       # the bound applied (for a scaled max abs bound: the scaled value)
    ok: bool
    rule: str          # the rule, e.g. "max_abs_diff <= 0.001"
    failure: str = ""  # why it missed, in a sentence


@dataclass
class Verdict:
    """The outcome of `judge`: the checks applied, or why nothing could be checked."""
    checks: list[Check]
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Within tolerance: comparable, and every check passed."""
        return self.error is None and all(c.ok for c in self.checks)

    @property
    def rule(self) -> str:
        """The rules applied, joined."""
        return "; ".join(c.rule for c in self.checks)

    @property
    def failures(self) -> list[str]:
        """A sentence per check that missed (or the reason the outputs could not be compared)."""
        return [self.error] if self.error else [c.failure for c in self.checks if not c.ok]

    def check(self, figure: str) -> Check | None:
        """The check of `figure`, if it was applied."""
        return next((c for c in self.checks if c.figure == figure), None)


def gates_for(kind: str, task: str) -> tuple[str, ...]:
    """The figures an artifact of `kind` is judged on: fp32 ones (portable, optimized, a framework's)
    by max abs difference; int8 ones by top-1 agreement (classification), Dice (segmentation), else
    max relative difference."""
    if kind != "int8":
        return ("max_abs_diff",)
    return {"classification": ("agreement",), "segmentation": ("dice",)}.get(task, ("max_rel_diff",))


def judge(figures: Figures, limits: Thresholds, *, kind: str = "portable", task: str = "tensor",
          gates: tuple[str, ...] | None = None, scaled: bool = False,
          names: tuple[str, str] = ("output", "reference"), flags: dict[str, str] | None = None) -> Verdict:
    """Hold `figures` to `limits`: the `gates` figures (default `gates_for(kind, task)`); the max abs
    bound is scaled by max(1, max|reference|) when `scaled`. Failures name the two sides (`names`:
    output, reference) and the option a limit comes from (`flags`: figure -> option)."""
    if figures.error:
        return Verdict([], figures.error)
    flags = flags or {}
    checks = []
    for gate in gates or gates_for(kind, task):
        check = _CHECKS[gate](figures, limits, scaled, names)
        if not check.ok and gate in flags:
            check.failure += f" ({flags[gate]})"
        checks.append(check)
    return Verdict(checks)


def _where(f: Figures, names: tuple[str, str]) -> str:
    place = f"index {list(f.worst)}{f' of input {f.worst_item}' if f.items > 1 else ''}"
    if f.non_finite:
        return place
    got, ref = f.worst_values or (float("nan"), float("nan"))
    return f"{place}: {names[0]} {got:.7g}, {names[1]} {ref:.7g}"


def _max_abs(f: Figures, limits: Thresholds, scaled: bool, names: tuple[str, str]) -> Check:
    limit = limits.max_abs_diff
    bound = limit * max(1.0, f.scale) if scaled else limit
    rule = f"max_abs_diff <= {limit:g} x max(1, max|reference|) = {bound:.3g}" if scaled else \
        f"max_abs_diff <= {limit:g}"
    check = Check("max_abs_diff", f.max_abs_diff, bound, f.non_finite == 0 and f.max_abs_diff <= bound, rule)
    if f.non_finite:
        check.failure = (f"max abs difference: {f.non_finite} value(s) are not finite (NaN or inf) in the "
                         f"{names[0]} or {names[1]} outputs, first at {_where(f, names)}")
    elif not check.ok:
        given = f" ({limit:g} x max(1, max|reference| {f.scale:.3g}))" if scaled else ""
        check.failure = (f"max abs difference {f.max_abs_diff:.3g} exceeds the limit {bound:.3g}{given} by "
                         f"{f.max_abs_diff - bound:.3g} at {_where(f, names)}")
    return check


def _agreement_check(f: Figures, limits: Thresholds, scaled: bool, names: tuple[str, str]) -> Check:
    if f.agreement is None:
        raise ValueError("the agreement gate needs figures compared with agreement=")
    limit = limits.min_top1
    check = Check("agreement", f.agreement, limit, bool(f.agreement >= limit), f"top1_agreement >= {limit:g}")
    if not check.ok:
        what = "argmax agreement" if f.agreement_by == "axis1" else "top-1 agreement"
        check.failure = (f"{what} {f.agreement:.4f} is below the limit {limit:g} by {limit - f.agreement:.4f} "
                         f"({f.disagreements} of {f.positions} differ; first samples {f.first_disagreeing})")
    return check


def _dice(f: Figures, limits: Thresholds, scaled: bool, names: tuple[str, str]) -> Check:
    if f.dice is None:
        raise ValueError("the dice gate needs figures compared with mask=")
    limit = limits.min_dice
    check = Check("dice", f.dice, limit, bool(f.dice >= limit), f"dice >= {limit:g}")
    if not check.ok:
        check.failure = f"mask Dice {f.dice:.4f} is below the limit {limit:g} by {limit - f.dice:.4f}"
    return check


def _max_rel(f: Figures, limits: Thresholds, scaled: bool, names: tuple[str, str]) -> Check:
    limit = limits.max_rel_diff
    check = Check("max_rel_diff", f.max_rel_diff, limit, bool(f.max_rel_diff <= limit), f"max_rel_diff <= {limit:g}")
    if not check.ok:
        check.failure = (f"relative difference {f.max_rel_diff:.3g} exceeds the limit {limit:g} by "
                         f"{f.max_rel_diff - limit:.3g} (max abs difference {f.max_abs_diff:.3g} over the largest "
                         f"|{names[1]}| value {f.scale:.3g})")
    return check


_CHECKS = {"max_abs_diff": _max_abs, "agreement": _agreement_check, "dice": _dice, "max_rel_diff": _max_rel}
