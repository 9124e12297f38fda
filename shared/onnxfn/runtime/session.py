"""The one session factory: every ONNX Runtime session onnxfn builds (the function, packaging,
proofs, benchmarks) is made here, with the options the function would use."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from onnxfn.errors import BundleError

if TYPE_CHECKING:
    from onnxfn.bundles.manifest import Artifact, Manifest, Tuning

#: numpy and onnxruntime are imported by one thread at a time: numpy's C extension fails when two
#: threads import it at once (the load thread imports onnxruntime while the first call imports the core)
IMPORTS = threading.Lock()

ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
             "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
             "tensor(uint64)": "uint64", "tensor(int8)": "int8", "tensor(int16)": "int16",
             "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
             "tensor(string)": "string"}
OPT_LEVELS = {"DISABLE": "ORT_DISABLE_ALL", "BASIC": "ORT_ENABLE_BASIC", "EXTENDED": "ORT_ENABLE_EXTENDED",
              "ALL": "ORT_ENABLE_ALL"}
CPU = "CPUExecutionProvider"


def engine():
    """The onnxruntime module, imported under the `IMPORTS` lock."""
    with IMPORTS:
        import onnxruntime
    return onnxruntime


def dtype(ort_type: str) -> str:
    """The numpy dtype name of an ONNX Runtime type string such as ``tensor(float)`` ("string" if unknown)."""
    return ORT_TYPES.get(ort_type, "string")


#: how long an idle intra-op worker spins for work before it sleeps, when spinning is on. ORT's own spin made
#: DenseNet-121 as fast but burnt ~45 ms of CPU per call (the second core, after each run); 50 us kept the
#: speed at the CPU cost of no spinning (docs/benchmarks/handwritten.md). None: ORT's own duration.
SPIN_DURATION_US: int | None = 50


def spinning(threads: int) -> bool:
    """Whether intra-op threads spin by default (bounded to `SPIN_DURATION_US`): with more than one thread, under
    any CPU quota. Spinning is ORT's default and what a hand-written handler gets: at 2 threads it made
    DenseNet-121 1.1-1.4x faster, the workers waking between the run's parallel sections without a futex. Bounded
    to 50 us it costs no more CPU per call than not spinning; at 1.5 CPUs for 2 threads it had the better p50
    (sporadic traffic 39.6 vs 56.7 ms, sustained 41.1 vs 45.1; p99 alike, docs/benchmarks/handwritten.md)."""
    return threads > 1


def tiered(artifact: Artifact, tuning: Tuning | None = None, fixed_shape: bool = False) -> bool:
    """Whether a container's first session of `artifact` is built in a form that is quicker to create, and replaced
    after the first call by the session it serves (`Runner.settle`; docs/benchmarks/handwritten.md, DenseNet-121):
    a pre-optimized fp32 `.ort` (its memory-mapped weights used in place, not packed: created in 7-10 ms instead
    of 30-45, each run 2 % slower), or a portable model whose input shape is fixed (`fixed_shape`: optimized at
    the basic level, created in 59 ms instead of 106, its first run 73 ms instead of 54; a model whose cost
    grows with its input is not, as a large first input would run slower). Not where a bench tuning chose the
    prepacking or the level."""
    if artifact.kind == "optimized" and artifact.path.endswith(".ort"):
        return not (tuning and tuning.disable_prepacking)
    return (fixed_shape and artifact.kind == "portable" and not artifact.preoptimized
            and not (tuning and tuning.graph_optimization_level))


def options(threads: int, artifact: Artifact | None = None, tuning: Tuning | None = None, first: bool = False):
    """Options for one session: explicit threads, sequential, intra-op spinning as `spinning(threads)` decides
    (bounded to `SPIN_DURATION_US`); a pre-optimized artifact is loaded without re-optimizing (an fp32 `.ort`
    with its weights copied into ORT's memory and prepacked, as ORT does by default); a benchmark's tuning for
    this CPU class applies on top (its `allow_spinning` wins). `first`: the cold start's form of a `tiered`
    artifact's session."""
    ort = engine()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = tuning.graph_optimization_level if tuning and tuning.graph_optimization_level else "ALL"
    if artifact is not None and artifact.preoptimized:
        level = "DISABLE"
    elif first:
        level = "BASIC"
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
    spin = tuning.allow_spinning if tuning is not None else spinning(threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin and SPIN_DURATION_US is not None:
        opts.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_DURATION_US))
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    ort_file = artifact is not None and artifact.path.endswith(".ort")
    no_packing = bool(tuning and tuning.disable_prepacking) or (first and ort_file)
    if no_packing:
        opts.add_session_config_entry("session.disable_prepacking", "1")  # int8 kernels need their packed weights
    if ort_file:  # memory-mapped; an int8 .ort's weights are packed copies whatever their source
        in_place = no_packing or artifact.kind == "int8"
        opts.add_session_config_entry("session.load_model_format", "ORT")
        opts.add_session_config_entry("session.use_memory_mapped_ort_model", "1")
        opts.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1" if in_place else "0")
    opts.log_severity_level = 3
    return opts


#: Memory, measured on the demo U-Net (dynamic H and W, 2 threads; bench/memory.py): ORT's CPU arena keeps its
#: peak, 1,129 MB of RSS after a 2048x2048 call (73 MB after a 256x256 one). Kept on, with memory patterns:
#: without the arena RSS stays near 85 MB and the 2048x2048 peak is 640 MB instead of 1,056, but a warm 512x512
#: call is 1.5x slower (every run faults its buffers in again); the shrinkage run option on every run is 1.4x
#: slower, 1.2x with memory patterns off; memory patterns off alone changes no RSS. So the arena stays, and only
#: a call large enough to grow it gives memory back afterwards (`model.Model.release`): a tiny run with
#: `release_options()` frees every arena chunk no output holds, which brings RSS back to 57 MB.
RELEASE_CONFIG = ("memory.enable_memory_arena_shrinkage", "cpu:0")


def release_options():
    """Run options under which the CPU arena hands its unused chunks back to the system when the run ends."""
    options = engine().RunOptions()
    options.add_run_config_entry(*RELEASE_CONFIG)
    return options


def create(path: Path | str, threads: int = 1, artifact: Artifact | None = None, tuning: Tuning | None = None, *,
           session_options=None, providers: list | None = None, what: str | None = None, first: bool = False):
    """An `InferenceSession` for the model at `path`, built with `options(threads, artifact, tuning, first)` unless
    `session_options` are given, on the CPU provider unless `providers` are (names, or (name, provider
    options) pairs, as onnxruntime takes them). A model onnxruntime cannot load is a `BundleError` naming
    `what` (default: the artifact's path, else the file); onnxruntime's own error is its `__context__`."""
    ort = engine()
    opts = session_options if session_options is not None else options(threads, artifact, tuning, first)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or [CPU])
    except Exception as e:  # onnxruntime raises its own exception types
        name = what or (artifact.path if artifact is not None else str(path))
        raise BundleError(f"onnxruntime cannot load artifact {name!r}: {e}", code="artifact_invalid") from None


def check(manifest: Manifest, session) -> None:
    """The manifest must describe the model it ships with: every input and output it names, their
    dtypes, ranks and fixed sizes, and a classifier's label count."""
    model_inputs = {i.name: i for i in session.get_inputs()}
    for i, spec in enumerate(manifest.inputs):
        node = model_inputs.get(spec.name)
        where = f"manifest field inputs[{i}]"
        if node is None:
            raise BundleError(f"{where} names input {spec.name!r}, but the model's inputs are "
                              f"{', '.join(map(repr, model_inputs))}", code="manifest_mismatch")
        kind = ORT_TYPES.get(node.type, node.type)
        if kind != spec.dtype:
            raise BundleError(f"{where}.dtype is {spec.dtype} but the model's input {spec.name!r} is {kind}",
                              code="manifest_mismatch")
        if len(node.shape) != len(spec.shape):
            raise BundleError(f"{where}.shape has {len(spec.shape)} dimensions but the model's input has "
                              f"{len(node.shape)}", code="manifest_mismatch")
        for axis, (want, have) in enumerate(zip(spec.shape, node.shape)):
            if isinstance(want, int) and isinstance(have, int) and want != have:
                raise BundleError(f"{where}.shape[{axis}] is {want} but the model fixes it at {have}",
                                  code="manifest_mismatch")
    undeclared = set(model_inputs) - {s.name for s in manifest.inputs}
    if undeclared:
        raise BundleError(f"the model needs input(s) {', '.join(sorted(undeclared))} that manifest field inputs "
                          "does not declare", code="manifest_mismatch")
    model_outputs = {o.name: o for o in session.get_outputs()}
    for i, spec in enumerate(manifest.outputs):
        if spec.name not in model_outputs:
            raise BundleError(f"manifest field outputs[{i}] names output {spec.name!r}, but the model's outputs "
                              f"are {', '.join(sorted(model_outputs))}", code="manifest_mismatch")
        classes = model_outputs[spec.name].shape[-1] if model_outputs[spec.name].shape else None
        if manifest.task == "classification" and i == 0 and spec.labels and isinstance(classes, int) \
                and classes != len(spec.labels):
            raise BundleError(f"manifest field outputs[0].labels lists {len(spec.labels)} labels but output "
                              f"{spec.name!r} gives {classes} classes", code="manifest_mismatch")
