"""`onnxfn bench`: quick runs on the demo models, every figure in the JSON, a winner within tolerance,
`--write` changing the session the function builds, clear errors, merging."""
from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from tests.support.models import DIGIT, MODELS, ROOT, identity_segmenter, onnx_model
from onnxfn.tools import bench
from onnxfn.tools.bench import plan as planning
from onnxfn.tools.bench.merge import merge
from onnxfn.bundles import bundle as bundles
from onnxfn.runtime import cpu
from onnxfn.runtime import loader as runner
from onnxfn.runtime.session import OPT_LEVELS, spinning
from onnxfn.tools.cli import main
from onnxfn.bundles.manifest import Requirement, Tuning
from onnxfn.settings import Settings

HELDOUT = MODELS / "data" / "digits-heldout-nchw.npy"
CANDIDATE_FIELDS = {"id", "engine", "provider", "artifact", "kind", "level", "threads", "spinning", "prepacking",
                    "preoptimized", "default", "runtime", "status", "error", "import_ms", "create_ms",
                    "first_run_ms", "base_rss_mb", "peak_rss_mb", "model_rss_mb", "accuracy", "within_tolerance",
                    "p50_ms", "p90_ms", "p99_ms", "noisy", "cases", "reference", "providers"}
CASE_FIELDS = {"shape", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms",
               "round_medians_ms", "rounds", "spread", "noisy", "samples_ms"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-digits")
    code = main(["bench", str(MODELS / "digits-cnn"), "--quick", "--inputs", str(HELDOUT), "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def lesion(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-lesion")
    code = main(["bench", str(MODELS / "lesion-unet"), "--quick", "--levels", "ALL",
                 "--shapes", "1x1x32x32,1x1x64x48", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_bench_holds_every_figure(digits):
    out, result = digits
    assert {"onnxfn_bench", "created", "target", "machine", "loadavg", "settings", "inputs", "reference",
            "candidates", "ranking", "winner", "winner_cpu_provider", "default", "comparisons", "skipped",
            "notes", "files"} <= set(result)
    machine = result["machine"]
    assert machine["cpu"] == cpu.describe() and machine["threads"] == cpu.threads() and machine["cores"] >= 1
    assert machine["cpu_model"] and "onnxruntime" in machine["libraries"] and "numpy" in machine["libraries"]
    assert "CPUExecutionProvider" in machine["providers"]
    assert len(result["loadavg"]["before"]) == 3 and len(result["loadavg"]["after"]) == 3
    assert result["inputs"]["source"].startswith("samples") and result["inputs"]["cases"][0]["shape"] == "1x1x8x8"
    runs = result["settings"]["runs"]
    ids = {c["id"] for c in result["candidates"]}
    threads = list(range(1, cpu.threads() + 1))
    spin = ":spin" if spinning(cpu.threads()) else ""  # the function's default, added when not asked for
    default_id = f"cpu:model.onnx:ALL:t{cpu.threads()}{spin}"
    assert ids == {f"cpu:model.onnx:{level}:t{t}" for level in ("EXTENDED", "ALL") for t in threads} | {default_id}
    for c in result["candidates"]:
        assert set(c) >= CANDIDATE_FIELDS, CANDIDATE_FIELDS - set(c)
        assert c["status"] == "ok" and c["create_ms"] > 0 and c["first_run_ms"] > 0
        assert 0 < c["p50_ms"] <= c["p90_ms"] <= c["p99_ms"] and c["peak_rss_mb"] > 0 and c["model_rss_mb"] >= 0
        assert c["accuracy"]["max_abs_diff"] < 1e-4 and c["accuracy"]["top1_agreement"] == 1.0
        case = c["cases"][0]
        assert set(case) >= CASE_FIELDS and case["runs"] == runs == len(case["samples_ms"])
        assert len(case["round_medians_ms"]) == result["settings"]["rounds"]
        assert case["rounds"]["min_ms"] <= case["rounds"]["median_ms"] <= case["rounds"]["max_ms"]
    assert sum(c["reference"] for c in result["candidates"]) == 1
    assert result["reference"]["candidate"] == "cpu:model.onnx:ALL:t1"
    default = next(c for c in result["candidates"] if c["default"])
    assert default["id"] == default_id
    assert (out / "report.md").read_text().startswith("# onnxfn bench: digits-cnn")
    if importlib.util.find_spec("matplotlib"):
        assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert any("matplotlib" in n for n in result["notes"])


def test_the_winner_is_the_fastest_candidate_within_tolerance(digits):
    _, result = digits
    winner = result["winner"]
    ok = [c for c in result["candidates"] if c["within_tolerance"] and c["engine"] == "onnxruntime"]
    assert winner["id"] == min(ok, key=lambda c: c["p50_ms"])["id"]
    assert winner["accuracy"]["max_abs_diff"] <= result["settings"]["thresholds"]["max_abs_diff"]
    assert result["winner_cpu_provider"]["id"] == winner["id"]
    assert {c["what"].split(",")[0] for c in result["comparisons"]} >= {
        "ORT_ENABLE_ALL vs ORT_ENABLE_EXTENDED (portable"}


def test_dynamic_shapes_are_timed_each_and_segmentation_scored_by_dice(lesion):
    _, result = lesion
    assert [c["shape"] for c in result["inputs"]["cases"]] == ["1x1x32x32", "1x1x64x48"]
    for c in result["candidates"]:
        assert [case["shape"] for case in c["cases"]] == ["1x1x32x32", "1x1x64x48"]
        assert c["accuracy"]["dice"] == 1.0 and c["within_tolerance"]
        assert c["p50_ms"] == pytest.approx(bench.geomean([case["p50_ms"] for case in c["cases"]]))
    assert result["winner"] is not None


def test_write_records_the_winner_and_the_function_applies_it(function, tmp_path, capsys):
    root = tmp_path / "digits"
    shutil.copytree(MODELS / "digits-cnn", root)
    before = function({"MODEL_URI": str(root), "ONNXFN_THREADS": ""}).call(DIGIT, "image/png").json()
    assert before["runtime"]["tuned"] is False and before["runtime"]["threads"] == cpu.threads()
    foreign = {"requires": {"arch": "aarch64", "features": ["asimddp"]}, "intra_op_threads": 4}
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["tuning"] = [foreign]
    (root / "manifest.json").write_text(json.dumps(manifest))

    assert main(["bench", str(root), "--quick", "--threads", "1", "--levels", "EXTENDED", "--write",
                 "--inputs", str(HELDOUT), "--out", str(tmp_path / "out")]) == 0
    assert "recorded tuning" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    winner = next(c for c in result["candidates"] if c["id"] == result["winner_cpu_provider"]["id"])
    loaded = bundles.load(root)  # every artifact still verifies
    ours = [t for t in loaded.manifest.tuning if t.requires.arch == cpu.arch()]
    assert len(ours) == 1 and len(loaded.manifest.tuning) == 2
    tuning = ours[0]
    assert tuning.requires == Requirement(cpu.arch(), tuple(sorted(cpu.features() or ())))
    assert tuning.intra_op_threads == 1 and tuning.graph_optimization_level == winner["level"]
    assert tuning.artifact == "model.onnx" and tuning.measured["p50_ms"] == pytest.approx(winner["p50_ms"], rel=1e-3)
    assert tuning.measured["accuracy"]["max_abs_diff"] < 1e-4 and tuning.measured["cpu_model"]

    model = runner.load(Settings(model_uri=str(root), baked_bundle=""))
    assert model.tuning == tuning and model.threads == 1
    import onnxruntime as ort
    level = model.session.get_session_options().graph_optimization_level
    assert level == getattr(ort.GraphOptimizationLevel, OPT_LEVELS[winner["level"]])
    after = function({"MODEL_URI": str(root), "ONNXFN_THREADS": ""}).call(DIGIT, "image/png").json()
    assert after["runtime"]["tuned"] is True and after["runtime"]["threads"] == 1
    assert after["result"]["label"] == before["result"]["label"] == "7"

    # a second write for the same CPU class replaces the entry, most specific first
    replacement = Tuning(requires=tuning.requires, intra_op_threads=2, measured={"p50_ms": 1.0})
    bench.write_tuning(root, replacement)
    entries = bundles.load(root).manifest.tuning
    assert [t for t in entries if t.requires.arch == cpu.arch()] == [replacement] and len(entries) == 2
    assert entries[0].requires.features >= entries[1].requires.features or len(entries[0].requires.features) >= \
        len(entries[1].requires.features)


def test_write_needs_a_bundle(tmp_path, capsys):
    model = identity_segmenter(tmp_path / "seg.onnx")
    assert main(["bench", str(model), "--quick", "--write", "--shapes", "1x1x8x8"]) == 2
    assert "--write" in capsys.readouterr().err


def test_an_unsupported_operator_is_named(tmp_path, capsys):
    def graph(helper, T, nh):
        return helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g",
                                 [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                                 [helper.make_tensor_value_info("y", T.FLOAT, [1, 4])])
    import onnx
    from onnx import helper
    model = helper.make_model(graph(helper, onnx.TensorProto, None),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "frob.onnx"))
    assert main(["bench", str(tmp_path / "frob.onnx"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "operator Frobnicate" in err and "com.example" in err


def test_a_dynamic_dimension_it_cannot_guess_asks_for_shapes(tmp_path, capsys):
    def graph(helper, T, nh):
        return helper.make_graph([helper.make_node("Relu", ["tokens"], ["y"])], "g",
                                 [helper.make_tensor_value_info("tokens", T.FLOAT, ["N", "seq"])],
                                 [helper.make_tensor_value_info("y", T.FLOAT, ["N", "seq"])])
    model = onnx_model(tmp_path / "seq.onnx", graph)
    assert main(["bench", str(model), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "input 'tokens'" in err and "'seq'" in err and "--shapes tokens=1x<seq>" in err
    assert main(["bench", str(model), "--quick", "--shapes", "1x1x5"]) == 2
    assert "takes 2 dimensions" in capsys.readouterr().err


def test_shapes_parse():
    assert bench.parse_shapes("1x1x128x128, 1x1x256x256") == [{"": (1, 1, 128, 128)}, {"": (1, 1, 256, 256)}]
    assert bench.parse_shapes("a=1x3+b=2") == [{"a": (1, 3), "b": (2,)}]
    with pytest.raises(bench.BenchError, match="sizes like"):
        bench.parse_shapes("1xAx3")


def test_a_framework_that_is_not_installed_is_named_and_the_rest_benched(monkeypatch):
    monkeypatch.setattr(planning, "have", lambda module: False)
    skipped, notes = [], []
    options = bench.BenchOptions(torch="bench.factories:digits_cnn", sklearn=ROOT / "x.pkl", quick=True).resolved()
    assert planning.framework_candidates(options, notes, skipped) == []
    assert any("torch is not installed" in s["why"] and "pip install -e '.[dev]'" in s["why"] for s in skipped)
    assert any("scikit-learn is not installed" in s["why"] for s in skipped)


def test_merge_joins_runs_and_keeps_ids_apart(digits, lesion, tmp_path):
    out, _ = digits
    merged = merge([out / "results.json", out / "results.json"])
    ids = [c["id"] for c in merged["candidates"]]
    assert len(ids) == len(set(ids)) == 2 * len(json.loads((out / "results.json").read_text())["candidates"])
    assert len(merged["merged_from"]) == 2 and merged["winner"] is not None
    assert main(["bench", "--merge", str(out / "results.json"), str(out / "results.json"),
                 "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "report.md").exists()
    with pytest.raises(bench.BenchError, match="different models"):
        merge([out / "results.json", lesion[0] / "results.json"])


@pytest.mark.slow  # needs the dev extra (PyTorch): pytest -m slow tests/unit/tools/test_bench.py
def test_pytorch_eager_is_the_reference_when_given(tmp_path):
    assert main(["bench", str(MODELS / "digits-cnn"), "--quick", "--threads", "1", "--levels", "ALL",
                 "--torch", "bench.factories:digits_cnn", "--inputs", str(HELDOUT), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["reference"] == {"candidate": "torch-eager:t1", "engine": "pytorch"}
    ort_ = next(c for c in result["candidates"] if c["engine"] == "onnxruntime")
    assert ort_["accuracy"]["max_abs_diff"] < 1e-4 and ort_["within_tolerance"]
    assert any(c["what"].startswith("onnxruntime CPU provider (best within tolerance) vs PyTorch eager")
               for c in result["comparisons"])
