"""`onnxfn bench`: every way this machine can run a model, side by side, with accuracy.

Candidates (all measured on this machine, each in its own worker process):

- ONNX Runtime, for each installed execution provider (CPUExecutionProvider; OpenVINO when the
  `onnxruntime` module is onnxruntime-openvino, which lives in its own venv: bench there with
  `--out` and join the files with `--merge`), each artifact of the bundle this CPU can run
  (pre-optimized ones are loaded with ORT_DISABLE_ALL, as the function loads them), graph
  optimization levels (EXTENDED, ALL), intra-op threads 1..quota, spinning off/on (on only with
  more than one thread), prepacking on/off. Sessions are built with the runner's own
  `session_options`, so what is measured is what the function would build;
- the source framework as a baseline: PyTorch eager (an importable `module:function` factory or a
  TorchScript file) and `torch.compile`, at the same threads and inputs; scikit-learn's
  `predict_proba` from a pickle.

Per candidate: session creation and first-run times, latency p50/p90/p99 over N timed runs after
warm-up, peak RSS of its worker process (VmHWM; also the increase over the worker's RSS before the
model was loaded), and accuracy against the reference (the source framework's outputs when one is
given, else the portable artifact on the CPU provider, ORT_ENABLE_ALL, fewest threads): max abs
difference, top-1 agreement (classification), mask Dice (segmentation).

Repeatability: the timed runs are split in rounds; each round runs one batch of every candidate in
turn (round-robin, the order rotated and reversed between rounds), so slow phases of a shared
machine hit every candidate alike. Min/median/max of the per-round medians are reported and a
candidate whose round medians spread by more than `noise` (default 15 %) of their median is
flagged noisy.

`--write` records the fastest CPU-provider candidate within tolerance as the bundle's `tuning`
entry for this machine's CPU class (architecture + the instruction-set features onnxfn knows),
replacing an entry for the same class; the runner applies it at cold start on a matching CPU.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import importlib.util
import json
import math
import os
import pickle
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from onnxfn.bundles import bundle as bundles
from onnxfn.runtime import cpu
from onnxfn.bundles import manifest as mf
from onnxfn.errors import OnnxfnError

SCHEMA = 1
PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
SHORT = {v: k for k, v in PROVIDERS.items()}
LEVELS = ("DISABLE", "BASIC", "EXTENDED", "ALL")
SAMPLE_FILES = ("samples.npy", "samples.npz")  # a bundle's own sample inputs, beside manifest.json
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
LOAD_TIMEOUT_S = 1800.0   # torch.compile of a large model on 2 cores takes minutes
BATCH_TIMEOUT_S = 900.0
#: After a batch of a spinning candidate: onnxruntime's workers keep spinning ~40-50 ms after a run
#: (measured here), which would slow whichever candidate runs next.
SPIN_GAP_S = 0.1


class BenchError(OnnxfnError):
    status, code = 400, "bench_error"


@dataclass
class Thresholds:
    max_abs_diff: float = 1e-3     # fp32 candidates (and frameworks) vs the reference
    min_top1: float = 0.99         # int8 classifiers: top-1 agreement with the reference
    min_dice: float = 0.99         # int8 segmenters: mask Dice vs the reference's masks
    max_rel_diff: float = 0.05     # int8 tensor models: max abs diff / max abs reference value


@dataclass
class Options:
    runs: int | None = None
    warmup: int | None = None
    rounds: int | None = None
    threads: list[int] | None = None
    levels: list[str] | None = None
    providers: list[str] | None = None          # "cpu", "openvino"; default: those installed
    spinning: list[bool] | None = None
    prepacking: list[bool] | None = None
    artifacts: list[str] | None = None          # artifact paths to bench (default: all this CPU runs)
    shapes: list[dict[str, tuple[int, ...]]] | None = None
    inputs: Path | None = None
    samples: int | None = None                  # accuracy inputs
    torch: str | None = None
    compile: bool | None = None
    sklearn: Path | None = None
    quick: bool = False
    gap: float | None = None                    # pause between batches (lets spinning threads stop)
    noise: float = 0.15
    thresholds: Thresholds = field(default_factory=Thresholds)
    seed: int = 0
    progress: Callable[[str], None] | None = None

    def resolved(self) -> "Options":
        """Fill what was not given: full defaults, or --quick's few runs and fewer settings."""
        q = self.quick
        return replace(
            self,
            runs=self.runs if self.runs is not None else (6 if q else 30),
            warmup=self.warmup if self.warmup is not None else (1 if q else 3),
            rounds=max(1, min(self.rounds if self.rounds is not None else (3 if q else 6),
                              self.runs if self.runs is not None else (6 if q else 30))),
            threads=sorted(set(self.threads)) if self.threads else list(range(1, cpu.threads() + 1)),
            levels=self.levels or ["EXTENDED", "ALL"],
            spinning=self.spinning if self.spinning is not None else ([False] if q else [False, True]),
            prepacking=self.prepacking if self.prepacking is not None else ([True] if q else [True, False]),
            samples=self.samples if self.samples is not None else (4 if q else 16),
            compile=self.compile if self.compile is not None else not q,
            gap=self.gap if self.gap is not None else (0.0 if q else 0.02),
            progress=self.progress or (lambda line: print(f"onnxfn bench: {line}", file=sys.stderr, flush=True)),
        )


# ------------------------------------------------------------------------------------------ target

@dataclass
class Target:
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
        return next((a, p) for a, p in self.artifacts if a.kind == "portable")

    def describe(self) -> dict:
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
                      primary=m.primary_output, artifacts=[(a, bundle.path(a)) for a in m.artifacts],
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


def explain_load_error(message: str, provider: str = "CPUExecutionProvider") -> str:
    """Turn onnxruntime's load errors into one sentence naming the operator at fault."""
    version = _ort_version()
    m = re.search(r"Could not find an implementation for (\S+?)\((\d+)\) node with name '([^']*)'", message)
    if m:
        return (f"onnxruntime {version} ({provider}) has no kernel for operator {m[1]} (opset {m[2]}, node "
                f"{m[3]!r}): re-export the model with operators and types this runtime supports, or use a newer "
                f"onnxruntime")
    m = re.search(r"([\w.]+:)?(\w+)\((-?\d+)\) is not a registered function/op", message)
    if m:
        domain = (m[1] or "").rstrip(":") or "ai.onnx"
        return (f"onnxruntime {version} ({provider}) does not know operator {m[2]} (domain {domain}"
                f"{', opset ' + m[3] if m[3] != '-1' else ''}): a custom operator needs its library registered, "
                f"else re-export with standard operators")
    m = re.search(r"Type '([^']+)' of input parameter \(([^)]*)\) of operator \((\w+)\)", message)
    if m:
        return (f"onnxruntime {version} ({provider}) cannot run operator {m[3]} on {m[1]} (input {m[2]!r}): the "
                f"operator does not take that type; cast or re-export the model")
    m = re.search(r"No Op registered for (\w+) with domain_version of (\d+)", message)
    if m:
        return (f"onnxruntime {version} ({provider}) has no operator {m[1]} at opset {m[2]}: re-export the model "
                f"at an opset this runtime supports")
    return f"onnxruntime {version} ({provider}) cannot load the model: {message.strip()}"


# ------------------------------------------------------------------------------------------ inputs

def parse_shapes(text: str) -> list[dict[str, tuple[int, ...]]]:
    """`1x1x128x128,1x1x256x256` (the model's one input, or the first dynamic one) or
    `image=1x1x128x128+mask=1x128x128,...`: one case per comma-separated item."""
    cases = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        case: dict[str, tuple[int, ...]] = {}
        for part in item.split("+"):
            name, _, dims = part.rpartition("=")
            try:
                shape = tuple(int(d) for d in dims.lower().split("x"))
            except ValueError:
                raise BenchError(f"--shapes {item!r}: expected sizes like 1x1x256x256 (or NAME=1x1x256x256)") from None
            if not shape or any(d < 1 for d in shape):
                raise BenchError(f"--shapes {item!r}: sizes must be positive")
            case[name or ""] = shape
        cases.append(case)
    if not cases:
        raise BenchError("--shapes is empty")
    return cases


def _shape_text(shape) -> str:
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
                         f"got {_shape_text(shape)}")
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
    cases: list[dict[str, np.ndarray]]            # one feed per timed shape (batch as given)
    labels: list[str]
    items: list[dict[str, np.ndarray]]            # accuracy feeds: samples, then the cases not among them
    source: str                                   # "samples FILE" or "generated (seed S)"
    case_sources: list[str]


def plan_inputs(target: Target, options: Options) -> Inputs:
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
                _check_shape(spec, shape, f"--shapes {'+'.join(_shape_text(v) for v in case.values())}")
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
    labels = ["+".join(_shape_text(case[s.name].shape) for s in target.inputs) for case in cases]
    source = f"samples {where}" if samples is not None else f"generated (uniform [0, 1), seed {options.seed})"
    return Inputs(cases, labels, items, source, sources)


# ------------------------------------------------------------------------------------------ candidates

@dataclass
class Candidate:
    id: str
    engine: str                  # onnxruntime | pytorch | torch.compile | torchscript | sklearn
    threads: int
    provider: str | None = None
    artifact: str | None = None
    kind: str = "source"         # portable | optimized | int8 | source (the framework)
    level: str | None = None
    spinning: bool | None = None
    prepacking: bool | None = None
    preoptimized: bool = False
    path: str | None = None      # the file the worker loads
    default: bool = False        # what the runner builds here without tuning
    reference: bool = False

    def spec(self, options: Options) -> dict:
        return {"engine": self.engine, "path": self.path, "provider": self.provider, "artifact": self.artifact,
                "kind": self.kind, "level": self.level, "threads": self.threads, "spinning": bool(self.spinning),
                "prepacking": self.prepacking is not False, "preoptimized": self.preoptimized,
                "torch": options.torch, "sklearn": str(options.sklearn) if options.sklearn else None}


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BenchError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-openvino)") from None
    return [p for p in ort.get_available_providers() if p in SHORT]


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def plan(target: Target, options: Options, notes: list[str], skipped: list[dict]) -> list[Candidate]:
    here, features = cpu.arch(), cpu.features()
    installed = available_providers()
    wanted = options.providers or [SHORT[p] for p in installed]
    for short in wanted:
        if short not in PROVIDERS:
            raise BenchError(f"--providers: unknown provider {short!r}; known: {', '.join(PROVIDERS)}")
        if PROVIDERS[short] not in installed:
            why = ("the onnxruntime module here is not onnxruntime-openvino (it replaces onnxruntime, so it lives "
                   "in its own venv): run the bench in that venv with --out and join the results with --merge; "
                   "see BENCHMARKS.md") if short == "openvino" else "not available in this onnxruntime build"
            skipped.append({"what": PROVIDERS[short], "why": why})
    providers = [PROVIDERS[s] for s in wanted if PROVIDERS[s] in installed]
    if "OpenVINOExecutionProvider" not in installed and options.providers is None:
        skipped.append({"what": "OpenVINOExecutionProvider", "why": "onnxruntime-openvino is not the onnxruntime "
                        "module of this environment: bench in its own venv (see BENCHMARKS.md) and --merge"})
    runnable = []
    for artifact, path in target.artifacts:
        if options.artifacts and artifact.path not in options.artifacts:
            continue
        if artifact.requires is not None and not artifact.requires.satisfied_by(here, features):
            req = artifact.requires
            skipped.append({"what": f"artifact {artifact.path}",
                            "why": f"made for {req.arch}{' with ' + '+'.join(req.features) if req.features else ''}; "
                                   f"this CPU is {here} with {'+'.join(features or ()) or 'no known features'}"})
            continue
        runnable.append((artifact, path))
    if options.artifacts:
        missing = set(options.artifacts) - {a.path for a, _ in target.artifacts}
        if missing:
            raise BenchError(f"--artifacts names {', '.join(sorted(missing))}, not in the bundle's artifacts "
                             f"({', '.join(a.path for a, _ in target.artifacts)})")
    for level in options.levels:
        if level not in LEVELS:
            raise BenchError(f"--levels: {level!r} is not one of {', '.join(LEVELS)}")
    quota = cpu.threads()
    over = [t for t in options.threads if t > quota]
    if over:
        notes.append(f"threads {over} exceed this machine's CPU quota ({quota}): measured anyway, oversubscribed")
    candidates: list[Candidate] = []
    for provider in providers:
        short = SHORT[provider]
        for artifact, path in runnable:
            if provider != "CPUExecutionProvider" and artifact.preoptimized:
                skipped.append({"what": f"{provider} on {artifact.path}",
                                "why": "pre-optimized for the CPU provider (its fused/contrib operators are "
                                       "onnxruntime's own); the OpenVINO provider is given the plain graphs"})
                continue
            levels = ["DISABLE"] if artifact.preoptimized else options.levels
            for level in levels:
                for t in options.threads:
                    spins = options.spinning if provider == "CPUExecutionProvider" else [False]
                    packs = options.prepacking if provider == "CPUExecutionProvider" else [True]
                    for spin in (spins if t > 1 else [False]):
                        for pack in packs:
                            cid = f"{short}:{artifact.path}:{level}:t{t}{':spin' if spin else ''}" \
                                  f"{':noprepack' if not pack else ''}"
                            if any(c.id == cid for c in candidates):
                                continue
                            candidates.append(Candidate(
                                id=cid, engine="onnxruntime", threads=t, provider=provider, artifact=artifact.path,
                                kind=artifact.kind, level=level, spinning=spin, prepacking=pack,
                                preoptimized=artifact.preoptimized, path=str(path)))
    # the runner's default here, and the reference
    if target.manifest is not None:
        from onnxfn.runtime.selection import choose
        first = choose(target.manifest, here, features)[0]
    else:
        first = target.portable[0]
    default_id = (f"cpu:{first.path}:{'DISABLE' if first.preoptimized else 'ALL'}:t{quota}")
    for c in candidates:
        c.default = c.id == default_id
    portable, portable_path = target.portable
    ref_id = f"cpu:{portable.path}:ALL:t{min(options.threads)}"
    ref = next((c for c in candidates if c.id == ref_id), None)
    if ref is None:
        ref = Candidate(id=ref_id, engine="onnxruntime", threads=min(options.threads), provider="CPUExecutionProvider",
                        artifact=portable.path, kind="portable", level="ALL", spinning=False, prepacking=True,
                        path=str(portable_path))
        candidates.insert(0, ref)
        notes.append(f"{ref_id} added: the reference (portable artifact, CPU provider, ORT_ENABLE_ALL)")
    ref.reference = True
    frameworks = _framework_candidates(options, notes, skipped)
    return frameworks + [ref] + [c for c in candidates if c is not ref]


def _framework_candidates(options: Options, notes: list[str], skipped: list[dict]) -> list[Candidate]:
    out: list[Candidate] = []
    if options.torch:
        if not _have("torch"):
            skipped.append({"what": f"PyTorch ({options.torch})",
                            "why": "torch is not installed in this environment: pip install -e '.[dev]' "
                                   "(torch==2.13.0 CPU) to bench it; the rest is benched"})
        else:
            script = options.torch.endswith(TORCHSCRIPT_SUFFIXES) or Path(options.torch).is_file()
            for t in options.threads:
                out.append(Candidate(id=f"{'torchscript' if script else 'torch-eager'}:t{t}",
                                     engine="torchscript" if script else "pytorch", threads=t))
            if options.compile and not script:
                compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")
                if compiler is None:
                    skipped.append({"what": "torch.compile", "why": "inductor needs a C++ compiler (g++) on this "
                                                                    "machine: apt-get install g++"})
                else:
                    for t in options.threads:
                        out.append(Candidate(id=f"torch-compile:t{t}", engine="torch.compile", threads=t))
            elif script and options.compile:
                skipped.append({"what": "torch.compile", "why": "a TorchScript module is not compiled; give an "
                                                                "importable module:function factory to bench it"})
    if options.sklearn:
        if not _have("sklearn"):
            skipped.append({"what": f"scikit-learn ({options.sklearn})",
                            "why": "scikit-learn is not installed in this environment: pip install -e '.[dev]' to "
                                   "bench it; the rest is benched"})
        elif not Path(options.sklearn).is_file():
            raise BenchError(f"--sklearn {str(options.sklearn)!r} does not exist")
        else:
            for t in options.threads:
                out.append(Candidate(id=f"sklearn:t{t}", engine="sklearn", threads=t))
    return out


# ------------------------------------------------------------------------------------------ workers

def _rss_mb() -> dict:
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        values = {"VmRSS": peak, "VmHWM": peak}
    return {"rss_mb": round(values.get("VmRSS", float("nan")), 1), "peak_rss_mb": round(values.get("VmHWM", float("nan")), 1)}


class _OrtEngine:
    def __init__(self, spec: dict, output_index: int):
        import onnxruntime as ort

        from onnxfn.bundles.manifest import Artifact, Requirement, Tuning
        from onnxfn.runtime.session import options as session_options
        artifact = Artifact(path=spec["artifact"], sha256="0" * 64, size=0, kind=spec["kind"],
                            preoptimized=spec["preoptimized"])
        tuning = Tuning(requires=Requirement(cpu.arch()), graph_optimization_level=spec["level"],
                        intra_op_threads=spec["threads"], allow_spinning=spec["spinning"],
                        disable_prepacking=not spec["prepacking"])
        options = session_options(spec["threads"], artifact, tuning)
        if spec["provider"] == "OpenVINOExecutionProvider":
            providers = [("OpenVINOExecutionProvider", {"device_type": "CPU", "num_of_threads": str(spec["threads"])}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(spec["path"], sess_options=options, providers=providers)
        except Exception as e:
            raise RuntimeError(explain_load_error(str(e), spec["provider"])) from None
        self.names = [o.name for o in self.session.get_outputs()]
        self.index = output_index
        self.providers = self.session.get_providers()

    def prepare(self, feed):
        return feed

    def run(self, feed):
        return self.session.run(self.names, feed)

    def primary(self, out) -> np.ndarray:
        return np.asarray(out[self.index])


def _torch_module(spec: str):
    import torch
    if spec.endswith(TORCHSCRIPT_SUFFIXES) or Path(spec).is_file():
        try:
            return torch.jit.load(spec, map_location="cpu").eval()
        except Exception as e:
            raise RuntimeError(f"--torch {spec!r} is not a TorchScript file torch.jit.load can read ({e}); a module "
                               "saved with torch.save is not supported: give a module:function factory") from None
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise RuntimeError(f"--torch {spec!r}: expected module:function (or path/to/file.py:function) returning an "
                           "nn.Module, or a TorchScript file")
    if module_name.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if loader is None:
            raise RuntimeError(f"--torch: cannot import {module_name!r}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise RuntimeError(f"--torch: {module_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise RuntimeError(f"--torch {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


class _TorchEngine:
    def __init__(self, spec: dict, output_index: int, input_names: list[str]):
        import torch
        torch.set_num_threads(spec["threads"])
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.torch = torch
        self.model = _torch_module(spec["torch"])
        if spec["engine"] == "torch.compile":
            self.model = torch.compile(self.model)
        self.index, self.inputs = output_index, input_names
        self.providers = [f"torch {torch.__version__}"]

    def prepare(self, feed):
        return tuple(self.torch.from_numpy(np.ascontiguousarray(feed[name])) for name in self.inputs)

    def run(self, tensors):
        with self.torch.inference_mode():
            return self.model(*tensors)

    def primary(self, out) -> np.ndarray:
        if isinstance(out, dict):
            out = list(out.values())
        if isinstance(out, (list, tuple)):
            out = out[self.index if self.index < len(out) else 0]
        return out.detach().cpu().numpy()


class _SklearnEngine:
    def __init__(self, spec: dict, input_names: list[str]):
        with open(spec["sklearn"], "rb") as f:
            self.model = pickle.load(f)
        if not hasattr(self.model, "predict_proba"):
            raise RuntimeError(f"{spec['sklearn']!r} holds a {type(self.model).__name__}, which has no predict_proba")
        try:
            from threadpoolctl import threadpool_limits
            self.limits = threadpool_limits(spec["threads"])
        except ImportError:
            self.limits = None
        self.name = input_names[0]
        import sklearn
        self.providers = [f"scikit-learn {sklearn.__version__}"]

    def prepare(self, feed):
        x = feed[self.name]
        return x.reshape(len(x), -1)

    def run(self, x):
        return self.model.predict_proba(x)

    def primary(self, out) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)


def _worker_main(conn, log_path: str) -> None:
    """One candidate's process: builds its session on `load`, times batches on `time`."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)  # native libraries print to fd 1 and 2: keep them off the terminal
    os.dup2(fd, 2)
    engine = None
    prepared: list = []
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg.get("op")
        if op == "stop":
            conn.send({"ok": True})
            return
        try:
            if op == "load":
                engine, prepared, reply = _worker_load(msg)
            elif op == "time":
                case, n = prepared[msg["case"]], msg["n"]
                times = []
                for _ in range(n):
                    started = time.perf_counter_ns()
                    engine.run(case)
                    times.append((time.perf_counter_ns() - started) / 1e6)
                reply = {"ms": times}
            elif op == "rss":
                reply = _rss_mb()
            else:
                reply = {"error": f"unknown operation {op!r}"}
        except Exception as e:
            reply = {"error": str(e) if isinstance(e, RuntimeError) and str(e) else f"{type(e).__name__}: {e}"}
        conn.send(reply)


def _worker_load(msg: dict):
    spec, index, names = msg["spec"], msg["output_index"], msg["input_names"]
    started = time.perf_counter()
    importlib.import_module({"onnxruntime": "onnxruntime", "sklearn": "sklearn"}.get(spec["engine"], "torch"))
    import_ms = (time.perf_counter() - started) * 1000  # onnxruntime: preloaded by the fork server
    before = _rss_mb()
    started = time.perf_counter()
    if spec["engine"] == "onnxruntime":
        engine = _OrtEngine(spec, index)
    elif spec["engine"] == "sklearn":
        engine = _SklearnEngine(spec, names)
    else:
        engine = _TorchEngine(spec, index, names)
    create_ms = (time.perf_counter() - started) * 1000
    prepared = [engine.prepare(feed) for feed in msg["cases"]]
    started = time.perf_counter()
    try:
        engine.run(prepared[0])
    except Exception as e:
        raise RuntimeError(f"first run at input shape {msg['labels'][0]} failed: {type(e).__name__}: {e}") from None
    first_ms = (time.perf_counter() - started) * 1000
    outputs = []
    for k, item in enumerate(msg["items"]):
        try:
            outputs.append(engine.primary(engine.run(engine.prepare(item))))
        except Exception as e:
            shape = "+".join(_shape_text(v.shape) for v in item.values())
            raise RuntimeError(f"inference at input shape {shape} (accuracy input {k}) failed: "
                               f"{type(e).__name__}: {e}") from None
    return engine, prepared, {"import_ms": import_ms, "create_ms": create_ms, "first_run_ms": first_ms, "outputs": outputs,
                              "base_rss_mb": before["rss_mb"], "providers": list(engine.providers)}


class Worker:
    def __init__(self, ctx, candidate: Candidate, logdir: Path):
        self.candidate = candidate
        self.log = logdir / (re.sub(r"[^A-Za-z0-9._-]+", "_", candidate.id) + ".log")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, str(self.log)), daemon=True,
                                   name=f"onnxfn-bench {candidate.id}")
        self.process.start()
        child.close()

    def call(self, message: dict, timeout: float) -> dict:
        try:
            self.conn.send(message)
            if not self.conn.poll(timeout):
                self.process.terminate()
                return {"error": f"no answer within {timeout:.0f} s (stopped)"}
            reply = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.process.join(1)
            tail = self.log_tail()
            reply = {"error": f"the worker process died (exit code {self.process.exitcode})"
                              f"{': ' + tail if tail else ''}"}
        return reply

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        try:
            if self.process.is_alive():
                self.conn.send({"op": "stop"})
                self.conn.poll(5)
        except (OSError, BrokenPipeError, EOFError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


def _context():
    import multiprocessing
    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "onnxruntime", "onnxfn.runtime.loader", "onnxfn.tools.bench"])
        return ctx
    except ValueError:
        return multiprocessing.get_context("spawn")


# ------------------------------------------------------------------------------------------ accuracy

def compare(target: Target, reference: list[np.ndarray], got: list[np.ndarray], kind: str,
            limits: Thresholds) -> tuple[dict, bool]:
    """Figures of `got` against `reference`, and whether they are within tolerance for this kind."""
    figures: dict[str, Any] = {"samples": len(reference)}
    for k, (r, g) in enumerate(zip(reference, got)):
        if r.shape != g.shape:
            figures["error"] = f"output shape {list(g.shape)} differs from the reference's {list(r.shape)} (input {k})"
            return figures, False
    ref = [r.astype(np.float64) for r in reference]
    out = [g.astype(np.float64) for g in got]
    diffs = [float(np.max(np.abs(g - r))) if r.size else 0.0 for r, g in zip(ref, out)]
    scale = max((float(np.max(np.abs(r))) for r in ref if r.size), default=0.0) or 1.0
    figures["max_abs_diff"] = max(diffs, default=0.0)
    figures["mean_abs_diff"] = float(np.mean(np.concatenate([np.abs(g - r).ravel() for r, g in zip(ref, out)])))
    figures["max_rel_diff"] = figures["max_abs_diff"] / scale
    rank2 = all(r.ndim == 2 and r.shape[-1] > 1 for r in ref)
    if target.task == "classification" or (target.task == "tensor" and rank2):
        a = np.concatenate([np.argmax(g.reshape(len(g), -1), axis=-1) for g in out])
        b = np.concatenate([np.argmax(r.reshape(len(r), -1), axis=-1) for r in ref])
        figures["top1_agreement"] = float(np.mean(a == b))
    if target.task == "segmentation":
        o = target.primary
        if o.decision == "argmax":
            masks = [(np.argmax(g, axis=1) > 0, np.argmax(r, axis=1) > 0) for r, g in zip(ref, out)]
        else:
            cut = 0.0 if o.activation == "sigmoid" else o.threshold
            masks = [(g > cut, r > cut) for r, g in zip(ref, out)]
        inter = sum(int(np.logical_and(a, b).sum()) for a, b in masks)
        total = sum(int(a.sum() + b.sum()) for a, b in masks)
        figures["dice"] = 1.0 if total == 0 else 2 * inter / total
    figures["scale"] = scale
    return figures, judge(figures, kind, target.task, limits)


def judge(figures: dict, kind: str, task: str, limits: Thresholds) -> bool:
    """Within tolerance? fp32 (and the frameworks): max abs diff <= max_abs_diff x max(1, largest |reference|)
    (absolute for outputs within [-1, 1], relative for larger logits); int8: top-1 agreement (classification),
    mask Dice (segmentation), else max rel diff. Records the rule applied in `figures`."""
    if "error" in figures:
        return False
    if kind != "int8":
        bound = limits.max_abs_diff * max(1.0, figures.get("scale", 1.0))
        ok = figures["max_abs_diff"] <= bound
        figures["rule"] = f"max_abs_diff <= {limits.max_abs_diff:g} x max(1, max|reference|) = {bound:.3g}"
    elif "top1_agreement" in figures and task == "classification":
        ok = figures["top1_agreement"] >= limits.min_top1
        figures["rule"] = f"top1_agreement >= {limits.min_top1:g}"
    elif "dice" in figures:
        ok = figures["dice"] >= limits.min_dice
        figures["rule"] = f"dice >= {limits.min_dice:g}"
    else:
        ok = figures["max_rel_diff"] <= limits.max_rel_diff
        figures["rule"] = f"max_rel_diff <= {limits.max_rel_diff:g}"
    return bool(ok)


# ------------------------------------------------------------------------------------------ statistics

def summarize(samples: list[float], rounds: list[list[float]], noise: float) -> dict:
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
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else float("nan")


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _ort_version() -> str:
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return "(not installed)"


def _dist_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def runtime_label() -> str:
    """Which onnxruntime build this is: `onnxruntime 1.32.0`, `onnxruntime-openvino 1.24.1`, ..."""
    for dist in ("onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime"):
        version = _dist_version(dist)
        if version:
            return f"{dist} {version}"
    return f"onnxruntime {_ort_version()}"


def machine() -> dict:
    model, flags = None, []
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and model is None:
                model = value.strip()
            if key in ("flags", "features") and not flags:
                flags = value.split()
    except OSError:
        pass
    vector = sorted(f for f in flags if re.match(r"(avx|sse|fma|f16c|amx|vnni|asimd|sve|i8mm|bf16)", f))
    memory = None
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, IndexError, ValueError):
        pass
    libraries = {"python": platform.python_version(), "onnxruntime": runtime_label(),
                 "numpy": np.__version__, "onnxfn": _dist_version("onnxfn")}
    for dist in ("torch", "scikit-learn", "matplotlib", "openvino"):
        version = _dist_version(dist)
        if version:
            libraries[dist] = version
    try:
        providers = available_providers()
    except BenchError:
        providers = []
    return {"cpu_model": model or platform.processor() or "unknown", "cpu": cpu.describe(),
            "vector_flags": vector, "cores": os.cpu_count(), "affinity": cpu.affinity(), "quota": cpu.quota(),
            "threads": cpu.threads(), "memory_mb": memory, "platform": platform.platform(),
            "libraries": libraries, "providers": providers}


# ------------------------------------------------------------------------------------------ the run

def run(target: Target, options: Options, argv: list[str] | None = None) -> dict:
    """Measure every candidate; the result (JSON-ready) with winner and comparisons."""
    o = options.resolved()
    say = o.progress
    notes: list[str] = []
    skipped: list[dict] = []
    load_before = loadavg()
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    portable, portable_path = target.portable
    try:
        from onnxfn.tools.package import describe
        _, outs = describe(portable_path)
        target.output_names = [x["name"] for x in outs]
    except OnnxfnError as e:
        raise BenchError(explain_load_error(e.message.split(": ", 1)[-1])) from None
    if o.sklearn and target.task != "segmentation":
        primary = target.primary.name
        proba = next((n for n in target.output_names if "prob" in n.lower()), None)
        if proba and proba != primary and "prob" not in primary.lower():
            notes.append(f"compared on output {proba!r} (what predict_proba returns), not {primary!r}")
            target.primary = replace(target.primary, name=proba)
    inputs = plan_inputs(target, o)
    candidates = plan(target, o, notes, skipped)
    index = target.output_names.index(target.primary.name)
    names = [s.name for s in target.inputs]
    say(f"{target.name}: {len(candidates)} candidates, {len(inputs.cases)} input shape(s) "
        f"({', '.join(inputs.labels)}), {o.runs} timed runs each in {o.rounds} round(s) after {o.warmup} warm-up, "
        f"accuracy on {len(inputs.items)} input(s); load average {load_before}")
    results: dict[str, dict] = {}
    workers: dict[str, Worker] = {}
    reference_outputs: list[np.ndarray] | None = None
    reference_id: str | None = None
    logdir = Path(tempfile.mkdtemp(prefix="onnxfn-bench-"))
    ctx = _context()
    try:
        for n, cand in enumerate(candidates, 1):
            entry = _entry(cand)
            results[cand.id] = entry
            worker = Worker(ctx, cand, logdir)
            reply = worker.call({"op": "load", "spec": cand.spec(o), "output_index": index, "input_names": names,
                                 "cases": inputs.cases, "labels": inputs.labels, "items": inputs.items},
                                LOAD_TIMEOUT_S)
            if "error" in reply:
                entry.update(status="failed", error=reply["error"])
                worker.stop()
                say(f"[{n}/{len(candidates)}] {cand.id}: FAILED: {reply['error']}")
                if cand.reference:
                    hint = ""
                    if "input shape" in reply["error"]:
                        image = next((i.image for i in target.inputs if i.image is not None), None)
                        hint = ("; the model does not take that input shape: pass --shapes with sizes it accepts" +
                                (f" (this bundle pads images to multiples of {image.pad_multiple})"
                                 if image is not None and image.pad_multiple > 1 else ""))
                    raise BenchError(f"the reference {cand.id} failed: {reply['error']}{hint}")
                continue
            workers[cand.id] = worker
            entry.update(status="ok", import_ms=reply["import_ms"], create_ms=reply["create_ms"],
                         first_run_ms=reply["first_run_ms"],
                         base_rss_mb=reply["base_rss_mb"], providers=reply["providers"])
            outputs = reply["outputs"]
            if reference_outputs is None and (cand.engine in ("pytorch", "torchscript", "sklearn") or cand.reference):
                reference_outputs, reference_id = outputs, cand.id
                entry["reference"] = True
            else:
                entry["reference"] = False
            figures, ok = compare(target, reference_outputs, outputs, cand.kind, o.thresholds)
            figures["reference"] = reference_id
            entry.update(accuracy=figures, within_tolerance=ok)
            say(f"[{n}/{len(candidates)}] {cand.id}: created in {reply['create_ms']:.0f} ms, first run "
                f"{reply['first_run_ms']:.1f} ms, {_accuracy_text(figures)}{'' if ok else ' (OUT OF TOLERANCE)'}")
        if not workers:
            raise BenchError("no candidate could run")
        units = [(cid, k) for cid in workers for k in range(len(inputs.cases))]
        samples: dict[tuple[str, int], list[list[float]]] = {u: [] for u in units}
        if o.warmup:
            say(f"warm-up: {o.warmup} run(s) per candidate and shape")
            for cid, k in units:
                reply = workers[cid].call({"op": "time", "case": k, "n": o.warmup}, BATCH_TIMEOUT_S)
                if "error" in reply:
                    _fail(results, workers, cid, reply["error"], say)
        sizes = [o.runs // o.rounds + (1 if r < o.runs % o.rounds else 0) for r in range(o.rounds)]
        during: list[list[float] | None] = []
        for r, size in enumerate(sizes):
            if size == 0:
                continue
            order = units[r % len(units):] + units[:r % len(units)]
            if r % 2:
                order.reverse()
            for cid, k in order:
                if cid not in workers:
                    continue
                reply = workers[cid].call({"op": "time", "case": k, "n": size}, BATCH_TIMEOUT_S)
                if "error" in reply:
                    _fail(results, workers, cid, reply["error"], say)
                    continue
                samples[(cid, k)].append(reply["ms"])
                pause = max(o.gap, SPIN_GAP_S) if workers[cid].candidate.spinning else o.gap
                if pause:
                    time.sleep(pause)
            during.append(loadavg())
            alive = [(cid, k) for cid, k in units if cid in workers and samples[(cid, k)]]
            best = min(alive, key=lambda u: statistics.median(samples[u][-1])) if alive else None
            say(f"round {r + 1}/{len(sizes)}: {size} run(s) each; fastest this round "
                f"{best[0] if best else '-'} ({statistics.median(samples[best][-1]):.2f} ms"
                f"{' at ' + inputs.labels[best[1]] if best and len(inputs.cases) > 1 else ''})" if best else
                f"round {r + 1}/{len(sizes)}: nothing ran")
        for cid, worker in workers.items():
            reply = worker.call({"op": "rss"}, 30)
            entry = results[cid]
            if "error" not in reply:
                entry["peak_rss_mb"] = reply["peak_rss_mb"]
                entry["model_rss_mb"] = round(reply["peak_rss_mb"] - entry["base_rss_mb"], 1)
            entry["cases"] = []
            for k, label in enumerate(inputs.labels):
                rounds = samples.get((cid, k), [])
                flat = [x for batch in rounds for x in batch]
                if flat:
                    entry["cases"].append({"shape": label, **summarize(flat, rounds, o.noise)})
            if entry["cases"]:
                entry["p50_ms"] = geomean([c["p50_ms"] for c in entry["cases"]])
                entry["p90_ms"] = geomean([c["p90_ms"] for c in entry["cases"]])
                entry["p99_ms"] = geomean([c["p99_ms"] for c in entry["cases"]])
                entry["noisy"] = any(c["noisy"] for c in entry["cases"])
    finally:
        for worker in workers.values():
            worker.stop()
        shutil.rmtree(logdir, ignore_errors=True)
    load_after = loadavg()
    result = {
        "onnxfn_bench": SCHEMA, "created": started_at, "command": argv or [],
        "target": target.describe(), "machine": machine(),
        "loadavg": {"before": load_before, "after": load_after, "during": during,
                    "max_1min": max((v[0] for v in [load_before, load_after, *during] if v), default=None)},
        "settings": {"runs": o.runs, "warmup": o.warmup, "rounds": o.rounds, "batches": sizes,
                     "threads": o.threads, "levels": o.levels, "spinning": o.spinning, "prepacking": o.prepacking,
                     "providers": o.providers, "samples": o.samples, "gap_s": o.gap, "noise_threshold": o.noise,
                     "quick": o.quick, "torch": o.torch, "torch_compile": o.compile,
                     "sklearn": str(o.sklearn) if o.sklearn else None,
                     "thresholds": o.thresholds.__dict__.copy(), "seed": o.seed},
        "inputs": {"source": inputs.source, "accuracy_inputs": len(inputs.items),
                   "cases": [{"shape": label, "source": src} for label, src in zip(inputs.labels, inputs.case_sources)]},
        "reference": {"candidate": reference_id,
                      "engine": results[reference_id]["engine"] if reference_id else None},
        "candidates": list(results.values()),
        "skipped": skipped, "notes": notes,
    }
    peak = result["loadavg"]["max_1min"]
    if peak is not None and peak > (os.cpu_count() or 1):
        result["notes"].append(f"the machine was busy (1-minute load average up to {peak:.2f} on "
                               f"{os.cpu_count()} cores while timing): figures are noisier than on an idle machine")
    return finish(result)


def _entry(c: Candidate) -> dict:
    return {"id": c.id, "engine": c.engine, "provider": c.provider, "artifact": c.artifact, "kind": c.kind,
            "level": c.level, "threads": c.threads, "spinning": c.spinning, "prepacking": c.prepacking,
            "preoptimized": c.preoptimized, "default": c.default, "runtime": _engine_version(c.engine),
            "status": "pending", "error": None, "import_ms": None, "create_ms": None, "first_run_ms": None, "base_rss_mb": None,
            "peak_rss_mb": None, "model_rss_mb": None, "accuracy": None, "within_tolerance": None,
            "p50_ms": None, "p90_ms": None, "p99_ms": None, "noisy": None, "cases": []}


def _engine_version(engine: str) -> str:
    if engine == "onnxruntime":
        return runtime_label()
    if engine == "sklearn":
        return f"scikit-learn {_dist_version('scikit-learn')}"
    return f"torch {_dist_version('torch')}"


def _fail(results, workers, cid, error, say) -> None:
    results[cid].update(status="failed", error=error)
    workers.pop(cid).stop()
    say(f"{cid}: FAILED while timing: {error}")


def _accuracy_text(figures: dict | None) -> str:
    if not figures:
        return "-"
    if "error" in figures:
        return figures["error"]
    if figures.get("reference") is None:
        return "reference"
    parts = [f"max abs diff {figures['max_abs_diff']:.2g}"]
    if "top1_agreement" in figures:
        parts.append(f"top-1 {figures['top1_agreement']:.3f}")
    if "dice" in figures:
        parts.append(f"Dice {figures['dice']:.4f}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ verdicts

def finish(result: dict) -> dict:
    """Winner, the runner's default, and the comparisons, from the candidates' figures."""
    cands = [c for c in result["candidates"] if c["status"] == "ok" and c.get("p50_ms")]
    main = main_runtime(result)
    # eligible: onnxruntime within tolerance; on the CPU provider, only this environment's onnxruntime (in a merge,
    # the first file's: the one the function ships); other providers (OpenVINO) from any run
    eligible = sorted((c for c in cands if c["engine"] == "onnxruntime" and c["within_tolerance"] and
                       (c["runtime"] == main or c["provider"] != "CPUExecutionProvider")), key=lambda c: c["p50_ms"])
    result["ranking"] = [c["id"] for c in sorted(cands, key=lambda c: c["p50_ms"])]
    best = eligible[0] if eligible else None
    # what the runner can apply: the CPU provider of this environment's onnxruntime (in a merge, the first file's)
    best_cpu = next((c for c in eligible if c["provider"] == "CPUExecutionProvider" and c["runtime"] == main), None)
    default = next((c for c in cands if c.get("default")), None)
    result["winner"] = _verdict(best, eligible, default) if best else None
    result["winner_cpu_provider"] = _verdict(best_cpu, [c for c in eligible if c["provider"] ==
                                                        "CPUExecutionProvider"], default) if best_cpu else None
    result["default"] = {"id": default["id"], "p50_ms": default["p50_ms"]} if default else None
    result["comparisons"] = comparisons(cands, main)
    return result


def main_runtime(result: dict) -> str | None:
    return next((c["runtime"] for c in result["candidates"] if c["engine"] == "onnxruntime"), None)


def _verdict(best: dict, pool: list[dict], default: dict | None) -> dict:
    runner_up = next((c for c in pool if c is not best), None)
    verdict = {"id": best["id"], "provider": best["provider"], "artifact": best["artifact"], "level": best["level"],
               "threads": best["threads"], "spinning": best["spinning"], "prepacking": best["prepacking"],
               "p50_ms": best["p50_ms"], "p90_ms": best["p90_ms"], "p99_ms": best["p99_ms"],
               "accuracy": best["accuracy"], "noisy": best["noisy"]}
    if runner_up is not None:
        margin = runner_up["p50_ms"] / best["p50_ms"] - 1
        verdict["runner_up"] = {"id": runner_up["id"], "p50_ms": runner_up["p50_ms"], "margin": margin}
        spreads = [case["spread"] for c in (best, runner_up) for case in c["cases"]]
        verdict["margin_within_noise"] = bool(spreads and margin < max(spreads))
    if default is not None:
        verdict["default_p50_ms"] = default["p50_ms"]
        verdict["speedup_vs_default"] = default["p50_ms"] / best["p50_ms"]
    return verdict


def _best(cands: list[dict], **where) -> dict | None:
    pool = [c for c in cands if all((where[k](c[k]) if callable(where[k]) else c[k] == where[k]) for k in where)]
    return min(pool, key=lambda c: c["p50_ms"]) if pool else None


def comparisons(cands: list[dict], main: str | None = None) -> list[dict]:
    """Named head-to-heads: `a` is `speedup` times as fast as `b` (b's p50 / a's p50). Comparisons of
    settings use the main onnxruntime's candidates; OpenVINO is compared with the CPU provider measured
    alongside it (same run, same onnxruntime) and, after a merge, with the main one."""
    out: list[dict] = []

    def add(what: str, a: dict | None, b: dict | None):
        if a is None or b is None or a is b:
            return
        out.append({"what": what, "a": a["id"], "b": b["id"], "a_p50_ms": a["p50_ms"], "b_p50_ms": b["p50_ms"],
                    "speedup": b["p50_ms"] / a["p50_ms"],
                    "a_accuracy": _accuracy_text(a["accuracy"]), "b_accuracy": _accuracy_text(b["accuracy"])})

    ort_ok = [c for c in cands if c["engine"] == "onnxruntime" and c["within_tolerance"]]
    every_cpu = [c for c in ort_ok if c["provider"] == "CPUExecutionProvider"]
    main = main or next((c["runtime"] for c in every_cpu), None)
    cpu_ok = [c for c in every_cpu if c["runtime"] == main]
    threads = sorted({c["threads"] for c in cands})
    for t in threads:
        for engine, label in (("pytorch", "PyTorch eager"), ("torchscript", "TorchScript"),
                              ("torch.compile", "torch.compile"), ("sklearn", "scikit-learn")):
            add(f"onnxruntime CPU provider (best within tolerance) vs {label}, {t} thread(s)", _best(cpu_ok, threads=t),
                _best(cands, engine=engine, threads=t))
    for t in threads:
        ov = _best(ort_ok, provider="OpenVINOExecutionProvider", threads=t)
        if ov is not None:
            add(f"OpenVINO vs CPU provider ({ov['runtime']}, same run), {t} thread(s)", ov,
                _best(every_cpu, runtime=ov["runtime"], threads=t))
            if ov["runtime"] != main:
                add(f"OpenVINO vs CPU provider ({main}, merged run), {t} thread(s)", ov, _best(cpu_ok, threads=t))
    for t in threads:
        add(f"ORT_ENABLE_ALL vs ORT_ENABLE_EXTENDED (portable, CPU, no spinning, prepacking), {t} thread(s)",
            _best(cpu_ok, kind="portable", level="ALL", threads=t, spinning=False, prepacking=True),
            _best(cpu_ok, kind="portable", level="EXTENDED", threads=t, spinning=False, prepacking=True))
    if len(threads) > 1:
        add(f"{threads[-1]} threads vs 1 thread (best CPU provider each)", _best(cpu_ok, threads=threads[-1]),
            _best(cpu_ok, threads=threads[0]))
    cpu_all = [c for c in cands if c["engine"] == "onnxruntime" and c["provider"] == "CPUExecutionProvider"
               and c["runtime"] == main]
    for t in threads:
        add(f"int8 vs fp32 (best each, CPU provider), {t} thread(s)", _best(cpu_all, kind="int8", threads=t),
            _best(cpu_ok, kind=lambda k: k in ("portable", "optimized"), threads=t))
        add(f"pre-optimized fp32 vs portable (CPU provider), {t} thread(s)",
            _best(cpu_ok, kind="optimized", threads=t), _best(cpu_ok, kind="portable", threads=t))
    # one setting changed, the others as in the best CPU-provider candidate (matched pairs)
    base = min(cpu_ok, key=lambda c: c["p50_ms"]) if cpu_ok else None
    if base is not None:
        same = [c for c in cands if c["engine"] == "onnxruntime" and c["provider"] == "CPUExecutionProvider"
                and c["runtime"] == main]

        def twin(**change):
            keys = ("artifact", "level", "threads", "spinning", "prepacking")
            want = {k: change.get(k, base[k]) for k in keys}
            return next((c for c in same if all(c[k] == want[k] for k in keys)), None)
        if base["threads"] > 1:
            on, off = twin(spinning=True), twin(spinning=False)
            add(f"spinning on vs off ({base['artifact']}, {base['level']}, {base['threads']} threads)", on, off)
        add(f"prepacking off vs on ({base['artifact']}, {base['level']}, {base['threads']} thread(s))",
            twin(prepacking=False), twin(prepacking=True))
    best = min(cpu_ok, key=lambda c: c["p50_ms"]) if cpu_ok else None
    add("best CPU provider settings vs the runner's default settings", best,
        next((c for c in cands if c.get("default")), None))
    return out


# ------------------------------------------------------------------------------------------ merge

def merge(files: list[Path], thresholds: Thresholds | None = None) -> dict:
    """Join results measured in separate runs (e.g. the OpenVINO venv's) for the same model; tolerance is
    judged again with `thresholds` (default: the first file's)."""
    docs = []
    for f in files:
        try:
            doc = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BenchError(f"--merge: cannot read {str(f)!r}: {e}") from None
        if doc.get("onnxfn_bench") != SCHEMA:
            raise BenchError(f"--merge: {str(f)!r} is not an onnxfn bench result (schema {SCHEMA})")
        docs.append(doc)
    shas = {d["target"]["portable_sha256"] for d in docs}
    if len(shas) != 1:
        raise BenchError("--merge: the results are for different models (portable sha256 "
                         f"{', '.join(sorted(s[:12] for s in shas))})")
    base = json.loads(json.dumps(docs[0]))
    seen = {c["id"] for c in base["candidates"]}
    for doc, f in zip(docs[1:], files[1:]):
        for c in doc["candidates"]:
            if c["id"] in seen:
                c["id"] = f"{c['id']}@{c['runtime'].replace(' ', '-')}"
                if c["id"] in seen:
                    c["id"] += f"@{Path(f).parent.name or Path(f).stem}"
            c["default"] = False
            c["reference"] = False
            seen.add(c["id"])
            base["candidates"].append(c)
        base["notes"] += [n for n in doc["notes"] if n not in base["notes"]]
    measured = {p for d in docs for p in d["machine"].get("providers", [])}
    base["skipped"] = []
    for s in (s for d in docs for s in d["skipped"]):
        if s["what"] not in measured and s not in base["skipped"]:
            base["skipped"].append(s)
    base["merged_from"] = [{"file": str(f), "created": d["created"], "onnxruntime": d["machine"]["libraries"]
                            ["onnxruntime"], "providers": d["machine"]["providers"], "loadavg": d["loadavg"],
                            "reference": d["reference"], "command": d["command"]} for f, d in zip(files, docs)]
    base["notes"].append("merged from separate runs: candidates of different files were not alternated with each "
                         "other, and each file's accuracy is against its own reference")
    limits = thresholds or Thresholds(**base["settings"]["thresholds"])
    base["settings"]["thresholds"] = limits.__dict__.copy()
    for c in base["candidates"]:
        if c.get("accuracy"):
            if "scale" not in c["accuracy"] and c["accuracy"].get("max_rel_diff"):
                c["accuracy"]["scale"] = c["accuracy"]["max_abs_diff"] / c["accuracy"]["max_rel_diff"]
            c["within_tolerance"] = judge(c["accuracy"], c["kind"], base["target"]["task"], limits)
    if len({d["machine"]["cpu_model"] for d in docs}) > 1:
        base["notes"].append("WARNING: the merged results come from different CPU models")
    return finish(base)


# ------------------------------------------------------------------------------------------ tuning

def tuning_entry(result: dict) -> mf.Tuning:
    w = result.get("winner_cpu_provider")
    if not w:
        raise BenchError("no ONNX Runtime candidate on the CPU provider was within tolerance: nothing to record")
    here = cpu.arch()
    if here not in mf.ARCHES:
        raise BenchError(f"this machine's architecture {here!r} is not one a manifest can name "
                         f"({', '.join(mf.ARCHES)})")
    features = tuple(sorted(f for f in (cpu.features() or ()) if f in mf.CPU_FEATURES))
    cand = next(c for c in result["candidates"] if c["id"] == w["id"])
    measured = {
        "p50_ms": round(cand["p50_ms"], 4), "p90_ms": round(cand["p90_ms"], 4), "p99_ms": round(cand["p99_ms"], 4),
        "create_ms": round(cand["create_ms"], 2), "first_run_ms": round(cand["first_run_ms"], 2),
        "peak_rss_mb": cand["peak_rss_mb"], "shapes": {c["shape"]: round(c["p50_ms"], 4) for c in cand["cases"]},
        "provider": cand["provider"], "onnxruntime": cand["runtime"], "candidates": len(result["candidates"]),
        "runs": result["settings"]["runs"], "rounds": result["settings"]["rounds"], "noisy": bool(cand["noisy"]),
        "accuracy": dict(cand["accuracy"] or {}),
        "cpu_model": result["machine"]["cpu_model"],
        "loadavg": {k: result["loadavg"].get(k) for k in ("before", "after", "max_1min")},
        "date": result["created"], "tool": "onnxfn bench",
    }
    if w.get("runner_up"):
        measured["runner_up"] = {"id": w["runner_up"]["id"], "p50_ms": round(w["runner_up"]["p50_ms"], 4),
                                 "margin": round(w["runner_up"]["margin"], 4)}
        measured["margin_within_noise"] = w.get("margin_within_noise", False)
    if w.get("default_p50_ms"):
        measured["default_p50_ms"] = round(w["default_p50_ms"], 4)
        measured["speedup_vs_default"] = round(w["speedup_vs_default"], 4)
    overall = result.get("winner")
    if overall and overall["id"] != w["id"]:
        measured["best_overall"] = {"id": overall["id"], "provider": overall["provider"],
                                    "p50_ms": round(overall["p50_ms"], 4),
                                    "speedup_vs_recorded": round(cand["p50_ms"] / overall["p50_ms"], 4),
                                    "note": "the runner builds CPUExecutionProvider sessions only: this provider's "
                                            "settings are recorded, not applied"}
    return mf.Tuning(requires=mf.Requirement(here, features), artifact=cand["artifact"],
                     graph_optimization_level=cand["level"], intra_op_threads=cand["threads"],
                     allow_spinning=bool(cand["spinning"]), disable_prepacking=not cand["prepacking"],
                     measured=measured)


def _specificity(t: mf.Tuning):
    from onnxfn.runtime.selection import specificity
    widest, count = specificity(t.requires.features)
    return -count, -widest, t.requires.arch


def write_tuning(root: Path, tuning: mf.Tuning) -> bundles.Bundle:
    """Record `tuning` in the bundle's manifest (atomically), replacing the entry for the same CPU class;
    entries are kept most specific first (the runner applies the first that matches). The bundle must
    load and verify afterwards, else the old manifest is put back."""
    manifest, _ = bundles.read_manifest(Path(root))
    kept = [t for t in manifest.tuning if t.requires != tuning.requires]
    entries = sorted(kept + [tuning], key=_specificity)
    return bundles.rewrite_manifest(Path(root), replace(manifest, tuning=tuple(entries)))


# ------------------------------------------------------------------------------------------ reports

def _ms(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _row(c: dict, winner: str | None) -> list[str]:
    ok = c["status"] == "ok"
    rounds = [case["rounds"] for case in c["cases"] if case.get("rounds")]
    rr = (f"{_ms(geomean([r['min_ms'] for r in rounds]))}/{_ms(geomean([r['median_ms'] for r in rounds]))}/"
          f"{_ms(geomean([r['max_ms'] for r in rounds]))}") if rounds else "-"
    flags = []
    if c["id"] == winner:
        flags.append("WINNER")
    if c.get("default"):
        flags.append("default")
    if c.get("reference"):
        flags.append("reference")
    if c.get("noisy"):
        flags.append("noisy")
    if ok and c.get("within_tolerance") is False:
        flags.append("OUT OF TOLERANCE")
    if not ok:
        flags.append(f"FAILED: {c.get('error') or c['status']}"[:100])
    return [c["id"], _ms(c.get("create_ms")), _ms(c.get("first_run_ms")), _ms(c.get("p50_ms")), _ms(c.get("p90_ms")),
            _ms(c.get("p99_ms")), rr, "-" if c.get("peak_rss_mb") is None else f"{c['peak_rss_mb']:.0f}",
            "-" if c.get("model_rss_mb") is None else f"{c['model_rss_mb']:.0f}",
            _accuracy_text(c.get("accuracy")) if ok else "-", " ".join(flags)]


HEADER = ["candidate", "create ms", "first ms", "p50 ms", "p90 ms", "p99 ms", "rounds min/med/max",
          "peak RSS MB", "+model MB", "accuracy vs reference", "notes"]


def _ordered(result: dict) -> list[dict]:
    rank = {cid: k for k, cid in enumerate(result.get("ranking", []))}
    return sorted(result["candidates"], key=lambda c: rank.get(c["id"], len(rank)))


def table(result: dict) -> str:
    winner = (result.get("winner") or {}).get("id")
    rows = [HEADER] + [_row(c, winner) for c in _ordered(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(v.ljust(widths[i]) if i in (0, 9, 10) else v.rjust(widths[i]) for i, v in enumerate(r)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(result: dict, files: dict[str, str]) -> str:
    t, m = result["target"], result["machine"]
    s = result["settings"]
    lines = [f"# onnxfn bench: {t['name']}", "",
             f"- model: `{t['path']}` ({t['kind']}, task {t['task']}, portable sha256 `{t['portable_sha256'][:16]}…`)",
             f"- machine: {m['cpu_model']}, {m['cpu']['arch']}, features known to onnxfn: "
             f"{', '.join(m['cpu']['features'] or []) or 'none'}; vector flags: {' '.join(m['vector_flags']) or '-'}",
             f"- cores {m['cores']}, affinity {m['affinity']}, quota {m['quota'] or 'unlimited'}, "
             f"threads from quota {m['threads']}, memory {m['memory_mb']} MB",
             f"- libraries: {', '.join(v if str(v).startswith(k) else f'{k} {v}' for k, v in m['libraries'].items())}; providers "
             f"{', '.join(m['providers'])}",
             f"- load average (1, 5, 15 min): before {result['loadavg']['before']}, after {result['loadavg']['after']}"
             f"; highest 1-min value while timing {result['loadavg'].get('max_1min')}",
             f"- run: {result['created']}; {s['runs']} timed runs per candidate and shape in {s['rounds']} round-robin "
             f"rounds (batches {s['batches']}), {s['warmup']} warm-up; inputs: {result['inputs']['source']}; "
             f"shapes {', '.join(c['shape'] for c in result['inputs']['cases'])}; accuracy on "
             f"{result['inputs']['accuracy_inputs']} input(s) against `{result['reference']['candidate']}`",
             f"- tolerance: fp32 max abs diff <= {s['thresholds']['max_abs_diff']:g}; int8 top-1 >= "
             f"{s['thresholds']['min_top1']:g} (classification), Dice >= {s['thresholds']['min_dice']:g} "
             f"(segmentation), max rel diff <= {s['thresholds']['max_rel_diff']:g} (tensor)"]
    if result.get("command"):
        lines.append(f"- command: `{' '.join(result['command'])}`")
    for f in result.get("merged_from", []):
        lines.append(f"- merged: `{f['file']}` ({f['onnxruntime']}, providers {', '.join(f['providers'])}, "
                     f"load {f['loadavg']['before']} -> {f['loadavg']['after']})")
    lines += ["", "## Candidates (fastest first; latency = geometric mean over the shapes)", "",
              "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    winner = (result.get("winner") or {}).get("id")
    for c in _ordered(result):
        lines.append("| " + " | ".join(v.replace("|", "/") for v in _row(c, winner)) + " |")
    if any(len(c["cases"]) > 1 for c in result["candidates"]):
        shapes = [c["shape"] for c in result["inputs"]["cases"]]
        lines += ["", "### p50 ms per shape", "", "| candidate | " + " | ".join(shapes) + " |",
                  "|---|" + "---|" * len(shapes)]
        for c in _ordered(result):
            by = {case["shape"]: case for case in c["cases"]}
            lines.append(f"| {c['id']} | " + " | ".join(_ms(by[s]["p50_ms"]) if s in by else "-" for s in shapes) + " |")
    lines += ["", "## Comparisons", "", "| comparison | a | b | a p50 ms | b p50 ms | a is x times as fast | "
              "a accuracy | b accuracy |", "|---|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        lines.append(f"| {c['what']} | {c['a']} | {c['b']} | {_ms(c['a_p50_ms'])} | {_ms(c['b_p50_ms'])} | "
                     f"{c['speedup']:.2f} | {c['a_accuracy']} | {c['b_accuracy']} |")
    lines += ["", "## Verdict", ""]
    w, wc = result.get("winner"), result.get("winner_cpu_provider")
    if w:
        lines.append(f"- fastest within tolerance: **{w['id']}**, p50 {_ms(w['p50_ms'])} ms"
                     + (f", {w['speedup_vs_default']:.2f}x the runner's default ({result['default']['id']}, "
                        f"{_ms(w['default_p50_ms'])} ms)" if w.get("default_p50_ms") else "")
                     + (f"; runner-up {w['runner_up']['id']} {w['runner_up']['margin'] * 100:.1f} % slower"
                        f"{' (within the noise between rounds)' if w.get('margin_within_noise') else ''}"
                        if w.get("runner_up") else ""))
        if wc and wc["id"] != w["id"]:
            lines.append(f"- fastest on the CPU provider (what the runner can apply): **{wc['id']}**, p50 "
                         f"{_ms(wc['p50_ms'])} ms")
    else:
        lines.append("- no ONNX Runtime candidate was within tolerance")
    if result.get("written"):
        lines.append(f"- recorded in `{result['written']['manifest']}` as the tuning for "
                     f"{result['written']['requires']}")
    if result["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s['what']}: {s['why']}" for s in result["skipped"]]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in files.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> str | None:
    """Latency distributions per candidate (one panel per shape); None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: pip install -e '.[bench]' for the latency plot"
    cands = [c for c in _ordered(result) if c["status"] == "ok" and c["cases"]]
    if not cands:
        return "nothing to plot"
    shapes = [c["shape"] for c in result["inputs"]["cases"]]
    colors = {"CPUExecutionProvider": "#1f77b4", "OpenVINOExecutionProvider": "#6a3d9a", "pytorch": "#ff7f0e",
              "torch.compile": "#d62728", "torchscript": "#ff9896", "sklearn": "#2ca02c"}
    winner = (result.get("winner") or {}).get("id")
    height = max(3.0, 0.32 * len(cands) + 1.6)
    fig, axes = plt.subplots(1, len(shapes), figsize=(7.5 * len(shapes), height), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        data, labels, tint = [], [], []
        for c in reversed(cands):
            case = next((k for k in c["cases"] if k["shape"] == shape), None)
            data.append(case["samples_ms"] if case else [float("nan")])
            labels.append(("* " if c["id"] == winner else "") + c["id"] + ("" if c["within_tolerance"] is not False
                                                                           else " (inaccurate)"))
            tint.append(colors.get(c["provider"] or c["engine"], "#7f7f7f"))
        style = dict(patch_artist=True, widths=0.6, showfliers=True, flierprops={"markersize": 2, "alpha": 0.5})
        try:
            parts = ax.boxplot(data, orientation="horizontal", **style)
        except TypeError:  # matplotlib < 3.10
            parts = ax.boxplot(data, vert=False, **style)
        for patch, colour in zip(parts["boxes"], tint):
            patch.set_facecolor(colour)
            patch.set_alpha(0.55)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
        finite = [x for d in data for x in d if math.isfinite(x)]
        if finite and max(finite) / max(min(finite), 1e-9) > 30:
            ax.set_xscale("log")
        ax.set_xlabel("latency per inference (ms)")
        ax.set_title(f"{result['target']['name']} {shape}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    load = result["loadavg"]
    fig.suptitle(f"{result['machine']['cpu_model']}, {result['machine']['threads']} CPU(s); load "
                 f"{load['before']} -> {load['after']}; * = winner", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def save(result: dict, out: Path) -> dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "results.json"), "markdown": str(out / "report.md"), "plot": str(out / "latency.png")}
    problem = plot(result, Path(files["plot"]))
    if problem:
        files.pop("plot")
        if problem not in result["notes"]:
            result["notes"].append(problem)
    result["files"] = files
    Path(files["markdown"]).write_text(markdown(result, files), encoding="utf-8")
    Path(files["json"]).write_text(json.dumps(result, indent=1, default=_json_default) + "\n", encoding="utf-8")
    return files


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# ------------------------------------------------------------------------------------------ command

def _bools(text: str, what: str) -> list[bool]:
    table_ = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
    values = []
    for t in filter(None, (v.strip().lower() for v in text.split(","))):
        if t not in table_:
            raise BenchError(f"--{what}: {t!r} is not on or off")
        values.append(table_[t])
    return values


def options_from_args(args) -> Options:
    threads = None
    if args.threads:
        try:
            threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
        except ValueError:
            raise BenchError(f"--threads {args.threads!r}: expected numbers like 1,2") from None
        if not threads or min(threads) < 1:
            raise BenchError("--threads: each count must be 1 or more")
    for name in ("runs", "warmup", "rounds", "samples"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (value == 0 and name in ("runs", "rounds", "samples"))):
            raise BenchError(f"--{name} must be {'0 or more' if name == 'warmup' else '1 or more'}")
    if args.runs is not None and args.rounds is not None and args.rounds > args.runs:
        raise BenchError("--rounds cannot exceed --runs (each round runs at least one batch)")
    return Options(
        runs=args.runs, warmup=args.warmup, rounds=args.rounds, threads=threads,
        levels=[v.strip().upper() for v in args.levels.split(",")] if args.levels else None,
        providers=[v.strip().lower() for v in args.providers.split(",")] if args.providers else None,
        spinning=_bools(args.spinning, "spinning") if args.spinning else None,
        prepacking=_bools(args.prepacking, "prepacking") if args.prepacking else None,
        artifacts=[v.strip() for v in args.artifacts.split(",")] if args.artifacts else None,
        shapes=parse_shapes(args.shapes) if args.shapes else None, inputs=args.inputs, samples=args.samples,
        torch=args.torch, compile=False if args.no_compile else None, sklearn=args.sklearn, quick=args.quick,
        gap=args.gap, noise=args.noise,
        thresholds=Thresholds(max_abs_diff=args.max_abs_diff, min_top1=args.min_top1, min_dice=args.min_dice))


def main(args) -> int:
    """`onnxfn bench` (cli.py hands its parsed arguments here)."""
    argv = ["onnxfn", *sys.argv[1:]] if sys.argv[1:2] == ["bench"] else []
    if args.merge:
        result = merge(args.merge, Thresholds(max_abs_diff=args.max_abs_diff, min_top1=args.min_top1,
                                              min_dice=args.min_dice))
        result["command"] = argv
        out = args.out or Path(args.merge[0]).parent / "merged"
    else:
        if args.target is None:
            raise BenchError("name a bundle folder or an .onnx model (or --merge RESULTS.json ...)")
        target = load_target(args.target)
        if args.write and not target.is_bundle:
            raise BenchError("--write records the winner in a bundle's manifest: name a bundle folder, not a model")
        result = run(target, options_from_args(args), argv)
        out = args.out or Path("bench-results") / target.name
    if args.write:
        root = Path(result["target"]["path"])
        if result["target"]["kind"] != "bundle":
            raise BenchError("--write needs results for a bundle folder")
        current, _ = bundles.read_manifest(root)
        if (bundles.artifact_for(root / current.portable.path, current.portable.path).sha256
                != result["target"]["portable_sha256"]):
            raise BenchError(f"{str(root)!r} no longer holds the model these results measured: bench it again")
        tuning = tuning_entry(result)
        write_tuning(root, tuning)
        result["written"] = {"manifest": str(root / bundles.MANIFEST),
                             "requires": {"arch": tuning.requires.arch, "features": list(tuning.requires.features)},
                             "tuning": {k: v for k, v in tuning.__dict__.items() if k not in ("requires", "measured")}}
    files = save(result, out)
    print(table(result))
    print()
    for c in result["comparisons"]:
        print(f"{c['what']}: {c['a']} {_ms(c['a_p50_ms'])} ms vs {c['b']} {_ms(c['b_p50_ms'])} ms = "
              f"{c['speedup']:.2f}x")
    w = result.get("winner")
    print()
    print(f"winner: {w['id']} (p50 {_ms(w['p50_ms'])} ms)" if w else "winner: none within tolerance")
    for s in result["skipped"]:
        print(f"skipped {s['what']}: {s['why']}")
    for n in result["notes"]:
        print(f"note: {n}")
    if result.get("written"):
        print(f"recorded tuning {result['written']['tuning']} for {result['written']['requires']} in "
              f"{result['written']['manifest']}")
    print(f"wrote {', '.join(files.values())}")
    return 0
