"""Per-CPU artifacts: packaging with the accuracy gate, choice at cold start, fallback, tuning."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.support.models import DIGIT, MODELS
from onnxfn.bundles import bundle as bundles
from onnxfn.runtime import cpu
from onnxfn.runtime import loader as runner
from onnxfn.runtime.selection import choose
from onnxfn.tools.accuracy import Thresholds
from onnxfn.errors import BadRequest, BundleError
from onnxfn.bundles.manifest import Requirement
from onnxfn.tools.package import Options, build
from onnxfn.settings import Settings

LABELS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    held = np.load(MODELS / "data" / "digits-heldout.npz")
    path = tmp_path_factory.mktemp("cal") / "digits.npy"
    np.save(path, (held["images"][:120].astype(np.float32) / 255)[:, None])
    return path


@pytest.fixture(scope="module")
def derived(tmp_path_factory, calibration):
    options = Options(name="digits", task="classification", activation="softmax", labels=LABELS,
                      optimize_for=["native", "aarch64"], int8=["x86_64", "aarch64"], calibration=calibration,
                      thresholds=Thresholds(min_int8_speedup=0.0))  # speed is the benchmark's business here
    bundle = build(MODELS / "digits-cnn" / "model.onnx", tmp_path_factory.mktemp("b") / "digits", options)
    return bundle, options.report


def test_derived_artifacts_carry_requirements_and_figures(derived):
    bundle, report = derived
    kinds = {a.path: a for a in bundle.manifest.artifacts}
    assert set(kinds) == {"model.onnx", "model.aarch64.opt.onnx", "model.x86_64.int8.ort",
                          "model.aarch64.int8.onnx", f"model.x86_64{'-' + runner_isa() if runner_isa() else ''}.opt.ort"}
    int8 = kinds["model.x86_64.int8.ort"]
    assert int8.kind == "int8" and int8.requires == Requirement("x86_64", ("avx2",)) and int8.preoptimized
    assert int8.accuracy["top1_agreement"] >= 0.99 and int8.accuracy["samples"] == 120
    arm = kinds["model.aarch64.int8.onnx"]
    assert arm.verified is False and arm.accuracy["checked_on"] == "x86_64"
    artifacts = [line for line in report if not line.startswith("memory cost")]  # the cost has its own line
    assert len(artifacts) == 4 and all(line.startswith("packaged") for line in artifacts)
    assert bundles.load(bundle.root).manifest == bundle.manifest  # every artifact verifies


def runner_isa():
    features = cpu.features() or ()
    return next((f for f in ("avx512f", "avx2") if f in features), "")


def test_the_function_picks_the_best_artifact_its_cpu_satisfies(function, derived):
    bundle, _ = derived
    answer = function({"MODEL_URI": str(bundle.root)}).call(DIGIT, "image/png").json()
    expected = "model.x86_64.int8.ort" if "avx2" in (cpu.features() or ()) else "model.onnx"
    assert answer["runtime"]["artifact"] == expected and answer["result"]["label"] == "7"
    forced = function({"MODEL_URI": str(bundle.root), "ONNXFN_ARTIFACT": "portable"}).call(DIGIT, "image/png").json()
    assert forced["runtime"]["artifact"] == "model.onnx" and forced["runtime"]["artifact_kind"] == "portable"


def test_a_broken_artifact_falls_back_to_the_portable_one(function, derived, tmp_path):
    bundle, _ = derived
    root = tmp_path / "b"
    shutil.copytree(bundle.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["kind"] != "portable":
            (root / entry["path"]).write_bytes(b"not a model")
            entry["sha256"] = bundles.sha256_file(root / entry["path"])
            entry["size"] = (root / entry["path"]).stat().st_size
    (root / "manifest.json").write_text(json.dumps(manifest))
    fn = function({"MODEL_URI": str(root)})
    answer = fn.call(DIGIT, "image/png").json()
    assert answer["runtime"]["artifact"] == "model.onnx" and answer["result"]["label"] == "7"
    assert '"event":"artifact_failed"' in fn.logs()


def test_all_artifacts_failing_is_a_500_naming_each(derived, tmp_path):
    bundle, _ = derived
    root = tmp_path / "b"
    shutil.copytree(bundle.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] in ("model.onnx", "model.x86_64.int8.ort")]
    for entry in manifest["artifacts"]:
        (root / entry["path"]).write_bytes(b"junk" + entry["path"].encode())
        entry["sha256"], entry["size"] = bundles.sha256_file(root / entry["path"]), (root / entry["path"]).stat().st_size
    (root / "manifest.json").write_text(json.dumps(manifest))
    if "avx2" not in (cpu.features() or ()):
        pytest.skip("needs an AVX2 CPU to try the x86_64 int8 artifact")
    with pytest.raises(BundleError) as e:
        runner.load(Settings(model_uri=str(root), threads=1, baked_bundle=""))
    assert e.value.code == "artifacts_failed"
    assert "'model.onnx'" in e.value.message and "'model.x86_64.int8.ort'" in e.value.message


def test_the_gate_rejects_an_artifact_that_misses_its_threshold(tmp_path, calibration):
    options = Options(name="digits", task="classification", labels=LABELS, int8=["x86_64"], optimize_for=["native"],
                      calibration=calibration, thresholds=Thresholds(min_top1=1.01, max_abs_diff=-1.0))
    bundle = build(MODELS / "digits-cnn" / "model.onnx", tmp_path / "b", options)
    assert [a.path for a in bundle.manifest.artifacts] == ["model.onnx"]
    artifacts = [line for line in options.report if not line.startswith("memory cost")]
    assert len(artifacts) == 2 and all(line.startswith("rejected") for line in artifacts)
    assert "top-1 agreement" in " ".join(options.report) and "--min-top1" in " ".join(options.report)
    assert "--max-abs-diff" in " ".join(options.report)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "model.onnx"]


def test_int8_without_calibration_fails_before_any_work(tmp_path):
    with pytest.raises(BadRequest, match="--calibration"):
        build(MODELS / "digits-cnn" / "model.onnx", tmp_path / "b",
              Options(name="d", task="classification", labels=LABELS, int8=["x86_64"]))
    assert not (tmp_path / "b").exists()


def test_calibration_of_the_wrong_shape_is_named(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(BadRequest, match="4 dimensions"):
        build(MODELS / "digits-cnn" / "model.onnx", tmp_path / "b",
              Options(name="d", task="classification", labels=LABELS, int8=["x86_64"], calibration=tmp_path / "bad.npy"))


def test_segmentation_int8_from_a_folder_of_dicoms(tmp_path):
    from models.train import phantoms
    folder = tmp_path / "cal"
    folder.mkdir()
    for seed in range(6):
        hu, _ = phantoms.make_phantom(300000 + seed, (96, 96))
        phantoms.write_dicom(folder / f"{seed}.dcm", hu)
    source = bundles.load(MODELS / "lesion-unet").manifest
    spec = source.inputs[0].image
    options = Options(name="unet", task="segmentation", activation="sigmoid", decision="threshold", labels=["lesion"],
                      image={"pad_multiple": 4, "scaling": "window", "window": {"center": 40, "width": 400},
                             "rescale": list(spec.rescale)},
                      int8=["x86_64"], calibration=folder, thresholds=Thresholds(min_dice=0.9, min_int8_speedup=0.0))
    bundle = build(MODELS / "lesion-unet" / "model.onnx", tmp_path / "b", options)
    int8 = [a for a in bundle.manifest.artifacts if a.kind == "int8"]
    assert int8 and int8[0].accuracy["dice_vs_portable"] >= 0.9, options.report


@pytest.mark.parametrize("requires, error", [
    ({"arch": "sparc"}, "requires.arch"), ({"arch": "x86_64", "features": ["avx9000"]}, "requires.features[0]"),
])
def test_malformed_requirements_are_named(tmp_path, requires, error):
    root = tmp_path / "b"
    shutil.copytree(MODELS / "digits-cnn", root)
    manifest = json.loads((root / "manifest.json").read_text())
    extra = dict(manifest["artifacts"][0], path="model.x.onnx", kind="optimized", requires=requires)
    manifest["artifacts"].append(extra)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as e:
        bundles.load(root)
    assert f"artifacts[1].{error}" in e.value.message


def test_choice_order_and_unknown_cpus():
    manifest = bundles.load(MODELS / "digits-cnn").manifest
    import dataclasses
    from onnxfn.bundles.manifest import Artifact
    arts = (manifest.portable,
            Artifact("a.onnx", "0" * 64, 1, "optimized", Requirement("x86_64", ("avx2",))),
            Artifact("b.onnx", "0" * 64, 1, "optimized", Requirement("x86_64", ("avx512f",))),
            Artifact("c.onnx", "0" * 64, 1, "int8", Requirement("x86_64", ("avx512_vnni",))),
            Artifact("d.onnx", "0" * 64, 1, "int8", Requirement("aarch64", ("asimddp",))))
    m = dataclasses.replace(manifest, artifacts=arts)
    order = lambda arch, features: [a.path for a in choose(m, arch, features)]
    assert order("x86_64", ("avx2", "avx512f", "avx512_vnni")) == ["c.onnx", "b.onnx", "a.onnx", "model.onnx"]
    assert order("x86_64", ("avx2",)) == ["a.onnx", "model.onnx"]
    assert order("aarch64", ("asimddp", "i8mm")) == ["d.onnx", "model.onnx"]
    assert order("x86_64", None) == ["model.onnx"]  # /proc/cpuinfo unreadable: portable only


def test_tuning_for_this_cpu_class_is_applied(function, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(MODELS / "digits-cnn", root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["tuning"] = [{"requires": {"arch": "aarch64"}, "intra_op_threads": 2},
                          {"requires": {"arch": cpu.arch()}, "graph_optimization_level": "EXTENDED",
                           "intra_op_threads": 1, "measured": {"p50_ms": 0.1}}]
    (root / "manifest.json").write_text(json.dumps(manifest))
    model = runner.load(Settings(model_uri=str(root), baked_bundle=""))
    options = model.session.get_session_options()
    assert model.tuning is not None and model.threads == 1 and options.intra_op_num_threads == 1
    import onnxruntime as ort
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    answer = function({"MODEL_URI": str(root), "ONNXFN_THREADS": ""}).call(DIGIT, "image/png").json()
    assert answer["runtime"]["tuned"] is True and answer["runtime"]["threads"] == 1


def test_an_int8_artifact_slower_than_fp32_is_not_packaged(tmp_path, calibration):
    if "avx2" not in (cpu.features() or ()):
        pytest.skip("the x86_64 int8 target needs an AVX2 CPU to be measured here")
    options = Options(name="d", task="classification", labels=LABELS, int8=["x86_64"], calibration=calibration,
                      thresholds=Thresholds(min_int8_speedup=1000.0))
    bundle = build(MODELS / "digits-cnn" / "model.onnx", tmp_path / "b", options)
    assert [a.kind for a in bundle.manifest.artifacts] == ["portable"]
    assert "--min-int8-speedup" in options.report[0] and "VNNI" in options.report[0]


def test_int8_packaging_is_quiet_and_says_each_step_with_its_time(tmp_path, calibration, capfd):
    """The quantizer's warnings (hundreds for a real CNN) are held back; one progress line per step; the root
    logger is left as it was."""
    import logging
    root = logging.getLogger()
    handlers = root.handlers[:]
    lines: list[str] = []
    options = Options(name="digits", task="classification", activation="softmax", labels=LABELS,
                      int8=["x86_64"], calibration=calibration, thresholds=Thresholds(min_int8_speedup=0.0),
                      progress=lines.append)
    build(MODELS / "digits-cnn" / "model.onnx", tmp_path / "b", options)
    out, err = capfd.readouterr()
    assert "WARNING" not in out + err and "out-of-range" not in out + err
    assert root.handlers == handlers
    steps = [line.split(":")[0] for line in lines]
    assert steps[:3] == ["calibrate and quantize int8 for x86_64 (120 calibration inputs)",
                         "optimize int8 for x86_64", "gate model.x86_64.int8.ort on 120 inputs"]
    assert all(line.split(": ")[1].split()[0].replace(".", "").isdigit() for line in lines)  # "12.3 s"
    if "avx2" in (cpu.features() or ()):
        assert lines[3].startswith(f"speed of model.x86_64.int8.ort at {cpu.threads()} thread(s)")
        assert "x the portable model" in lines[3]


def test_quiet_holds_records_back_and_counts_them():
    import logging
    from onnxfn.tools.artifacts import quiet
    with quiet() as held:
        logging.warning("Axis 1 is out-of-range")  # the module-level call that would install basicConfig
        logging.getLogger("onnxruntime.quantization").warning("held too")
    assert held.count == 2 and not any(type(h) is logging.StreamHandler for h in logging.getLogger().handlers)


def preactivation_model():
    """Conv -> Relu -> BatchNormalization (nothing to fuse it into, non-trivial statistics, a negative scale)
    -> Relu -> 1x1 Conv -> global average: DenseNet's pre-activation block in small."""
    import onnx
    from onnx import TensorProto as T, helper, numpy_helper
    rng = np.random.default_rng(3)
    consts = {"W1": rng.normal(0, 0.3, (8, 3, 3, 3)), "B1": rng.normal(0, 0.1, 8),
              "gamma": np.r_[-0.7, rng.uniform(0.5, 2.0, 7)], "beta": rng.normal(0, 0.5, 8),
              "mean": rng.normal(0.3, 0.2, 8), "var": rng.uniform(0.2, 3.0, 8),
              "W2": rng.normal(0, 0.3, (10, 8, 1, 1)), "B2": rng.normal(0, 0.1, 10)}
    nodes = [helper.make_node("Conv", ["image", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("BatchNormalization", ["r1", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r2"]),
             helper.make_node("Conv", ["r2", "W2", "B2"], ["c2"]),
             helper.make_node("GlobalAveragePool", ["c2"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["logits"])]
    graph = helper.make_graph(nodes, "preact", [helper.make_tensor_value_info("image", T.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", T.FLOAT, [1, 10])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def test_standalone_batchnorms_become_depthwise_convs_that_quantize(tmp_path):
    """The rewrite keeps the float outputs; the packaged int8 graph has no float BatchNormalization left, and
    no dequantize / float op / quantize detour for it."""
    import onnx
    import onnxruntime as ort
    from onnxfn.bundles.manifest import InputSpec
    from onnxfn.tools import artifacts
    model = preactivation_model()
    onnx.save(model, tmp_path / "model.onnx")
    rewritten = preactivation_model()
    assert artifacts.batchnorms_as_convs(rewritten) == 1
    assert [n.op_type for n in rewritten.graph.node].count("BatchNormalization") == 0
    onnx.save(rewritten, tmp_path / "rewritten.onnx")
    xs = [np.random.default_rng(i).normal(0, 1, (1, 3, 16, 16)).astype(np.float32) for i in range(16)]
    run = lambda path, x: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    for x in xs[:4]:
        np.testing.assert_allclose(run(tmp_path / "rewritten.onnx", x), run(tmp_path / "model.onnx", x),
                                   rtol=1e-5, atol=1e-5)
    spec = InputSpec(name="image", dtype="float32", shape=(1, 3, 16, 16))
    raw = artifacts.quantize(tmp_path / "model.onnx", tmp_path / "raw.onnx", spec, xs, "QUInt8", False)
    ops = [n.op_type for n in onnx.load(str(raw)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3
    packaged = artifacts.optimize(raw, tmp_path / "int8.onnx", "ORT_ENABLE_EXTENDED")
    ops = [n.op_type for n in onnx.load(str(packaged)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("QLinearConv") == 3
    assert ops.count("DequantizeLinear") <= 1 and ops.count("QuantizeLinear") == 1  # in once, out once at the end
    reference = np.concatenate([run(tmp_path / "model.onnx", x) for x in xs])
    got = np.concatenate([run(packaged, x) for x in xs])
    assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()


def _bn_graph(input_type, param_shape=(3,), extra_nodes=()):
    """X (1x3x4x4 of `input_type`) -> BatchNormalization (float32 parameters of `param_shape`) -> Y."""
    from onnx import helper, numpy_helper
    params = [numpy_helper.from_array(np.full(param_shape, v, np.float32), n)
              for n, v in (("scale", 2.0), ("shift", 0.5), ("mean", 0.1), ("var", 1.0))]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["X", "scale", "shift", "mean", "var"], ["Y"]), *extra_nodes],
        "bn", [helper.make_tensor_value_info("X", input_type, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("Y", input_type, [1, 3, 4, 4])], params)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batchnorms_the_rewrite_cannot_express_are_left_alone():
    from onnx import TensorProto, helper
    from onnxfn.tools import artifacts
    assert artifacts.batchnorms_as_convs(_bn_graph(TensorProto.FLOAT)) == 1
    half = _bn_graph(TensorProto.FLOAT16)  # a float16 input with float32 statistics: no float32 Conv for it
    assert artifacts.batchnorms_as_convs(half) == 0 and half.graph.node[0].op_type == "BatchNormalization"
    spatial = _bn_graph(TensorProto.FLOAT, param_shape=(3, 4, 4))  # opset 1-8's spatial=0 statistics
    assert artifacts.batchnorms_as_convs(spatial) == 0
    # a statistic an If branch also reads stays an initializer
    branch = helper.make_graph([helper.make_node("Identity", ["mean"], ["m"])], "then", [],
                               [helper.make_tensor_value_info("m", TensorProto.FLOAT, [3])])
    cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    used = _bn_graph(TensorProto.FLOAT, extra_nodes=[cond, helper.make_node("If", ["c"], ["z"], then_branch=branch,
                                                                         else_branch=branch)])
    assert artifacts.batchnorms_as_convs(used) == 1
    assert {i.name for i in used.graph.initializer} >= {"mean", "Y.dw_weight", "Y.dw_bias"}
    assert "scale" not in {i.name for i in used.graph.initializer}  # read by nothing else: dropped
