"""`onnxfn package`: a bundle from a bare ONNX model. Inputs and outputs are read from
the model itself; options add what serving an image task needs."""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from onnxfn.bundles import bundle as bundles
from onnxfn.bundles import manifest as mf
from onnxfn.errors import BadRequest, BundleError
from onnxfn.runtime import session as sessions

if TYPE_CHECKING:
    from onnxfn.tools.accuracy import Thresholds


@dataclass
class Options:
    """What `onnxfn package` is asked for: the manifest's fields, derived artifacts and their accuracy gate."""
    name: str | None = None
    version: str = "1"
    task: str = "tensor"
    description: str = ""
    layout: str | None = None
    image: dict = field(default_factory=dict)      # manifest `image` fields (color, size, scaling, ...)
    output: str | None = None                      # the primary output's name
    activation: str | None = None
    decision: str | None = None
    threshold: float | None = None
    labels: list[str] | None = None
    detection: dict = field(default_factory=dict)  # manifest `detection` fields (format, score_threshold, ...)
    image_input: bool = False                      # tensor task: the first input takes images (an `image` section)
    example: Path | None = None                    # .npz of one array per input name: warm-ups run on it
    force: bool = False
    optimize_for: list[str] = field(default_factory=list)   # "native", "x86_64", "aarch64"
    int8: list[str] = field(default_factory=list)            # int8 targets (artifacts.INT8_TARGETS)
    calibration: Path | None = None                          # .npy/.npz of inputs, or a folder of images
    validation: Path | None = None
    thresholds: Thresholds | None = None
    ort_format: bool = True                                  # native derived artifacts in ORT format
    report: list[str] = field(default_factory=list)          # filled: what the accuracy gate decided
    progress: Callable[[str], None] | None = None           # told one line per packaging step, with its time


def describe(model: Path) -> tuple[list[dict], list[dict]]:
    """The model's inputs and outputs as manifest entries (name, dtype, shape)."""
    try:
        session = sessions.create(model, 1, what=str(model))
    except BundleError as e:  # the factory's sentence says "artifact"; this is a bare model
        raise BundleError(e.message.replace(" artifact ", " ", 1), code="artifact_invalid") from None

    def entry(node) -> dict:
        shape = [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else -1) for d in node.shape]
        return {"name": node.name, "dtype": sessions.dtype(node.type), "shape": shape}
    return [entry(i) for i in session.get_inputs()], [entry(o) for o in session.get_outputs()]


def guess_layout(shape: list) -> str | None:
    """The likely layout of an input of this shape (NF, NCHW, NHWC, NHW, CHW), or None."""
    rank = len(shape)
    if rank == 2:
        return "NF"
    if rank == 4:
        if shape[1] in (1, 3):
            return "NCHW"
        if shape[3] in (1, 3):
            return "NHWC"
        return "NCHW"
    if rank == 3:
        return "NHW" if shape[0] in (-1, 1) or isinstance(shape[0], str) else "CHW"
    return None


def build(model: Path, out: Path, options: Options) -> bundles.Bundle:
    """Write a bundle for `model` at `out` (with the derived artifacts that pass the accuracy gate); it must load."""
    model = Path(model)
    if not model.is_file():
        raise BadRequest(f"model file {str(model)!r} does not exist")
    inputs, outputs = describe(model)
    images = options.task != "tensor" or options.image_input or bool(options.image)
    if images:
        if len(inputs) != 1 and options.task != "tensor":
            raise BadRequest(f"a {options.task} bundle needs a model with one input; this one has "
                             f"{', '.join(i['name'] for i in inputs)}: package it as --task tensor")
        spec = inputs[0]
        spec["layout"] = options.layout or guess_layout(spec["shape"])
        if spec["layout"] is None:
            raise BadRequest(f"cannot guess the layout of input {spec['name']!r} with shape {spec['shape']}: "
                             "pass --layout")
        spec["image"] = dict(options.image)
        if "color" not in spec["image"]:
            c_axis = spec["layout"].find("C")
            spec["image"]["color"] = "RGB" if c_axis >= 0 and spec["shape"][c_axis] == 3 else "L"
    elif options.layout:
        inputs[0]["layout"] = options.layout
    detection = _detection(outputs, options) if options.task == "detection" else dict(options.detection) or None
    if detection is not None and detection.get("format") == "boxes" and not options.output:
        first = detection["boxes"]  # the class names (--labels) sit on the first output
        outputs.sort(key=lambda o: o["name"] != first)
    if options.output:
        names = [o["name"] for o in outputs]
        if options.output not in names:
            raise BadRequest(f"--output {options.output!r} is not an output of the model ({', '.join(names)})")
        outputs.sort(key=lambda o: o["name"] != options.output)
    primary = outputs[0]
    for key in ("activation", "decision", "threshold", "labels"):
        if getattr(options, key) is not None:
            primary[key] = getattr(options, key)
    for o in outputs:
        o.pop("dtype"), o.pop("shape")
    if options.int8 and options.calibration is None:
        raise BadRequest("int8 artifacts need calibration inputs: pass --calibration FILE.npy or a folder of images")
    artifact = bundles.artifact_for(model, "model.onnx")
    document = {"format": mf.FORMAT, "name": options.name or model.stem, "version": options.version,
                "task": options.task, "description": options.description, "inputs": inputs, "outputs": outputs,
                "artifacts": [_artifact_entry(artifact)]}
    if detection is not None:
        document["detection"] = detection
    manifest = mf.parse(json.loads(json.dumps(document)))
    files = {"model.onnx": model}
    with tempfile.TemporaryDirectory() as work:
        example = None
        if options.example is not None:
            example = load_example(options.example, manifest.inputs)
            path = Path(work) / bundles.EXAMPLE
            np.savez(path, **example)
            files[bundles.EXAMPLE] = path
            pinned = bundles.artifact_for(path, bundles.EXAMPLE)
            document["example"] = {"path": pinned.path, "sha256": pinned.sha256, "size": pinned.size}
            manifest = mf.parse(json.loads(json.dumps(document)))
        if options.optimize_for or options.int8:
            document["artifacts"] += _derived(model, manifest, Path(work), options, files, example)
            manifest = mf.parse(json.loads(json.dumps(document)))
        cost = measure_memory(model, manifest, example, options)
        if cost is not None:
            document["memory"] = asdict(cost)
            manifest = mf.parse(json.loads(json.dumps(document)))
        written = bundles.write(out, manifest, files, force=options.force)
    from onnxfn.runtime.loader import load
    from onnxfn.settings import Settings
    try:  # the bundle must serve: manifest matches the model, warm-up runs (on the example, else on zeros)
        load(Settings(model_uri=str(written.root), threads=1))
    except BundleError as e:
        import shutil
        shutil.rmtree(written.root, ignore_errors=True)
        if e.code == "warmup_failed" and example is None:
            raise BundleError(zeros_failed(manifest.inputs, e.message), code="warmup_failed") from None
        raise
    return written


def measure_memory(model: Path, manifest: mf.Manifest, example: dict[str, np.ndarray] | None,
                   options: Options) -> mf.MemoryCost | None:
    """The portable model's memory cost (`runtime.memory.measure` at its `SIZES` on a fresh session with the
    threads this machine would give the function), or None, said in `options.report`, where the model fails
    on the inputs (the bundle's load check then says why)."""
    from onnxfn.runtime import cpu, memory
    from onnxfn.runtime.model import zeros
    spec = manifest.sized_input
    feeds = example if example is not None else zeros(manifest.inputs)
    try:
        cost = memory.measure(sessions.create(model, cpu.threads(), what=str(model)), spec, memory.SIZES, feeds)
    except Exception as e:  # onnxruntime's own types
        options.report.append(f"memory cost not measured ({getattr(e, 'message', e)}): measured at the first load")
        return None
    options.report.append(f"memory cost: {cost.fixed} bytes + {cost.per_element} bytes per input element")
    return cost


def zeros_failed(inputs: tuple[mf.InputSpec, ...], message: str) -> str:
    """The packaging error when the warm-up on zeros fails: the input(s) whose zeros are likely invalid
    (those that are not floating point: sizes, axes, indices; else every input) and the `--example` cure."""
    suspects = [i.name for i in inputs if not i.dtype.startswith("float")] or [i.name for i in inputs]
    which = ", ".join(map(repr, suspects))
    return (f"{message.strip().rstrip('.')}. The warm-up ran on zeros, which may not be valid for input(s) {which} (sizes, scales, "
            f"axes or indices): pass --example FILE.npz holding a valid array for each input by name "
            f"({', '.join(i.name for i in inputs)})")


def load_example(path: Path, inputs: tuple[mf.InputSpec, ...]) -> dict[str, np.ndarray]:
    """The `--example` arrays, checked against the model's inputs (names, dtypes, shapes): a 400 naming the
    input otherwise."""
    path = Path(path)
    if not path.is_file():
        raise BadRequest(f"--example {str(path)!r} does not exist: pass an .npz with one array per input name",
                         code="example_invalid")
    try:
        arrays = bundles.read_example(path, f"--example {str(path)!r}")
    except BundleError as e:
        raise BadRequest(e.message, code="example_invalid") from None
    problem = bundles.example_problem(arrays, inputs)
    if problem:
        raise BadRequest(f"--example {str(path)!r}: {problem}", code="example_invalid")
    return arrays


def _detection(outputs: list[dict], options: Options) -> dict:
    """The manifest's `detection` section: the options given, the format and the post-NMS outputs' names
    guessed from the model's outputs when not given (one rank-2/3 output: yolo; boxes [N, 4], float scores
    and integer labels: boxes)."""
    detection = dict(options.detection)
    fmt = detection.get("format")
    if fmt is None:
        if len(outputs) == 1 or options.output:
            fmt = "yolo"
        elif len(outputs) >= 3:
            fmt = "boxes"
        else:
            raise BadRequest(f"cannot tell the detection format of a model with outputs "
                             f"{', '.join(o['name'] for o in outputs)}: pass --detection-format boxes or yolo")
        detection["format"] = fmt
    if fmt != "boxes":
        return detection
    for role, guess in (("boxes", lambda o: o["dtype"].startswith("float") and len(o["shape"]) in (2, 3)
                         and o["shape"][-1] == 4),
                        ("labels", lambda o: o["dtype"].startswith(("int", "uint"))),
                        ("scores", lambda o: o["dtype"].startswith("float") and len(o["shape"]) in (1, 2))):
        if detection.get(role):
            continue
        named = [o["name"] for o in outputs if o["name"] == role]
        taken = {detection.get(r) for r in ("boxes", "scores", "labels")}
        fitting = named or [o["name"] for o in outputs if guess(o) and o["name"] not in taken]
        if len(fitting) != 1:
            raise BadRequest(f"cannot tell which output holds the {role} among "
                             f"{', '.join(o['name'] for o in outputs)}: pass --{role}-output")
        detection[role] = fitting[0]
    return detection


def _artifact_entry(artifact: mf.Artifact) -> dict:
    return {k: v for k, v in asdict(artifact).items() if v is not None}


def _derived(model: Path, manifest: mf.Manifest, work: Path, options: Options, files: dict,
             example: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Build the requested optimized/int8 artifacts; keep those that pass the accuracy gate."""
    from onnxfn.tools import artifacts
    from onnxfn.tools.accuracy import Thresholds
    spec = manifest.inputs[0]
    calibration = load_inputs(options.calibration, spec) if options.calibration else None
    validation = load_inputs(options.validation, spec) if options.validation else None
    candidates = artifacts.build(model, manifest, work, optimize_for=options.optimize_for,
                                 int8_targets=options.int8, calibration=calibration, validation=validation,
                                 limits=options.thresholds or Thresholds(), ort_format=options.ort_format,
                                 progress=options.progress, example=example)
    entries = []
    for c in candidates:
        figures = ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in c.accuracy.items())
        if not c.accepted:
            options.report.append(f"rejected {c.path.name} ({c.kind} for {c.requires.arch}"
                                  f"{' ' + '+'.join(c.requires.features) if c.requires.features else ''}): "
                                  f"{c.reason}; {figures}")
            continue
        status = "verified" if c.verified else "unverified: made for a CPU class this machine is not"
        options.report.append(f"packaged {c.path.name} ({c.kind}, {status}): {figures}")
        files[c.path.name] = c.path
        entry = _artifact_entry(bundles.artifact_for(c.path, c.path.name, kind=c.kind))
        entry.update(requires={"arch": c.requires.arch, "features": list(c.requires.features)},
                     preoptimized=c.preoptimized, verified=c.verified, accuracy=c.accuracy)
        entries.append(entry)
    return entries


def load_inputs(path: Path, spec: mf.InputSpec) -> list[np.ndarray]:
    """Model inputs for calibration or validation: a .npy/.npz array [N, ...] in the input's layout, or a
    folder of images decoded and pre-processed as the bundle declares. Each item has a batch of one."""
    path = Path(path)
    if path.is_dir():
        if spec.image is None:
            raise BadRequest(f"{str(path)!r} is a folder of images, but input {spec.name!r} takes no image")
        from onnxfn.codecs import payload
        from onnxfn.tasks import preprocess
        items = []
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            body = payload.classify(file.read_bytes(), None, 1 << 30)
            items.append(preprocess.prepare(payload.decode_image(body, 1 << 30), spec)[0])
        if not items:
            raise BadRequest(f"no images in {str(path)!r}")
        return items
    if not path.is_file():
        raise BadRequest(f"{str(path)!r} does not exist: pass a .npy file or a folder of images")
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        data = data[data.files[0]]
    rank = len(spec.shape)
    if data.ndim != rank:
        raise BadRequest(f"{str(path)!r} holds shape {list(data.shape)}; input {spec.name!r} takes {rank} dimensions "
                         f"{list(spec.shape)} (the first one is the sample count)")
    for axis, (want, got) in enumerate(zip(spec.shape[1:], data.shape[1:]), start=1):
        if isinstance(want, int) and want != got:
            raise BadRequest(f"{str(path)!r} has size {got} in dimension {axis}, input {spec.name!r} takes {want}")
    return [np.ascontiguousarray(data[i:i + 1], dtype=spec.dtype) for i in range(len(data))]
