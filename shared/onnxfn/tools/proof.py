"""`onnxfn prove`: evidence that a bundle's ONNX model computes what its source framework did.

The source framework's own outputs on a set of inputs are saved next to the inputs (two `.npy`
files, written by the training script). Proving runs the bundle's portable `.onnx` with
onnxruntime (the serving session options, one thread) on the same inputs, feeding the bundle's
first input, and compares the bundle's primary output (the one the task reads) with the saved
outputs with the one accuracy judge (`onnxfn.tools.accuracy`), gated on two figures at once:

- the largest absolute difference, element by element, must not exceed `max_abs` (absolute);
- the argmax over axis 1 (the class axis of `[N, C, ...]` outputs) must agree on at least
  `min_agreement` of the positions.

On success the figures are recorded as `proof` in the bundle's `manifest.json` (rewritten
atomically; the artifacts are not touched and the bundle must load and verify afterwards).
On failure nothing is written and the report says which figure missed and by how much.
Bad input files (missing, unreadable, shapes that do not fit the model) raise `BadRequest`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from onnxfn.bundles import bundle as bundles
from onnxfn.errors import BadRequest
from onnxfn.tools.accuracy import Thresholds, compare, judge

MAX_ABS = 1e-4
MIN_AGREEMENT = 0.995
CHUNK = 256  # samples per session.run
GATES = ("max_abs_diff", "agreement")  # a proof holds both figures, whatever the task


@dataclass
class Result:
    """A proof's figures, limits and failures (none: passed)."""
    bundle: Path
    framework: str
    output: str
    samples: int
    max_abs_diff: float
    worst: tuple[int, ...]           # index of the largest difference
    argmax_agreement: float
    disagreements: int
    positions: int                   # argmax positions compared (samples x spatial positions)
    max_abs: float
    min_agreement: float
    inputs_sha256: str
    outputs_sha256: str
    model_sha256: str
    onnxruntime: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No figure missed its limit."""
        return not self.failures

    @property
    def proof(self) -> dict:
        """What `record` writes into the manifest as `proof`."""
        return {"framework": self.framework, "inputs_sha256": self.inputs_sha256, "samples": self.samples,
                "max_abs_diff": _sig(self.max_abs_diff), "argmax_agreement": round(self.argmax_agreement, 6),
                "onnxruntime": self.onnxruntime, "output": self.output, "outputs_sha256": self.outputs_sha256,
                "model_sha256": self.model_sha256,
                "limits": {"max_abs": self.max_abs, "min_agreement": self.min_agreement}}

    def report(self) -> str:
        """Each figure against its limit (ok or MISS), then the failures, for the terminal."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"{self.bundle.name}: {verdict} against {self.framework} on {self.samples} samples "
                 f"(output {self.output!r}, onnxruntime {self.onnxruntime})"]
        mark = "ok  " if self.max_abs_diff <= self.max_abs else "MISS"
        lines.append(f"  {mark} max abs difference {_fmt(self.max_abs_diff)} (limit {_fmt(self.max_abs)}; "
                     f"largest at index {list(self.worst)})")
        mark = "ok  " if self.argmax_agreement >= self.min_agreement else "MISS"
        lines.append(f"  {mark} argmax agreement {self.argmax_agreement:.4f} "
                     f"({self.positions - self.disagreements}/{self.positions}; limit {self.min_agreement})")
        lines.extend(f"  {f}" for f in self.failures)
        return "\n".join(lines)


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _sha256(path: Path) -> str:
    return bundles.sha256_file(path)


def _load_array(path: Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise BadRequest(f"{what} file {str(path)!r} does not exist", code="file_missing")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # not a .npy, truncated, pickled objects...
        raise BadRequest(f"{what} file {str(path)!r} is not a readable .npy array: {e}", code="bad_file") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise BadRequest(f"{what} file {str(path)!r} is an .npz archive; save one array with numpy.save",
                         code="bad_file")
    if array.ndim == 0 or array.shape[0] == 0:
        raise BadRequest(f"{what} file {str(path)!r} holds shape {array.shape}: expected one row per sample",
                         code="bad_file")
    return array


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else str(d or "?") for d in shape) + "]"


def _fits(shape: tuple[int, ...], model_shape: list) -> bool:
    return len(shape) == len(model_shape) and all(
        not (isinstance(m, int) and m > 0) or m == s for s, m in zip(shape, model_shape))


def check(root: Path, inputs: Path, outputs: Path, framework: str, *, max_abs: float = MAX_ABS,
          min_agreement: float = MIN_AGREEMENT) -> Result:
    """Compare the bundle's ONNX model with its source framework's saved outputs; writes nothing."""
    from onnxfn.runtime import session as sessions

    root = Path(root)
    if not framework or not framework.strip():
        raise BadRequest("--framework must name the source framework and its version, e.g. 'tensorflow 2.21.0'")
    if not (max_abs >= 0 and np.isfinite(max_abs)):
        raise BadRequest(f"--max-abs must be a finite number >= 0, got {max_abs}")
    if not 0 <= min_agreement <= 1:
        raise BadRequest(f"--min-agreement must lie between 0 and 1, got {min_agreement}")
    if not (root / bundles.MANIFEST).is_file():
        raise BadRequest(f"{str(root)!r} is not a bundle folder (no {bundles.MANIFEST})", code="file_missing")
    bundle = bundles.load(root)
    x = _load_array(inputs, "inputs")
    y = _load_array(outputs, "outputs")

    manifest = bundle.manifest
    artifact = manifest.portable
    session = sessions.create(bundle.fetch(artifact), 1, what=artifact.path)
    nodes = {i.name: i for i in session.get_inputs()}
    if len(nodes) != 1:
        raise BadRequest(f"prove feeds one input, but the model takes {len(nodes)}: {', '.join(nodes)}")
    spec = manifest.inputs[0]
    node = nodes.get(spec.name) or next(iter(nodes.values()))
    layout = f" (layout {spec.layout})" if spec.layout else ""
    if not _fits(x.shape, node.shape):
        raise BadRequest(f"inputs file {str(inputs)!r} holds shape {list(x.shape)}, but the model's input "
                         f"{node.name!r} takes {_dims(node.shape)}{layout}: save the inputs in that shape",
                         code="shape_mismatch")
    want = np.dtype(sessions.ORT_TYPES.get(node.type, "float32"))
    if x.dtype != want:
        if x.dtype.kind != want.kind or want.kind not in "fc":  # float64 -> float32 is fine; pixels are not
            hint = ": save them as the model takes them (image pixels scaled, e.g. / 255)" if want.kind == "f" else ""
            raise BadRequest(f"inputs file {str(inputs)!r} holds {x.dtype} values, but the model's input "
                             f"{node.name!r} takes {want}{hint}", code="dtype_mismatch")
        x = x.astype(want)

    out = manifest.primary_output.name
    out_node = next(o for o in session.get_outputs() if o.name == out)
    if y.shape[0] != x.shape[0]:
        raise BadRequest(f"outputs file {str(outputs)!r} holds {y.shape[0]} samples but the inputs hold "
                         f"{x.shape[0]}", code="shape_mismatch")
    if y.ndim < 2:
        raise BadRequest(f"outputs file {str(outputs)!r} holds shape {list(y.shape)}: the proof compares outputs "
                         f"with a class axis ([N, C, ...]); save the framework's scores, not labels",
                         code="shape_mismatch")
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise BadRequest(f"outputs file {str(outputs)!r} holds {y.dtype} values; expected real numbers",
                         code="dtype_mismatch")

    batch = node.shape[0] if isinstance(node.shape[0], int) and node.shape[0] > 0 else CHUNK
    if x.shape[0] % batch and batch != CHUNK:
        raise BadRequest(f"the model's input {node.name!r} fixes the batch at {batch}, but the inputs hold "
                         f"{x.shape[0]} samples (not a multiple)", code="shape_mismatch")
    try:
        got = np.concatenate([session.run([out], {node.name: x[i:i + batch]})[0]
                              for i in range(0, x.shape[0], batch)])
    except Exception as e:
        raise BadRequest(f"onnxruntime could not run the model on the inputs: {e}", code="inference_failed") from None
    if got.shape != y.shape:
        raise BadRequest(f"outputs file {str(outputs)!r} holds shape {list(y.shape)}, but the model's output "
                         f"{out!r} ({_dims(out_node.shape)}) gives {list(got.shape)} on these inputs",
                         code="shape_mismatch")

    figures = compare(y, got, agreement="axis1")
    verdict = judge(figures, Thresholds(max_abs_diff=max_abs, min_top1=min_agreement), gates=GATES,
                    names=("onnxruntime", framework.strip()))
    return Result(bundle=root, framework=framework.strip(), output=out, samples=int(x.shape[0]),
                  max_abs_diff=figures.max_abs_diff, worst=figures.worst, argmax_agreement=figures.agreement,
                  disagreements=figures.disagreements, positions=figures.positions, max_abs=max_abs,
                  min_agreement=min_agreement, inputs_sha256=_sha256(Path(inputs)),
                  outputs_sha256=_sha256(Path(outputs)), model_sha256=artifact.sha256,
                  onnxruntime=sessions.engine().__version__, failures=verdict.failures)


def record(root: Path, proof: dict) -> bundles.Bundle:
    """Write `proof` into the bundle's manifest (atomically: a temporary file renamed over
    manifest.json); the bundle must then load and verify, else the old manifest is put back."""
    manifest, _ = bundles.read_manifest(Path(root))
    return bundles.rewrite_manifest(Path(root), replace(manifest, extra={**manifest.extra, "proof": proof}))


def prove(root: Path, inputs: Path, outputs: Path, framework: str, *, max_abs: float = MAX_ABS,
          min_agreement: float = MIN_AGREEMENT) -> Result:
    """Check the bundle against its source framework; on success record the proof in its manifest."""
    result = check(root, inputs, outputs, framework, max_abs=max_abs, min_agreement=min_agreement)
    if result.passed:
        record(root, result.proof)
    return result
