"""One ONNX Runtime session per container: fetch the bundle (baked into the image, a local
folder, or object storage through the /tmp cache), verify it, size threads from the CPU
quota, warm up, and keep it for the container's life.

Loading runs once (single flight) in a background thread: a call waits for it until just
before its Fn-Deadline, then answers 503 `model_loading` while the load goes on for the next
call. A failed load caches nothing: the next call starts again. An unpinned bundle is
revalidated in the background every ONNXFN_REVALIDATE_SECONDS and swapped atomically."""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import bundle as bundles, cpu, logs
from .cache import Cache, default_size
from .errors import BundleError, ConfigError, InferenceError, LoadTimeout, OnnxfnError
from .manifest import Artifact, InputSpec, Manifest, Tuning
from .settings import Settings
from .store import Store, open_store

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("onnxfn")
#: numpy and onnxruntime are imported by one thread at a time: numpy's C extension fails when two
#: threads import it at once (the load thread imports onnxruntime while the first call imports the core)
IMPORTS = threading.Lock()

ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
             "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
             "tensor(uint64)": "uint64", "tensor(int8)": "int8", "tensor(int16)": "int16",
             "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
             "tensor(string)": "string"}


@dataclass
class Model:
    bundle: bundles.Bundle
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
    warmed: bool = False              # a run on zeros was made when the session was built
    checked: bool = False             # the artifact has run once (warm-up or a call): it works on this CPU

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @functools.cached_property
    def runtime(self) -> dict:
        """Where and how this model runs, as answers report it (fixed for the model's life)."""
        return {"arch": cpu.arch(), "cpu_features": cpu.describe()["features"], "provider": self.provider,
                "artifact": self.artifact, "artifact_kind": self.kind, "threads": self.threads,
                "tuned": self.tuning is not None, "source": self.source}

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or list(self.output_shapes)
        try:
            values = self.session.run(names, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise InferenceError(f"onnxruntime failed to run the model: {e}") from None
        return dict(zip(names, values))

    def warm_up(self) -> None:
        """One run on zeros: the first run's costs are paid, and the artifact is known to run here."""
        self.run({spec.name: example(spec) for spec in self.manifest.inputs})
        self.checked = True


def session_options(threads: int, artifact: Artifact | None = None, tuning: Tuning | None = None):
    """Options for one session: explicit threads, no spinning, sequential; a pre-optimized artifact
    is loaded without re-optimizing; a benchmark's tuning for this CPU class applies on top."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = tuning.graph_optimization_level if tuning and tuning.graph_optimization_level else "ALL"
    if artifact is not None and artifact.preoptimized:
        level = "DISABLE"
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
    spinning = "1" if tuning and tuning.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    fp32_ort = artifact is not None and artifact.kind == "optimized" and artifact.path.endswith(".ort")
    if (tuning and tuning.disable_prepacking) or fp32_ort:
        # a memory-mapped fp32 ORT artifact: prepacking off made DenseNet-121's session 0.18x the portable
        # one's to create at the same latency (bench/artifacts.py); int8 kernels need their packed weights
        options.add_session_config_entry("session.disable_prepacking", "1")
    if artifact is not None and artifact.path.endswith(".ort"):  # memory-mapped, weights used in place
        options.add_session_config_entry("session.load_model_format", "ORT")
        options.add_session_config_entry("session.use_memory_mapped_ort_model", "1")
        options.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
    options.log_severity_level = 3
    return options


OPT_LEVELS = {"DISABLE": "ORT_DISABLE_ALL", "BASIC": "ORT_ENABLE_BASIC", "EXTENDED": "ORT_ENABLE_EXTENDED",
              "ALL": "ORT_ENABLE_ALL"}
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
    fitting.sort(key=lambda a: (-KIND_RANK[a.kind], -max((FEATURE_RANK.get(f, 0) for f in a.requires.features),
                                                         default=0), -len(a.requires.features), a.path))
    if tuning is not None and tuning.artifact:
        fitting.sort(key=lambda a: a.path != tuning.artifact)
        if tuning.artifact == portable.path:
            fitting = []
    return fitting + [portable]


def tuning_for(manifest: Manifest, arch: str, features: tuple[str, ...] | None) -> Tuning | None:
    return next((t for t in manifest.tuning if t.requires.satisfied_by(arch, features)), None)


def resolve(settings: Settings, deadline: float, store: Store | None = None) -> tuple[bundles.Bundle, str]:
    """The bundle to serve, and where it came from: a bundle baked into the image first, then
    MODEL_URI (a local folder in place, or a remote one through the cache). All verified."""
    pin = settings.model_sha256 or None
    baked = Path(settings.baked_bundle) if settings.baked_bundle else None
    if baked is not None and (baked / bundles.MANIFEST).is_file():
        bundle = bundles.load(baked, eager=False)  # the artifact served is verified before its session
        if pin is None or bundle.manifest_sha256 == pin:
            return bundle, "baked"
        logs.event(log, "baked_bundle_ignored", logging.WARNING, path=str(baked), reason="does not match MODEL_SHA256")
    store = store or store_for(settings)
    if store.local is not None:
        bundle = bundles.load(store.local, eager=False)  # the artifact served is verified before its session
        if pin and bundle.manifest_sha256 != pin:
            raise BundleError(f"{store.describe(bundles.MANIFEST)} has sha256 {bundle.manifest_sha256} but "
                              f"MODEL_SHA256 pins {pin}", code="pin_mismatch")
        return bundle, "local"
    root = Path(settings.cache_dir)
    cache = Cache(root, settings.cache_bytes or default_size(root))
    return cache.bundle(store, pin, deadline), "remote"


def store_for(settings: Settings, uri: str | None = None) -> Store:
    """The store of `uri` (default MODEL_URI), opened with the settings' storage options."""
    return open_store(uri or settings.model_uri, oci_region=settings.oci_region, oci_endpoint=settings.oci_endpoint,
                      timeout=settings.storage_timeout, s3_client=settings.s3_client)


def load(settings: Settings, deadline: float | None = None, warmup: bool = True,
         skip: frozenset[str] = frozenset(), resolved: tuple[bundles.Bundle, str] | None = None) -> Model:
    """Load, verify and warm up the bundle the settings name; storage retries stop at `deadline`
    (time.monotonic()). The artifact to serve is fetched and verified before onnxruntime is imported.
    With warmup false (a call waits to run the first inference itself) no run on zeros is made: that
    call's inference checks the artifact (`Runner.recheck`). Artifacts in `skip` failed to run; `resolved`
    is a bundle already in hand (and where it came from)."""
    started = time.perf_counter()
    bundle, source = resolved or resolve(settings, deadline if deadline is not None else time.monotonic() + 300)
    manifest = bundle.manifest
    arch, features = cpu.arch(), cpu.features()
    tuning = tuning_for(manifest, arch, features) if settings.artifact != "portable" else None
    threads = settings.threads or cpu.threads()
    if tuning is not None and tuning.intra_op_threads and not settings.threads:
        threads = min(tuning.intra_op_threads, threads)  # never more than this container's quota
    order = [a for a in choose(manifest, arch, features, tuning, settings.artifact) if a.path not in skip]
    if skip and not order:
        raise BundleError(f"no artifact of the bundle runs on this CPU: {', '.join(sorted(skip))} failed",
                          code="artifacts_failed")
    if not order or (settings.artifact not in ("auto", "portable", "") and order[0].path != settings.artifact):
        raise ConfigError(f"ONNXFN_ARTIFACT names {settings.artifact!r}, which the bundle does not have; its "
                          f"artifacts are {', '.join(a.path for a in manifest.artifacts)}")
    fetched = engine_ready = 0.0
    failures: list[tuple[Artifact, BundleError]] = []
    for artifact in order:
        try:
            path = bundle.path(artifact)  # fetched (remote) and verified, before onnxruntime is imported
            if not engine_ready:
                fetched = time.perf_counter()
                with IMPORTS:
                    import onnxruntime  # noqa: F401
                engine_ready = time.perf_counter()
            model = _session(bundle, artifact, path, threads, tuning if _applies(tuning, artifact) else None,
                             source, settings.warmup and warmup)
        except BundleError as e:
            failures.append((artifact, e))
            if artifact is not manifest.portable:
                logs.event(log, "artifact_failed", logging.WARNING, artifact=artifact.path, error=e.message)
            continue
        model.fallbacks = tuple(sorted(skip)) + tuple(a.path for a, _ in failures)
        model.load_ms = (time.perf_counter() - started) * 1000
        model.phases = {"load_fetch": _ms(fetched - started), "load_engine_import": _ms(engine_ready - fetched),
                        **model.phases}
        return model
    if len(failures) == 1:
        raise failures[0][1]
    raise BundleError("no artifact of the bundle could be loaded: " +
                      "; ".join(f"{a.path!r}: {e.message}" for a, e in failures), code="artifacts_failed")


def _applies(tuning: Tuning | None, artifact: Artifact) -> bool:
    return tuning is not None and (tuning.artifact is None or tuning.artifact == artifact.path)


def _session(bundle: bundles.Bundle, artifact: Artifact, path: Path, threads: int, tuning: Tuning | None,
             source: str, warmup: bool) -> Model:
    import onnxruntime as ort
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(str(path),
                                       sess_options=session_options(threads, artifact, tuning),
                                       providers=["CPUExecutionProvider"])
    except Exception as e:
        raise BundleError(f"onnxruntime cannot load artifact {artifact.path!r}: {e}", code="artifact_invalid") from None
    _check(bundle.manifest, session)
    model = Model(bundle, session, artifact.path, threads, 0.0,
                  {o.name: list(o.shape) for o in session.get_outputs()}, source)
    model.kind, model.tuning = artifact.kind, tuning
    created = time.perf_counter()
    if warmup:
        try:
            model.warm_up()
            model.warmed = True
        except OnnxfnError as e:
            raise BundleError(f"warm-up inference failed for artifact {artifact.path!r}: {e.message}",
                              code="warmup_failed") from None
    model.phases = {"load_session": _ms(created - started), "load_warmup": _ms(time.perf_counter() - created)}
    return model


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


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


def _check(manifest: Manifest, session) -> None:
    """The manifest must describe the model it ships with."""
    model_inputs = {i.name: i for i in session.get_inputs()}
    for i, spec in enumerate(manifest.inputs):
        node = model_inputs.get(spec.name)
        where = f"manifest field inputs[{i}]"
        if node is None:
            raise BundleError(f"{where} names input {spec.name!r}, but the model's inputs are "
                              f"{', '.join(map(repr, model_inputs))}", code="manifest_mismatch")
        dtype = ORT_TYPES.get(node.type, node.type)
        if dtype != spec.dtype:
            raise BundleError(f"{where}.dtype is {spec.dtype} but the model's input {spec.name!r} is {dtype}",
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


class Runner:
    """Holds the container's one model: loads it once (single flight), waits for it within a
    call's deadline, and revalidates an unpinned bundle in the background."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._model: Model | None = None
        self._lock = threading.Lock()
        self._loading: Future | None = None
        self._unclaimed = False  # a load start() began that no get() has asked for yet
        self._rechecking = threading.Lock()
        self._checking = False
        self.loads = 0
        self.swaps = 0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def start(self, deadline: float | None = None, inference_waits: bool = False) -> None:
        """Begin loading in the background, if nothing is loaded or loading: the first call starts it
        before the core's heavy imports and its own decoding, which then overlap the fetch. When that
        call will run an inference (`inference_waits`), its inference is the warm-up: a run on zeros
        first would only add its time to the cold call."""
        if self._model is None:
            with self._lock:
                if self._model is None and (self._loading is None or self._loading.done()):
                    self._begin(deadline, warmup=not inference_waits)
                    self._unclaimed = True

    def get(self, deadline: float | None = None, inference: bool = False) -> tuple[Model, bool]:
        """The model, and whether this call found it unloaded (a cold call). `deadline` is the call's
        Fn-Deadline as time.monotonic(); without one the call waits for the load. `inference`: this
        call runs the model next (a load it starts makes no run on zeros)."""
        model = self._model
        if model is not None and not self._unclaimed:
            self._revalidate_if_due(model)
            return model, False
        budget = self._budget(deadline)
        with self._lock:
            # the first call to ask for a load start() began is the cold one, even when the load finished
            # while it decoded; if that load failed, this call gets its error, unless the load merely ran
            # out of the time an earlier call had (then, and for every later call, it is tried again)
            claimed, self._unclaimed = self._unclaimed, False
            if self._model is not None:
                return self._model, claimed
            loading = self._loading
            stale = (loading is not None and loading.done() and
                     (not claimed or (loading.budget is not None and loading.budget <= time.monotonic())))
            if loading is None or stale:
                self._begin(deadline, warmup=not inference)
            loading = self._loading
        try:
            return loading.result(timeout=None if budget is None else max(0.0, budget - time.monotonic())), True
        except FutureTimeout:
            raise LoadTimeout("the model is still loading (cold start) and could not be ready before this call's "
                              "deadline; loading goes on: retry in a few seconds") from None

    def recheck(self, model: Model, deadline: float | None = None) -> Model | None:
        """`model` failed its first inference, which was to be its warm-up. A run on zeros tells the input's
        fault (the artifact works: None) from the artifact's (it cannot run on this CPU: the next artifact
        is loaded from the same bundle, swapped in and returned; the portable one failing is an error). One
        call at a time: a second one finds the replacement made."""
        with self._rechecking:
            if self._model is not model and self._model is not None:
                return self._model
            try:
                model.warm_up()
                return None
            except OnnxfnError as e:
                if model.artifact == model.manifest.portable.path:
                    raise BundleError(f"the portable artifact {model.artifact!r} cannot run: {e.message}",
                                      code="warmup_failed") from None
                logs.event(log, "artifact_failed", logging.WARNING, artifact=model.artifact, error=e.message)
            fresh = load(self.settings, self._budget(deadline), warmup=True,
                         skip=frozenset(model.fallbacks) | {model.artifact}, resolved=(model.bundle, model.source))
            self._swap(model, fresh)
            return fresh

    def _budget(self, deadline: float | None) -> float | None:
        """Until when storage may be retried for a call with this deadline: just before it."""
        return None if deadline is None else deadline - self.settings.deadline_margin_ms / 1000

    def _swap(self, old: Model, fresh: Model) -> bool:
        """Serve `fresh` instead of `old`, unless another swap came first."""
        with self._lock:
            if self._model is not old:
                return False
            self._model = fresh
            return True

    def _begin(self, deadline: float | None, warmup: bool = True) -> None:
        """Start a load (the lock is held); storage retries stop just before `deadline`."""
        budget = self._budget(deadline)
        self._loading = Future()
        self._loading.budget = budget
        self.loads += 1
        threading.Thread(target=self._load, args=(self._loading, budget, warmup), daemon=True,
                         name="onnxfn-load").start()

    def _load(self, future: Future, budget: float | None, warmup: bool = True) -> None:
        try:
            model = load(self.settings, budget, warmup)
        except BaseException as e:  # handed to every waiting call; nothing is kept
            future.set_exception(e)
            return
        with self._lock:
            self._model = model
        future.set_result(model)

    # -- revalidation ------------------------------------------------------------------------------
    def _revalidate_if_due(self, model: Model) -> None:
        ttl = self.settings.revalidate_seconds
        if ttl <= 0 or self.settings.model_sha256 or model.source == "baked":
            return
        if time.monotonic() - model.checked_at < ttl:
            return
        with self._lock:
            if self._checking:
                return
            self._checking = True
            model.checked_at = time.monotonic()
        threading.Thread(target=self._revalidate, args=(model,), daemon=True, name="onnxfn-revalidate").start()

    def _revalidate(self, model: Model) -> None:
        try:
            store = store_for(self.settings)
            version = store.stat(bundles.MANIFEST).version
            if version is not None and version == model.bundle.version:
                return
            raw, version = store.read(bundles.MANIFEST, 1 << 20)
            import hashlib
            if hashlib.sha256(raw).hexdigest() == model.bundle.manifest_sha256:
                model.bundle = dataclasses.replace(model.bundle, version=version)
                return
            fresh = load(self.settings, time.monotonic() + 300)
            if self._swap(model, fresh):
                self.swaps += 1
            logs.event(log, "model_swapped", old=model.bundle.manifest_sha256, new=fresh.bundle.manifest_sha256,
                       version=fresh.manifest.version)
        except OnnxfnError as e:
            logs.event(log, "revalidation_failed", logging.WARNING, error=e.message, code=e.code)
        except Exception as e:  # never let a background check take the process down
            logs.event(log, "revalidation_failed", logging.WARNING, error=f"{type(e).__name__}: {e}")
        finally:
            self._checking = False
