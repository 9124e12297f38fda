"""What is benched: the bundle or model (`Target`), and the inputs it is timed and checked on."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxfn.bundles import bundle as bundles
from onnxfn.bundles import manifest as mf
from onnxfn.errors import OnnxfnError
from onnxfn.tools.bench.environment import explain_load_error
from onnxfn.tools.bench.options import BenchError, BenchOptions

SAMPLE_FILES = ("samples.npy", "samples.npz")  # a bundle's own sample inputs, beside manifest.json


@dataclass
class Target:
    """A bundle or a bare model: its inputs, primary output and artifacts."""
    path: Path
    is_bundle: bool
    name: str
    task: str
    inputs: tuple[mf.InputSpec, ...]
    primary: mf.OutputSpec
    artifacts: list[tuple[mf.Artifact, Path]]
    manifest: mf.Manifest | None = None
    manifest_sha256: str | None = None
    output_names: list[str] = field(default_factory=list)   # the model's outputs, in order

    @property
    def portable(self) -> tuple[mf.Artifact, Path]:
        """The portable artifact and its file."""
        return next((a, p) for a, p in self.artifacts if a.kind == "portable")

    def describe(self) -> dict:
        """The target as results.json records it."""
        art, _ = self.portable
        return {"path": str(self.path), "kind": "bundle" if self.is_bundle else "model", "name": self.name,
                "version": self.manifest.version if self.manifest else None, "task": self.task,
                "manifest_sha256": self.manifest_sha256, "portable_sha256": art.sha256,
                "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape), "layout": i.layout}
                           for i in self.inputs],
                "output": self.primary.name, "outputs": self.output_names,
                "artifacts": [{"path": a.path, "kind": a.kind, "size": a.size, "preoptimized": a.preoptimized,
                               "requires": None if a.requires is None else
                               {"arch": a.requires.arch, "features": list(a.requires.features)}}
                              for a, _ in self.artifacts]}


def load_target(path: Path) -> Target:
    """A bundle folder (manifest.json + artifacts, verified) or a bare .onnx model."""
    path = Path(path)
    if path.is_dir():
        bundle = bundles.load(path)
        m = bundle.manifest
        return Target(path=path, is_bundle=True, name=m.name, task=m.task, inputs=m.inputs,
                      primary=m.primary_output, artifacts=[(a, bundle.fetch(a)) for a in m.artifacts],
                      manifest=m, manifest_sha256=bundle.manifest_sha256)
    if path.is_file() and path.suffix in (".onnx", ".ort"):
        from onnxfn.tools.package import describe
        try:
            inputs, outputs = describe(path)
        except OnnxfnError as e:
            raise BenchError(explain_load_error(e.message.split(": ", 1)[-1])) from None
        specs = tuple(mf.InputSpec(name=i["name"], dtype=i["dtype"],
                                   shape=tuple(f"d{k}" if d == -1 else d for k, d in enumerate(i["shape"])))
                      for i in inputs)
        return Target(path=path, is_bundle=False, name=path.stem, task="tensor", inputs=specs,
                      primary=mf.OutputSpec(name=outputs[0]["name"]),
                      artifacts=[(bundles.artifact_for(path, path.name), path)],
                      output_names=[o["name"] for o in outputs])
    raise BenchError(f"{str(path)!r} is neither a bundle folder (with manifest.json) nor an .onnx model file")


def shape_text(shape) -> str:
    """A shape as `1x1x8x8`."""
    return "x".join(str(d) for d in shape)


def guess_shape(spec: mf.InputSpec) -> tuple[int, ...]:
    """The input's shape with dynamic dimensions guessed: batch 1, image sizes from the manifest."""
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            shape.append(dim)
            continue
        letter = spec.layout[axis] if spec.layout else ("N" if axis == 0 else None)
        if letter == "N":
            shape.append(1)
        elif letter in ("H", "W") and spec.image is not None:
            size = spec.image.size
            m = spec.image.pad_multiple
            shape.append(size["HW".index(letter)] if size else max(32, 2 * m) // m * m)
        elif letter == "C" and spec.image is not None:
            shape.append(spec.image.channels)
        else:
            hint = "x".join(str(d) if isinstance(d, int) else ("1" if k == 0 else f"<{d}>")
                            for k, d in enumerate(spec.shape))
            raise BenchError(f"input {spec.name!r} has dynamic dimension {dim!r} (axis {axis}) that the bench cannot "
                             f"guess: pass its size with --shapes {spec.name}={hint} (sizes for every dynamic "
                             f"dimension; several comma-separated shapes bench each)")
    return tuple(shape)


def _generate(spec: mf.InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if spec.dtype == "string":
        raise BenchError(f"input {spec.name!r} takes strings, which the bench cannot make up: pass --inputs FILE.npz")
    if spec.dtype.startswith("float"):
        return rng.random(shape, dtype=np.float32).astype(spec.dtype)
    if spec.dtype == "bool":
        return rng.random(shape) > 0.5
    return rng.integers(0, 2, size=shape).astype(spec.dtype)


def _check_shape(spec: mf.InputSpec, shape: tuple[int, ...], what: str) -> None:
    if len(shape) != len(spec.shape):
        raise BenchError(f"{what}: input {spec.name!r} takes {len(spec.shape)} dimensions {list(spec.shape)}, "
                         f"got {shape_text(shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if isinstance(want, int) and want != got:
            raise BenchError(f"{what}: input {spec.name!r} fixes dimension {axis} at {want}, got {got}")


def load_samples(target: Target, path: Path | None) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Sample inputs [N, ...] per input: --inputs FILE (.npy for a one-input model, .npz keyed by input
    name), else the bundle's own samples.npy / samples.npz beside manifest.json."""
    if path is None and target.is_bundle:
        path = next((target.path / f for f in SAMPLE_FILES if (target.path / f).is_file()), None)
    if path is None:
        return None, None
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"--inputs {str(path)!r} does not exist")
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        arrays = {k: data[k] for k in data.files}
        if len(target.inputs) == 1 and target.inputs[0].name not in arrays and len(arrays) == 1:
            arrays = {target.inputs[0].name: next(iter(arrays.values()))}
    else:
        if len(target.inputs) != 1:
            raise BenchError(f"{str(path)!r} holds one array but the model takes {len(target.inputs)} inputs: "
                             "pass an .npz keyed by input name")
        arrays = {target.inputs[0].name: data}
    missing = [s.name for s in target.inputs if s.name not in arrays]
    if missing:
        raise BenchError(f"{str(path)!r} has no array for input(s) {', '.join(missing)}")
    counts = {len(arrays[s.name]) for s in target.inputs}
    if len(counts) != 1:
        raise BenchError(f"{str(path)!r}: the inputs' arrays hold different sample counts {sorted(counts)}")
    out = {}
    for spec in target.inputs:
        a = arrays[spec.name]
        _check_shape(spec, (1,) + tuple(a.shape[1:]), f"sample inputs {str(path)!r}")
        if spec.dtype.startswith("float") and a.dtype.kind not in "fc" and a.dtype != spec.dtype:
            raise BenchError(f"{str(path)!r} holds {a.dtype} values for input {spec.name!r}, which takes "
                             f"{spec.dtype}: save them as the model takes them (e.g. pixels / 255)")
        out[spec.name] = np.ascontiguousarray(a, dtype=spec.dtype)
    return out, str(path)


@dataclass
class Inputs:
    """The feeds the bench times (one per shape) and checks accuracy on."""
    cases: list[dict[str, np.ndarray]]            # one feed per timed shape (batch as given)
    labels: list[str]
    items: list[dict[str, np.ndarray]]            # accuracy feeds: samples, then the cases not among them
    source: str                                   # "samples FILE" or "generated (seed S)"
    case_sources: list[str]


def plan_inputs(target: Target, options: BenchOptions) -> Inputs:
    """The timed feeds (--shapes, else the first sample, else generated) and the accuracy feeds
    (the samples, else generated, then the timed feeds not among them)."""
    samples, where = load_samples(target, options.inputs)
    rng = np.random.default_rng(options.seed)
    items: list[dict[str, np.ndarray]] = []
    if samples is not None:
        count = min(options.samples, len(next(iter(samples.values()))))
        items = [{k: v[i:i + 1] for k, v in samples.items()} for i in range(count)]
        if not items:
            raise BenchError(f"{where} holds no samples")
    cases, sources = [], []
    if options.shapes:
        dynamic = [s for s in target.inputs if any(not isinstance(d, int) for d in s.shape)] or list(target.inputs)
        for k, case in enumerate(options.shapes):
            given = dict(case)
            if "" in given:
                given[dynamic[0].name] = given.pop("")
            unknown = set(given) - {s.name for s in target.inputs}
            if unknown:
                raise BenchError(f"--shapes names input(s) {', '.join(sorted(unknown))}; the model's inputs are "
                                 f"{', '.join(s.name for s in target.inputs)}")
            feed = {}
            for spec in target.inputs:
                shape = given.get(spec.name) or guess_shape(spec)
                _check_shape(spec, shape, f"--shapes {'+'.join(shape_text(v) for v in case.values())}")
                feed[spec.name] = _generate(spec, shape, np.random.default_rng(options.seed + 1 + k))
            cases.append(feed)
            sources.append("generated")
    elif items:
        cases.append(items[0])
        sources.append("sample 0")
    else:
        cases.append({s.name: _generate(s, guess_shape(s), rng) for s in target.inputs})
        sources.append("generated")
    if not items:
        shapes = {s.name: cases[0][s.name].shape for s in target.inputs}
        items = [{s.name: _generate(s, shapes[s.name], rng) for s in target.inputs} for _ in range(options.samples)]
        if not options.shapes:
            items[0] = cases[0]
    for case in cases:
        if not any(all(item[k] is case[k] for k in case) for item in items):
            items.append(case)
    labels = ["+".join(shape_text(case[s.name].shape) for s in target.inputs) for case in cases]
    source = f"samples {where}" if samples is not None else f"generated (uniform [0, 1), seed {options.seed})"
    return Inputs(cases, labels, items, source, sources)
