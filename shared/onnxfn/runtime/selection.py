"""Which artifact of a bundle this CPU runs, and which benchmark tuning applies to it."""
from __future__ import annotations

from onnxfn.bundles.manifest import Artifact, Manifest, Tuning

KIND_RANK = {"int8": 2, "optimized": 1, "portable": 0}
#: How specific (and usually how fast) an instruction-set requirement is: wider vectors rank higher.
FEATURE_RANK = {"avx2": 1, "avx_vnni": 2, "avx512f": 3, "avx512_vnni": 4, "amx": 5,
                "asimddp": 1, "i8mm": 2, "bf16": 2, "sve": 3}


def choose(manifest: Manifest, arch: str, features: tuple[str, ...] | None,
           tuning: Tuning | None = None, preference: str = "auto") -> list[Artifact]:
    """Artifacts to try, best first: those this CPU satisfies (int8, then optimized, the most specific
    first; a tuning's artifact before all), then the portable one, which runs anywhere."""
    portable = manifest.portable
    if preference == "portable":
        return [portable]
    if preference not in ("auto", ""):
        named = [a for a in manifest.artifacts if a.path == preference]
        return named + ([portable] if named and named[0] is not portable else [])
    fitting = [a for a in manifest.artifacts if a.requires is not None and a.requires.satisfied_by(arch, features)]
    fitting.sort(key=lambda a: (-KIND_RANK[a.kind], *(-x for x in specificity(a.requires.features)), a.path))
    if tuning is not None and tuning.artifact:
        fitting.sort(key=lambda a: a.path != tuning.artifact)
        if tuning.artifact == portable.path:
            fitting = []
    return fitting + [portable]


def specificity(features: tuple[str, ...]) -> tuple[int, int]:
    """How specific a feature requirement is: its widest feature's rank, then how many features it names."""
    return max((FEATURE_RANK.get(f, 0) for f in features), default=0), len(features)


def tuning_for(manifest: Manifest, arch: str, features: tuple[str, ...] | None) -> Tuning | None:
    """The bundle's tuning entry for this CPU class, if it has one."""
    return next((t for t in manifest.tuning if t.requires.satisfied_by(arch, features)), None)


def applies(tuning: Tuning | None, artifact: Artifact) -> bool:
    """Whether `tuning` was measured for `artifact` (a tuning naming no artifact applies to any)."""
    return tuning is not None and (tuning.artifact is None or tuning.artifact == artifact.path)
