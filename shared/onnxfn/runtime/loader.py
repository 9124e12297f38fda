"""Loading the container's one model: `load` builds it (the artifact this CPU runs best, verified,
sized to the CPU quota, warmed up); `Runner` holds it for the container's life.

Loading runs once (single flight) in a background thread: a call waits for it until just
before its Fn-Deadline, then answers 503 `model_loading` while the load goes on for the next
call. A failed load caches nothing: the next call starts again. An unpinned bundle is
revalidated in the background every ONNXFN_REVALIDATE_SECONDS and swapped atomically."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from pathlib import Path

from onnxfn import logs
from onnxfn.bundles import bundle as bundles
from onnxfn.bundles.manifest import Artifact, MemoryCost, Tuning
from onnxfn.bundles.source import resolve, store_for
from onnxfn.errors import BundleError, ConfigError, LoadTimeout, OnnxfnError
from onnxfn.runtime import cpu, memory, session as sessions
from onnxfn.runtime.model import Model
from onnxfn.runtime.selection import applies, choose, tuning_for
from onnxfn.settings import Settings
from onnxfn.storage import deadline as storage_deadline

log = logging.getLogger("onnxfn")
#: how long a background revalidation (and the load of a changed bundle) may use storage
REVALIDATION_SECONDS = 300
#: the sizes a bundle without a memory cost is measured at on its first load (runtime/memory.py): two, small
LOAD_SIZES = (64, 128)


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
            path = bundle.fetch(artifact)  # downloaded (remote) and verified, before onnxruntime is imported
            if not engine_ready:
                fetched = time.perf_counter()
                sessions.engine()
                engine_ready = time.perf_counter()
            model = _session(bundle, artifact, path, threads, tuning if applies(tuning, artifact) else None,
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


def _session(bundle: bundles.Bundle, artifact: Artifact, path: Path, threads: int, tuning: Tuning | None,
             source: str, warmup: bool) -> Model:
    started = time.perf_counter()
    spec = bundle.manifest.image_input
    # a fixed-size image model with a packaged memory cost (one measured on the session it will serve)
    fixed = spec is not None and not memory.dynamic(spec) and bundle.manifest.memory is not None
    first = sessions.tiered(artifact, tuning, fixed_shape=fixed)
    session = sessions.create(path, threads, artifact, tuning, first=first)
    sessions.check(bundle.manifest, session)
    model = Model(bundle, session, artifact.path, threads, 0.0,
                  {o.name: list(o.shape) for o in session.get_outputs()}, source)
    model.kind, model.tuning = artifact.kind, tuning
    model.settled = not first
    created = time.perf_counter()
    model.memory = bundle.manifest.memory or _measure(model, warmup)
    measured = time.perf_counter()
    if warmup and not model.warmed:
        try:
            model.warm_up()
            model.warmed = True
        except OnnxfnError as e:
            raise BundleError(f"warm-up inference failed for artifact {artifact.path!r}: {e.message}",
                              code="warmup_failed") from None
    model.phases = {"load_session": _ms(created - started), "load_memory": _ms(measured - created),
                    "load_warmup": _ms(time.perf_counter() - measured)}
    return model


def _measure(model: Model, warmup: bool) -> MemoryCost | None:
    """The cost of a bundle packaged without one, on the fresh session: two small runs on zeros for a model whose
    image height and width are dynamic (6-12 ms for the demo U-Net), else one run on the warm-up's inputs, which
    is then the warm-up too (1-2 ms for digits-cnn); without a warm-up, a fixed-shape model's first call measures
    it (`Model.measure_first`). A model that fails here is left unmeasured (None): the warm-up or the first call
    tells why."""
    spec = model.manifest.sized_input
    if not memory.dynamic(spec) and not warmup:
        model.measure_first = True
        return None
    try:
        feeds, on = model.warm_feeds
        cost = memory.measure(model.session, spec, LOAD_SIZES, feeds)
    except Exception as e:  # onnxruntime's own types, a damaged example
        logs.event(log, "memory_unmeasured", logging.WARNING, error=getattr(e, "message", str(e))[:300])
        return None
    if not memory.dynamic(spec):
        model.warmed, model.warmed_on, model.checked = True, on, True
    return cost


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


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
        """Whether a model is being served (a load has succeeded)."""
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
            began = loading is None or stale
            if began:
                self._begin(deadline, warmup=not inference)
            loading = self._loading
        try:
            return self._wait(loading, budget), True
        except OnnxfnError:
            # a load begun for an earlier call that failed only because that call's time ran out (its last
            # storage request was still stuck on a fault when this call came): this call has time of its own
            if began or loading.budget is None or loading.budget > time.monotonic() or \
                    (budget is not None and budget <= time.monotonic()):
                raise
            with self._lock:
                if self._loading is loading:
                    self._begin(deadline, warmup=not inference)
                loading = self._loading
            return self._wait(loading, budget), True

    @staticmethod
    def _wait(loading: Future, budget: float | None) -> Model:
        """The model `loading` gives, waited for until `budget`; `LoadTimeout` (503) beyond it."""
        try:
            return loading.result(timeout=None if budget is None else max(0.0, budget - time.monotonic()))
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
            budget = self._budget(deadline)
            with storage_deadline.within(budget):  # downloading the next artifact ends with this call
                fresh = load(self.settings, budget, warmup=True,
                             skip=frozenset(model.fallbacks) | {model.artifact}, resolved=(model.bundle, model.source))
            self._swap(model, fresh)
            return fresh

    def settle(self) -> None:
        """After a call: a model whose session was built in its quicker cold-start form (`session.tiered`: a
        pre-optimized fp32 `.ort` used in place, or a fixed-size portable model optimized at the basic level) gets
        the session it serves, built and run once on the warm-up inputs by a background thread while the
        container waits for its next call, then swapped in (DenseNet-121: each run 2 % faster for the `.ort`,
        1.3x for the portable model), once per container.
        Tried once per model, after a first run that measures memory, not while free memory is short; a failure
        keeps the first session (and is logged). Outputs may differ in their last bits after the swap (packed
        weights sum in another order)."""
        model = self._model
        if model is None or model.settled or model.measure_first:  # a first run measuring memory: after it
            return
        with self._lock:
            if model.settled or self._model is not model:
                return
            model.settled = True
        threading.Thread(target=self._settle, args=(model,), daemon=True, name="onnxfn-settle").start()

    def _settle(self, model: Model) -> None:
        started = time.perf_counter()
        try:
            artifact = next(a for a in model.manifest.artifacts if a.path == model.artifact)
            feeds, _ = model.warm_feeds
            limit = memory.limit(self.settings)
            need = 2 * artifact.size + (model.cost(feeds) or 0)  # the weights copied and packed, one run
            if limit is not None and memory.available(limit) < need:
                logs.event(log, "session_not_settled", reason="memory", needed_mb=need >> 20)
                return
            session = sessions.create(model.bundle.fetch(artifact), model.threads, artifact, model.tuning)
            session.run(None, feeds)  # its first run's costs, paid here rather than by a call
            if self._model is not model:  # swapped meanwhile (revalidation, recheck): the new model settles itself
                return
            model.session = session  # calls under way finish on the session they began with
            logs.event(log, "session_settled", artifact=artifact.path, ms=_ms(time.perf_counter() - started))
        except Exception as e:  # onnxruntime's own types, memory: the first session stays, and works
            logs.event(log, "session_not_settled", logging.WARNING, artifact=model.artifact,
                       error=getattr(e, "message", f"{type(e).__name__}: {e}")[:300])

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
        """The load thread. Its retries stop at `budget`, but a download under way is not cut at the deadline
        of the call that began it: that call stops waiting at its deadline (`get`) and the load goes on for the
        next one, so a bundle larger than one call's time still arrives. Each storage request stays bounded by
        the storage timeout (DNS included)."""
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
        until = time.monotonic() + REVALIDATION_SECONDS
        try:
            with storage_deadline.within(until):
                self._recheck_bundle(model, until)
        except OnnxfnError as e:
            logs.event(log, "revalidation_failed", logging.WARNING, error=e.message, code=e.code)
        except Exception as e:  # never let a background check take the process down
            logs.event(log, "revalidation_failed", logging.WARNING, error=f"{type(e).__name__}: {e}")
        finally:
            self._checking = False

    def _recheck_bundle(self, model: Model, until: float) -> None:
        """Compare the bundle's manifest with the one served; load and swap in a changed bundle (by `until`)."""
        store = store_for(self.settings)
        version = store.stat(bundles.MANIFEST).version
        if version is not None and version == model.bundle.version:
            return
        raw, version = store.read(bundles.MANIFEST, 1 << 20)
        if hashlib.sha256(raw).hexdigest() == model.bundle.manifest_sha256:
            model.bundle = dataclasses.replace(model.bundle, version=version)
            return
        fresh = load(self.settings, until)
        if self._swap(model, fresh):
            self.swaps += 1
        logs.event(log, "model_swapped", old=model.bundle.manifest_sha256, new=fresh.bundle.manifest_sha256,
                   version=fresh.manifest.version)
