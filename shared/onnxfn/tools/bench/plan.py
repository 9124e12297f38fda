"""Which candidates the bench measures: every provider, artifact and session setting this machine
can run for the target, the runner's default among them, the reference, and the source frameworks."""
from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from onnxfn.bundles import manifest as mf
from onnxfn.runtime import cpu
from onnxfn.tools.bench.environment import PROVIDERS, SHORT, available_providers
from onnxfn.tools.bench.options import BenchError, BenchOptions
from onnxfn.tools.bench.target import Target

LEVELS = ("DISABLE", "BASIC", "EXTENDED", "ALL")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
CPU = "CPUExecutionProvider"


@dataclass
class Candidate:
    """One way to run the model: an engine with its provider, artifact and session settings."""
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

    def spec(self, options: BenchOptions) -> dict:
        """What a worker process needs to build this candidate (plain data: it is pickled)."""
        return {"engine": self.engine, "path": self.path, "provider": self.provider, "artifact": self.artifact,
                "kind": self.kind, "level": self.level, "threads": self.threads, "spinning": bool(self.spinning),
                "prepacking": self.prepacking is not False, "preoptimized": self.preoptimized,
                "torch": options.torch, "sklearn": str(options.sklearn) if options.sklearn else None}


def have(module: str) -> bool:
    """Whether `module` is importable here (without importing it)."""
    return importlib.util.find_spec(module) is not None


def plan(target: Target, options: BenchOptions, notes: list[str], skipped: list[dict]) -> list[Candidate]:
    """Every candidate to measure, frameworks first, then the reference; what cannot run here is
    appended to `skipped` (with why) and remarks to `notes`."""
    providers = _providers(options, skipped)
    runnable = _runnable(target, options, skipped)
    for level in options.levels:
        if level not in LEVELS:
            raise BenchError(f"--levels: {level!r} is not one of {', '.join(LEVELS)}")
    quota = cpu.threads()
    over = [t for t in options.threads if t > quota]
    if over:
        notes.append(f"threads {over} exceed this machine's CPU quota ({quota}): measured anyway, oversubscribed")
    candidates = _onnxruntime_candidates(providers, runnable, options, skipped)
    ref = _mark_default_and_reference(target, options, candidates, notes)
    frameworks = framework_candidates(options, notes, skipped)
    return frameworks + [ref] + [c for c in candidates if c is not ref]


def _providers(options: BenchOptions, skipped: list[dict]) -> list[str]:
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
    if "OpenVINOExecutionProvider" not in installed and options.providers is None:
        skipped.append({"what": "OpenVINOExecutionProvider", "why": "onnxruntime-openvino is not the onnxruntime "
                        "module of this environment: bench in its own venv (see BENCHMARKS.md) and --merge"})
    return [PROVIDERS[s] for s in wanted if PROVIDERS[s] in installed]


def _runnable(target: Target, options: BenchOptions, skipped: list[dict]) -> list[tuple[mf.Artifact, Path]]:
    here, features = cpu.arch(), cpu.features()
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
    return runnable


def _onnxruntime_candidates(providers: list[str], runnable: list[tuple[mf.Artifact, Path]], options: BenchOptions,
                            skipped: list[dict]) -> list[Candidate]:
    candidates: list[Candidate] = []
    for provider in providers:
        short = SHORT[provider]
        for artifact, path in runnable:
            if provider != CPU and artifact.preoptimized:
                skipped.append({"what": f"{provider} on {artifact.path}",
                                "why": "pre-optimized for the CPU provider (its fused/contrib operators are "
                                       "onnxruntime's own); the OpenVINO provider is given the plain graphs"})
                continue
            levels = ["DISABLE"] if artifact.preoptimized else options.levels
            spins = options.spinning if provider == CPU else [False]
            packs = options.prepacking if provider == CPU else [True]
            for level in levels:
                for t in options.threads:
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
    return candidates


def _mark_default_and_reference(target: Target, options: BenchOptions, candidates: list[Candidate],
                                notes: list[str]) -> Candidate:
    """Flag the runner's default here; return the reference (the portable artifact, CPU provider,
    ORT_ENABLE_ALL, fewest threads), added to `candidates` when it is not among them."""
    if target.manifest is not None:
        from onnxfn.runtime.selection import choose
        first = choose(target.manifest, cpu.arch(), cpu.features())[0]
    else:
        first = target.portable[0]
    from onnxfn.runtime.session import spinning
    threads, level = cpu.threads(), "DISABLE" if first.preoptimized else "ALL"
    default_id = (f"cpu:{first.path}:{level}:t{threads}"
                  f"{':spin' if spinning(threads) else ''}")  # what runtime.session.options builds
    for c in candidates:
        c.default = c.id == default_id
    asked = threads in options.threads and (level == "DISABLE" or level in options.levels)
    if (not any(c.default for c in candidates) and asked and not options.artifacts
            and "cpu" in (options.providers or ["cpu"])):
        spin = default_id.endswith(":spin")  # spinning not asked for: what the function builds is measured anyway
        path = next(p for a, p in target.artifacts if a.path == first.path)
        candidates.append(Candidate(id=default_id, engine="onnxruntime", threads=threads, provider=CPU,
                                    artifact=first.path, kind=first.kind, level=level, spinning=spin, prepacking=True,
                                    preoptimized=first.preoptimized, path=str(path), default=True))
        notes.append(f"{default_id} added: what the function builds here without tuning")
    portable, portable_path = target.portable
    ref_id = f"cpu:{portable.path}:ALL:t{min(options.threads)}"
    ref = next((c for c in candidates if c.id == ref_id), None)
    if ref is None:
        ref = Candidate(id=ref_id, engine="onnxruntime", threads=min(options.threads), provider=CPU,
                        artifact=portable.path, kind="portable", level="ALL", spinning=False, prepacking=True,
                        path=str(portable_path))
        candidates.insert(0, ref)
        notes.append(f"{ref_id} added: the reference (portable artifact, CPU provider, ORT_ENABLE_ALL)")
    ref.reference = True
    return ref


def framework_candidates(options: BenchOptions, notes: list[str], skipped: list[dict]) -> list[Candidate]:
    """The source-framework baselines asked for (--torch, --sklearn) that this environment can run."""
    out: list[Candidate] = []
    if options.torch:
        if not have("torch"):
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
        if not have("sklearn"):
            skipped.append({"what": f"scikit-learn ({options.sklearn})",
                            "why": "scikit-learn is not installed in this environment: pip install -e '.[dev]' to "
                                   "bench it; the rest is benched"})
        elif not Path(options.sklearn).is_file():
            raise BenchError(f"--sklearn {str(options.sklearn)!r} does not exist")
        else:
            for t in options.threads:
                out.append(Candidate(id=f"sklearn:t{t}", engine="sklearn", threads=t))
    return out
