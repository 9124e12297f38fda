"""The one tolerance judge: the figures `compare` measures and what `judge` decides from them."""
from __future__ import annotations

import numpy as np
import pytest

from onnxfn.bundles.manifest import OutputSpec
from onnxfn.tools.accuracy import Figures, Thresholds, compare, gates_for, judge


def test_identical_outputs_pass_every_gate():
    ref = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    figures = compare(ref, ref.copy(), agreement="last")
    assert figures.max_abs_diff == 0.0 and figures.mean_abs_diff == 0.0 and figures.agreement == 1.0
    assert figures.samples == 2 and figures.scale == pytest.approx(0.9)
    verdict = judge(figures, Thresholds(), gates=("max_abs_diff", "agreement"))
    assert verdict.ok and verdict.failures == [] and verdict.rule == "max_abs_diff <= 0.001; top1_agreement >= 0.99"


def test_one_disagreeing_top1_of_two_is_agreement_one_half():
    ref = np.array([[0.1, 0.9], [0.8, 0.2]])
    got = np.array([[0.2, 0.8], [0.3, 0.7]])  # second sample: class 1 instead of 0
    figures = compare(ref, got, agreement="last")
    assert figures.agreement == 0.5 and figures.disagreements == 1 and figures.positions == 2
    assert figures.first_disagreeing == [1]
    verdict = judge(figures, Thresholds(), kind="int8", task="classification", flags={"agreement": "--min-top1"})
    assert not verdict.ok and verdict.check("agreement").value == 0.5
    assert verdict.failures == ["top-1 agreement 0.5000 is below the limit 0.99 by 0.4900 "
                                "(1 of 2 differ; first samples [1]) (--min-top1)"]


def test_agreement_reads_classes_three_ways():
    ref = np.zeros((2, 3, 2, 2))
    ref[:, 1] = 1.0             # [N, C, H, W]: class 1 at every position
    got = ref.copy()
    got[0, 2, 0, 0] = 5.0       # one position of sample 0 turns to class 2
    assert compare(ref, got, agreement="axis1").agreement == pytest.approx(7 / 8)
    assert compare(ref, got, agreement="flat").agreement == 0.5  # per sample: the flattened argmax moved
    axis1 = judge(compare(ref, got, agreement="axis1"), Thresholds(min_top1=0.9, max_abs_diff=10),
                  gates=("max_abs_diff", "agreement"))
    assert axis1.failures[0].startswith("argmax agreement 0.8750 is below the limit 0.9 by 0.0250 (1 of 8 differ")


def test_dice_of_identical_masks_is_one_and_of_half_overlap_known():
    spec = OutputSpec(name="mask", activation="sigmoid", decision="threshold")
    ref = np.full((1, 1, 2, 2), -1.0)
    ref[0, 0, 0, :] = 1.0                       # two positive pixels
    assert compare(ref, ref.copy(), mask=spec).dice == 1.0
    got = np.full((1, 1, 2, 2), -1.0)
    got[0, 0, :, 0] = 1.0                       # two positive pixels, one shared
    figures = compare(ref, got, mask=spec)
    assert figures.dice == 0.5
    verdict = judge(figures, Thresholds(), kind="int8", task="segmentation")
    assert not verdict.ok and verdict.failures == ["mask Dice 0.5000 is below the limit 0.99 by 0.4900"]
    argmax = OutputSpec(name="scores", decision="argmax")
    scores = np.stack([-ref[:, 0], ref[:, 0]], axis=1)  # class 1 where ref is positive
    assert compare(scores, scores, mask=argmax).dice == 1.0
    assert compare(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), mask=spec).dice == 1.0  # no mask at all


def test_a_max_abs_difference_over_the_limit_fails_with_the_figure():
    ref = np.zeros((2, 3), dtype=np.float32)
    got = ref.copy()
    got[1, 2] = 0.01
    figures = compare(ref, got)
    assert figures.max_abs_diff == pytest.approx(0.01) and figures.worst == (1, 2)
    verdict = judge(figures, Thresholds(max_abs_diff=1e-4), names=("onnxruntime", "numpy 2"),
                    flags={"max_abs_diff": "--max-abs-diff"})
    assert not verdict.ok
    assert verdict.failures == ["max abs difference 0.01 exceeds the limit 0.0001 by 0.0099 at index [1, 2]: "
                                "onnxruntime 0.01, numpy 2 0 (--max-abs-diff)"]
    assert judge(figures, Thresholds(max_abs_diff=0.02)).ok


def test_the_scaled_bound_is_relative_for_large_logits():
    ref = np.array([[100.0, -50.0]])
    got = ref + 0.05
    figures = compare(ref, got)
    assert figures.scale == 100.0 and figures.max_rel_diff == pytest.approx(5e-4)
    assert not judge(figures, Thresholds()).ok                     # absolute: 0.05 > 0.001
    scaled = judge(figures, Thresholds(), scaled=True)             # 0.05 <= 0.001 x 100
    assert scaled.ok and scaled.rule == "max_abs_diff <= 0.001 x max(1, max|reference|) = 0.1"


def test_int8_tensor_models_are_judged_by_relative_difference():
    assert gates_for("int8", "tensor") == ("max_rel_diff",) and gates_for("optimized", "classification") == (
        "max_abs_diff",)
    figures = compare(np.array([[10.0, 0.0]]), np.array([[9.0, 0.0]]))
    verdict = judge(figures, Thresholds(), kind="int8", task="tensor")
    assert verdict.check("max_rel_diff").value == pytest.approx(0.1) and not verdict.ok
    assert verdict.failures[0].startswith("relative difference 0.1 exceeds the limit 0.05 by 0.05")


def test_non_finite_values_fail_and_are_counted():
    ref = np.zeros((4, 2))
    got = ref.copy()
    got[3, 0] = np.nan
    figures = compare(ref, got)
    assert figures.non_finite == 1 and figures.max_abs_diff == float("inf") and figures.worst == (3, 0)
    failure = judge(figures, Thresholds(max_abs_diff=1e9)).failures[0]
    assert "1 value(s) are not finite" in failure and "[3, 0]" in failure


def test_lists_of_outputs_per_input_and_shape_errors():
    ref = [np.zeros((1, 4)), np.zeros((1, 2, 3))]
    got = [np.zeros((1, 4)), np.full((1, 2, 3), 0.5)]
    figures = compare(ref, got)
    assert figures.samples == 2 and figures.worst_item == 1 and figures.max_abs_diff == 0.5
    assert figures.mean_abs_diff == pytest.approx(6 * 0.5 / 10)
    assert "of input 1" in judge(figures, Thresholds()).failures[0]
    bad = compare([np.zeros((1, 4))], [np.zeros((1, 5))])
    assert bad.error == "output shape [1, 5] differs from the reference's [1, 4] (input 0)"
    verdict = judge(bad, Thresholds())
    assert not verdict.ok and verdict.failures == [bad.error] and verdict.rule == ""


def test_figures_from_a_bench_record_are_judged_alike():
    record = {"samples": 4, "max_abs_diff": 0.002, "mean_abs_diff": 0.001, "max_rel_diff": 0.0004, "scale": 5.0,
              "top1_agreement": 1.0}
    figures = Figures.from_record(record)
    assert judge(figures, Thresholds(), scaled=True).ok and not judge(figures, Thresholds()).ok
    assert judge(figures, Thresholds(), kind="int8", task="classification").ok
    assert Thresholds(min_int8_speedup=3.0).accuracy() == {"max_abs_diff": 1e-3, "min_top1": 0.99,
                                                           "min_dice": 0.99, "max_rel_diff": 0.05}
