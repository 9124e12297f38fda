"""Derived artifacts, made at packaging time and gated on accuracy:

- optimized: the graph optimized offline (ORT_ENABLE_ALL on the packaging CPU's class, whose
  layouts can be CPU-specific, saved in ORT format to be memory-mapped; ORT_ENABLE_EXTENDED ONNX
  for a target this machine cannot run), loaded later without re-optimizing: faster session
  creation;
- int8: static QDQ quantization with the bundle's calibration inputs and each target's settings
  (x86 with VNNI: U8/S8; x86 without: U8/S8 with reduce_range; arm64: S8/S8), then pre-optimized.
  BatchNormalizations no Conv absorbs (pre-activation blocks: BN -> ReLU -> Conv, as in DenseNet) are
  rewritten first as 1x1 depthwise Convs, which quantize to QLinearConv: the graph stays int8 and NHWC
  end to end instead of dequantizing, normalizing in float, requantizing and transposing around each.

Every artifact is checked against the portable model on the validation inputs by the one
accuracy judge (`onnxfn.tools.accuracy`, absolute max abs bound): max abs difference for fp32;
top-1 agreement (classification) or mask Dice (segmentation) for int8. One that misses its
threshold is not packaged, and the report says why. Artifacts for a CPU class this machine does
not belong to are checked here as a proxy and marked unverified. Sessions (to save an optimized
graph, to check, to time) come from the one session factory, `onnxfn.runtime.session.create`."""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from onnxfn.bundles.manifest import Artifact, InputSpec, Manifest, Requirement
from onnxfn.errors import BadRequest
from onnxfn.runtime import cpu
from onnxfn.runtime import session as sessions
from onnxfn.tools.accuracy import Thresholds, compare, judge

__all__ = ["INT8_TARGETS", "Derived", "Thresholds", "build", "default_int8_target", "own_class"]

#: int8 targets: (name, requirement, activation type, reduce_range)
INT8_TARGETS = {
    "x86_64-vnni": (Requirement("x86_64", ("avx512_vnni",)), "QUInt8", False),
    "x86_64-avxvnni": (Requirement("x86_64", ("avx_vnni",)), "QUInt8", False),
    "x86_64": (Requirement("x86_64", ("avx2",)), "QUInt8", True),
    "aarch64": (Requirement("aarch64", ("asimddp",)), "QInt8", False),
}


#: The packaging options each limit comes from, named when an artifact misses it.
FLAGS = {"max_abs_diff": "--max-abs-diff", "agreement": "--min-top1", "dice": "--min-dice"}
#: The manifest's names for the gating figures (an artifact's `accuracy`).
RECORDED = {"agreement": "top1_agreement", "dice": "dice_vs_portable", "max_rel_diff": "max_rel_diff"}


@dataclass
class Derived:
    """A derived artifact made for packaging, its accuracy figures and the gate's verdict."""
    path: Path
    kind: str
    requires: Requirement
    preoptimized: bool
    verified: bool
    accuracy: dict = field(default_factory=dict)
    accepted: bool = False
    reason: str = ""

    def artifact(self) -> Artifact:
        """The artifact as sessions see it (what decides their options: kind, pre-optimization, format)."""
        return _checked(self.path, self.kind, self.preoptimized)


def own_class() -> Requirement:
    """This machine's CPU class for fp32 optimized artifacts: its widest vector ISA."""
    features = cpu.features() or ()
    best = next((f for f in ("avx512f", "avx2") if f in features), None) if cpu.arch() == "x86_64" else None
    return Requirement(cpu.arch(), (best,) if best else ())


def default_int8_target() -> str:
    """The int8 target for this machine's CPU class (a name of INT8_TARGETS)."""
    features = set(cpu.features() or ())
    if cpu.arch() == "aarch64":
        return "aarch64"
    if "avx512_vnni" in features:
        return "x86_64-vnni"
    if "avx_vnni" in features:
        return "x86_64-avxvnni"
    return "x86_64"


def optimize(source: Path, out: Path, level: str) -> Path:
    """Save the graph optimized at `level`; an .ort path saves ORT format (memory-mappable, fastest to load)."""
    ort = sessions.engine()
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(out)
    if out.suffix == ".ort":
        options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = 3
    sessions.create(source, session_options=options)
    return out


class _Held(logging.Handler):
    """Counts the log records it holds back."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextmanager
def quiet() -> Iterator[_Held]:
    """Hold third-party chatter back for a block: log records (the quantizer warns on the root logger,
    hundreds of "Axis 1 is out-of-range" lines for a DenseNet), Python warnings and onnxruntime's own
    C++ log below errors. The records are counted (`.count`), not shown; the root logger's handlers
    are put back as they were (logging.warning() alone would install a stderr handler for good)."""
    root = logging.getLogger()
    held, saved, level = _Held(), root.handlers[:], root.level
    root.handlers[:] = [held]
    root.setLevel(logging.WARNING)
    ort = sessions.engine()
    ort.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield held
    finally:
        ort.set_default_logger_severity(2)
        root.handlers[:] = saved
        root.setLevel(level)


@contextmanager
def step(progress: Callable[[str], None] | None, what: str) -> Iterator[dict]:
    """Time one packaging step and report it as one line ("quantize x86_64 int8: 12.3 s"); a step may add
    to the line by setting `note` in the dict it is given."""
    line = {"note": ""}
    started = time.perf_counter()
    yield line
    if progress is not None:
        progress(f"{what}: {time.perf_counter() - started:.1f} s{line['note']}")


def batchnorms_as_convs(model) -> int:
    """Rewrite, in place, each 4-D float BatchNormalization (inference mode, constant per-channel statistics,
    float input) as the same per-channel affine map, a 1x1 depthwise Conv (group = channels, weight
    scale / sqrt(var + eps), bias shift - mean * weight); returns how many. Run after Conv+BN fusion: these are
    the ones left. Statistics nothing else uses (subgraphs included) are dropped."""
    from onnx import TensorProto
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    typed = [v for v in [*graph.value_info, *graph.input, *graph.output] if v.type.tensor_type.HasField("shape")]
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in typed}
    floats = {v.name for v in typed if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    names = {*constants, *(o for n in graph.node for o in n.output)}
    nodes, statistics, done = [], set(), 0
    for node in graph.node:
        params = [constants.get(name) for name in node.input[1:5]]
        if (node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or len(node.output) != 1
                or ranks.get(node.input[0]) != 4 or node.input[0] not in floats or len(params) != 4
                or None in params or any(a.name == "training_mode" and a.i for a in node.attribute)
                or any(p.data_type != TensorProto.FLOAT or len(p.dims) != 1 or p.dims != params[0].dims
                       for p in params)  # per-channel vectors (not opset 1-8's spatial=0 C x H x W)
                or {f"{node.output[0]}.dw_weight", f"{node.output[0]}.dw_bias"} & names):
            nodes.append(node)
            continue
        nodes.append(_depthwise(node, params, graph))
        statistics.update(node.input[1:5])
        done += 1
    del graph.node[:]
    graph.node.extend(nodes)
    unused = statistics - _inputs(graph.node) - {i.name for i in graph.input}
    kept = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return done


def _inputs(nodes) -> set[str]:
    """Every name the nodes read, in their subgraphs (If, Loop, Scan bodies) too."""
    from onnx import AttributeProto
    names = set()
    for node in nodes:
        names.update(node.input)
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                names |= _inputs(a.g.node)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    names |= _inputs(g.node)
    return names


def _depthwise(batchnorm, params: list, graph):
    from onnx import helper, numpy_helper
    eps = next((a.f for a in batchnorm.attribute if a.name == "epsilon"), 1e-5)
    scale, shift, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
    weight = scale / np.sqrt(var + eps)
    channels, out = weight.shape[0], batchnorm.output[0]
    w = numpy_helper.from_array(weight.reshape(channels, 1, 1, 1).astype(np.float32), f"{out}.dw_weight")
    b = numpy_helper.from_array((shift - mean * weight).astype(np.float32), f"{out}.dw_bias")
    graph.initializer.extend([w, b])
    return helper.make_node("Conv", [batchnorm.input[0], w.name, b.name], [out], name=f"{out}.dw", group=channels,
                            kernel_shape=[1, 1])


def quantize(source: Path, out: Path, spec: InputSpec, calibration: list[np.ndarray], activation: str,
             reduce_range: bool) -> Path:
    """Static QDQ int8 quantization of `source` with the `calibration` inputs, saved at `out` (third-party
    warnings held back: `quiet`)."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                              quantize_static)
    except ImportError as e:
        raise BadRequest(f"int8 quantization needs the onnx package ({e}): pip install onnx") from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {spec.name: batch}

    with tempfile.TemporaryDirectory() as tmp, quiet():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        _rewrite(prepared, batchnorms_as_convs)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8,
                        per_channel=True, reduce_range=reduce_range)
    return out


def _rewrite(path: Path, change: Callable) -> None:
    import onnx
    model = onnx.load(str(path))
    if change(model):
        onnx.save(model, str(path))


def _checked(model: Path, kind: str = "portable", preoptimized: bool = False) -> Artifact:
    return Artifact(path=Path(model).name, sha256="0" * 64, size=0, kind=kind, preoptimized=preoptimized)


def session(model: Path, artifact: Artifact | None = None, threads: int = 1):
    """A session for checking an artifact, with the options the function would build for it
    (pre-optimized ones are not optimized again; .ort ones are memory-mapped)."""
    return sessions.create(model, threads, artifact or _checked(model))


def outputs(model: Path, spec: InputSpec, inputs: list[np.ndarray], output: str,
            artifact: Artifact | None = None) -> np.ndarray:
    """The model's `output` on each input, concatenated (flattened when the shapes vary)."""
    runner = session(model, artifact)
    results = [runner.run([output], {spec.name: x})[0] for x in inputs]
    if len({r.shape[1:] for r in results}) == 1:
        return np.concatenate(results)
    return np.concatenate([r.reshape(-1) for r in results])  # kept-size models: flatten the varying shapes


def gate(candidate: Derived, manifest: Manifest, reference: np.ndarray, got: np.ndarray,
         limits: Thresholds) -> None:
    """Hold an artifact's outputs to the portable model's (the one judge, absolute max abs bound);
    record the figures (max abs difference, samples, and for int8 the figure that gates it) and the verdict."""
    task = manifest.task
    figures = compare(reference, got, agreement="last" if task == "classification" else None,
                      mask=manifest.primary_output if task == "segmentation" else None)
    verdict = judge(figures, limits, kind=candidate.kind, task=task, names=("artifact", "portable model"),
                    flags=FLAGS)
    candidate.accuracy["max_abs_diff"] = figures.max_abs_diff
    candidate.accuracy["samples"] = int(figures.samples)
    if candidate.kind == "int8":
        for check in verdict.checks:
            candidate.accuracy[RECORDED[check.figure]] = check.value
    candidate.accepted = verdict.ok
    candidate.reason = "; ".join(verdict.failures)


def build(portable: Path, manifest: Manifest, work: Path, *, optimize_for: list[str], int8_targets: list[str],
          calibration: list[np.ndarray] | None, validation: list[np.ndarray] | None,
          limits: Thresholds, ort_format: bool = True,
          progress: Callable[[str], None] | None = None,
          example: dict[str, np.ndarray] | None = None) -> list[Derived]:
    """Make, check and return the requested derived artifacts (accepted or not) in `work`; `progress` gets
    one line per step (optimize, calibrate and quantize, gate, speed) with its time. Without validation or
    calibration inputs the gate checks the bundle's `example` inputs, else random ones of the zeros' shape."""
    spec = manifest.inputs[0]
    if int8_targets and calibration is None:
        raise BadRequest("int8 artifacts need calibration inputs: pass --calibration FILE.npy")
    int8_targets = [default_int8_target() if t == "native" else t for t in int8_targets]
    unknown = [t for t in int8_targets if t not in INT8_TARGETS]
    if unknown:
        raise BadRequest(f"unknown int8 target(s) {', '.join(unknown)}; known: {', '.join(INT8_TARGETS)}")
    if len(manifest.inputs) != 1 and (optimize_for or int8_targets):
        raise BadRequest("derived artifacts are made for single-input models only")
    checks = validation if validation is not None else calibration
    if checks is None and example is not None:
        checks = [example[spec.name]]
    if checks is None:
        from onnxfn.runtime.model import example
        rng = np.random.default_rng(0)
        checks = [rng.random(example(spec).shape, dtype=np.float32) for _ in range(8)]
    checks = [x.astype(spec.dtype, copy=False) for x in checks]
    output = manifest.primary_output.name
    reference = outputs(portable, spec, checks, output)
    here, mine = cpu.arch(), own_class()
    candidates = []
    for target in optimize_for:
        native = target == "native" or target == here
        requires = mine if native else Requirement(target)
        if requires.arch not in ("x86_64", "aarch64"):
            raise BadRequest(f"--optimize-for {target!r}: choose native, x86_64 or aarch64")
        label = f"{requires.arch}{'-' + requires.features[0] if requires.features else ''}"
        suffix = ".ort" if native and ort_format else ".onnx"  # ORT format is saved for this machine's class only
        with step(progress, f"optimize for {label}"):
            path = optimize(portable, work / f"model.{label}.opt{suffix}",
                            "ORT_ENABLE_ALL" if native else "ORT_ENABLE_EXTENDED")
        candidates.append(Derived(path, "optimized", requires, True, native))
    for target in int8_targets:
        requires, activation, reduce_range = INT8_TARGETS[target]
        with step(progress, f"calibrate and quantize int8 for {target} ({len(calibration)} calibration inputs)"):
            raw = quantize(portable, work / f"model.{target}.int8.raw.onnx", spec, calibration, activation,
                           reduce_range)
        native = requires.arch == here and set(requires.features) <= set(cpu.features() or ())
        suffix = ".ort" if native and ort_format else ".onnx"
        with step(progress, f"optimize int8 for {target}"):
            path = optimize(raw, work / f"model.{target}.int8{suffix}",
                            "ORT_ENABLE_ALL" if native else "ORT_ENABLE_EXTENDED")
        raw.unlink()
        candidates.append(Derived(path, "int8", requires, True, native))
    for candidate in candidates:
        with step(progress, f"gate {candidate.path.name} on {len(checks)} inputs") as line:
            got = outputs(candidate.path, spec, checks, output, candidate.artifact())
            gate(candidate, manifest, reference, got, limits)
            line["note"] = ", accepted" if candidate.accepted else ", rejected"
        if not candidate.verified:
            candidate.accuracy["checked_on"] = here
        elif candidate.accepted and candidate.kind == "int8":
            threads = cpu.threads()  # the gate measures at the thread count the function will use here
            with step(progress, f"speed of {candidate.path.name} at {threads} thread(s)") as line:
                speedup = speed(portable, candidate, spec, checks[0], threads=threads)
                line["note"] = f", {speedup:.2f}x the portable model"
            candidate.accuracy["speedup_vs_portable"] = speedup
            candidate.accuracy["speedup_threads"] = threads
            if speedup < limits.min_int8_speedup:
                candidate.accepted = False
                candidate.reason = (f"it runs {speedup:.2f}x the portable model's speed on this CPU class "
                                    f"at {threads} thread(s) (below {limits.min_int8_speedup:g}: "
                                    "--min-int8-speedup); int8 pays off on "
                                    "CPUs with VNNI or dot-product instructions")
    return candidates


def speed(portable: Path, candidate: Derived, spec: InputSpec, x: np.ndarray, rounds: int = 5,
          runs: int = 5, threads: int = 1) -> float:
    """The candidate's speed relative to the portable model at `threads` intra-op threads (medians,
    alternated), each built with the options the function would use."""
    runners = [session(portable, threads=threads), session(candidate.path, candidate.artifact(), threads)]
    for runner in runners:
        runner.run(None, {spec.name: x})
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            for _ in range(runs):
                started = time.perf_counter()
                runner.run(None, {spec.name: x})
                times[i].append(time.perf_counter() - started)
    return float(np.median(times[0]) / np.median(times[1]))
