"""The loaded model: one ONNX Runtime session, the bundle it came from, and what answers report of it."""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from onnxfn.bundles.bundle import Bundle
from onnxfn.bundles.manifest import InputSpec, Manifest, MemoryCost, Tuning
from onnxfn.errors import InferenceError
from onnxfn.runtime import cpu, memory as memories, session as sessions

if TYPE_CHECKING:
    import numpy as np

#: a call whose input the model's measured cost puts above this gives the memory it grew back afterwards. Below
#: it the arena keeps what it grew: a warm 512x512 U-Net call (about 70 MB) is 1.4x slower when its buffers are
#: freed and faulted in again on every call (runtime/session.py)
RELEASE_ABOVE = 128 << 20


@dataclass
class Model:
    """A session ready to run, with where it came from and how it was built."""
    bundle: Bundle
    session: object  # onnxruntime.InferenceSession
    artifact: str
    threads: int
    load_ms: float
    output_shapes: dict[str, list] = field(default_factory=dict)
    source: str = ""                  # where the bundle came from: "baked", "local" or "remote"
    checked_at: float = field(default_factory=time.monotonic)
    kind: str = "portable"            # the artifact's kind
    tuning: Tuning | None = None      # the benchmark's settings applied, if any
    fallbacks: tuple[str, ...] = ()   # artifacts that failed to load before this one
    phases: dict = field(default_factory=dict)  # ms spent fetching, waiting for the engine, creating, warming
    warmed: bool = False              # a warm-up run was made when the session was built
    warmed_on: str | None = None      # what the last warm-up ran on: "example" (example.npz) or "zeros"
    checked: bool = False             # the artifact has run once (warm-up or a call): it works on this CPU
    memory: MemoryCost | None = None  # what one inference costs (the manifest's, else measured at the load)
    releases: int = 0                 # calls after which memory was given back
    measure_first: bool = False       # the first run measures `memory` (a fixed-shape model loaded without warm-up)
    settled: bool = True              # False: a session built for the cold start, to be replaced (`Runner.settle`)

    @property
    def manifest(self) -> Manifest:
        """The manifest of the bundle the session was built from."""
        return self.bundle.manifest

    @property
    def provider(self) -> str:
        """The session's first (preferred) execution provider, e.g. CPUExecutionProvider."""
        return self.session.get_providers()[0]

    @functools.cached_property
    def warm_feeds(self) -> tuple[dict[str, np.ndarray], str]:
        """The inputs a warm-up runs on and what they are (`warm_up_feeds`), read once per model: the load's
        measure, its warm-up, a recheck and the settle all use them. A damaged example raises every time."""
        return warm_up_feeds(self.bundle)

    @functools.cached_property
    def runtime(self) -> dict:
        """Where and how this model runs, as answers report it (fixed for the model's life)."""
        return {"arch": cpu.arch(), "cpu_features": cpu.describe()["features"], "provider": self.provider,
                "artifact": self.artifact, "artifact_kind": self.kind, "threads": self.threads,
                "tuned": self.tuning is not None, "source": self.source}

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the session; onnxruntime's failure becomes an `InferenceError` (500)."""
        names = outputs or list(self.output_shapes)
        peak = memories.Peak() if self.measure_first else contextlib.nullcontext()
        try:
            with peak:
                values = self.session.run(names, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise InferenceError(f"onnxruntime failed to run the model: {e}") from None
        if self.measure_first:
            self.measure_first = False
            spec = self.manifest.sized_input
            shape = list(feeds[spec.name].shape) if spec.name in feeds else []
            self.memory = memories.fit([{"shape": shape, "peak": peak.bytes}])
        if self.large(feeds):
            import numpy as np
            values = [np.array(v, copy=True) for v in values]  # outputs are views into the arena: they would pin it
            self.release()
        return dict(zip(names, values))

    def cost(self, feeds: dict[str, np.ndarray]) -> int | None:
        """The measured peak memory of one inference on these inputs (None when the cost is unknown)."""
        spec = self.manifest.sized_input
        if self.memory is None or spec.name not in feeds:
            return None
        return self.memory.bytes(int(feeds[spec.name].size))

    def large(self, feeds: dict[str, np.ndarray]) -> bool:
        """Whether a run on these inputs grows the process enough to give the memory back after it: a model whose
        cost grows with its input (a fixed-shape one costs the same on every call) and above `RELEASE_ABOVE`."""
        cost = self.cost(feeds)
        return cost is not None and self.memory.per_element > 0 and cost > RELEASE_ABOVE

    def release(self) -> None:
        """Give back the memory the last runs grew: a run on the smallest zeros the inputs take, under run options
        that free the arena's unused chunks when it ends, then glibc's free heap pages. After a 2048x2048 U-Net
        call it brings RSS from 1,129 MB back to 57 MB in 0.1-0.2 s (bench/memory.py). Only outputs still held
        keep their chunks. A failing release is no call's failure."""
        feeds = zeros(self.manifest.inputs)
        try:
            self.session.run(None, feeds, sessions.release_options())
        except Exception:  # onnxruntime's own types: zeros this model refuses; the memory stays, the call is fine
            pass
        memories.trim()
        self.releases += 1

    def warm_up(self) -> None:
        """One run on the bundle's example inputs (example.npz), else on zeros: the first run's costs are paid,
        and the artifact is known to run here. It is also the probe that tells a bad input from an artifact
        this CPU cannot run (`Runner.recheck`), so it must be an input the model takes: zeros are not, for
        inputs that carry sizes, axes or indices. A damaged example is a `BundleError`."""
        feeds, self.warmed_on = self.warm_feeds
        self.run(feeds)
        self.checked = True


def warm_up_feeds(bundle: Bundle) -> tuple[dict[str, np.ndarray], str]:
    """The inputs a warm-up runs on and what they are: the bundle's example ("example"), else zeros ("zeros")."""
    arrays = bundle.example()
    if arrays is None:
        return zeros(bundle.manifest.inputs), "zeros"
    return {name: a.astype(object) if a.dtype.kind in "US" else a for name, a in arrays.items()}, "example"


def zeros(inputs) -> dict[str, np.ndarray]:
    """A zero tensor for each input (`example`), by input name."""
    return {spec.name: example(spec) for spec in inputs}


def example(spec: InputSpec) -> np.ndarray:
    """A zero tensor the input accepts (dynamic sizes from the image spec, else small)."""
    import numpy as np  # not at import: the load starts before numpy is imported
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            shape.append(dim)
            continue
        letter = spec.layout[axis] if spec.layout else "N"
        size = spec.image.size if spec.image else None
        if letter in "HW":
            m = spec.image.pad_multiple if spec.image else 1
            shape.append(size["HW".index(letter)] if size else max(32, 2 * m) // m * m)
        else:
            shape.append(1)
    if spec.dtype == "string":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)
