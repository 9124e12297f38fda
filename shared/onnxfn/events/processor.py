"""Object Storage events -> stored results. Each object an event names is read from its bucket,
run through the model's task, and answered beside it (`results.py` writes the answer, the mask or
an error record, idempotently).

Rules:
- Allow-listed and validated: an object's bucket, namespace and name are checked against the
  documented syntax (`names.py`) and the configured sources (`sources.py`) before anything is
  built from them; any other object is refused, nothing read or written, and logged without
  its names.
- DICOM results: with ONNXFN_RESULT_FORMATS=json,dicom a DICOM object's SEG or SR is written beside
  its JSON (objects that cannot have one get the JSON, which says why).
- Loop-safe: delete events, objects under the output prefix, result-like names and objects
  that are not input types are skipped with a logged reason.
- Failures: a poison object gets `.error.json` and the invocation succeeds (the platform must
  not retry it forever); a storage fault fails the invocation so the platform retries.
- Bounded: every storage request (DNS, connect, each read) and every retry of a transient fault
  ends just before the call's deadline.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from onnxfn import logs
from onnxfn.bundles.source import store_for
from onnxfn.errors import BadRequest, InferenceError, ObjectMissing, OnnxfnError, PayloadTooLarge
from onnxfn.events import envelopes as ev, names
from onnxfn.events.results import DEFAULT_PREFIX, RESULT_SUFFIXES, Results
from onnxfn.events.sources import VARIABLE, Source, configured
from onnxfn.service import DICOM_OPTIONAL
from onnxfn.settings import Settings
from onnxfn.storage import deadline as storage_deadline
from onnxfn.storage.retry import retrying
from onnxfn.storage.s3 import S3Store
from onnxfn.storage.store import Stat

log = logging.getLogger("onnxfn")
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


@dataclass
class Outcome:
    """What became of one object: written, skipped or failed, and why."""
    bucket: str | None      # None when the event's name failed validation (never repeated)
    key: str | None
    outcome: str            # written, skipped, failed, refused
    reason: str = ""
    outputs: tuple[str, ...] = ()
    ms: dict | None = None

    def to_dict(self) -> dict:
        """The outcome as the invocation's answer lists it (empty fields left out)."""
        out = {"bucket": self.bucket, "key": self.key, "outcome": self.outcome}
        if self.reason:
            out["reason"] = self.reason
        if self.outputs:
            out["outputs"] = list(self.outputs)
        if self.ms:
            out["timings_ms"] = self.ms
        return out


class Processor:
    """Answers one event invocation: every object it names, in order, within the call's deadline."""

    def __init__(self, service, settings: Settings):
        self.service, self.settings = service, settings

    def handle(self, document, deadline: float | None) -> dict:
        """Process an event envelope; a summary of what became of each object. `deadline` is the call's
        Fn-Deadline as time.monotonic() (None: a minute from now)."""
        refs = ev.parse(document)  # malformed envelopes fail here: nothing is written
        sources = configured(self.settings.event_sources, self.settings.output_uri)
        model, _ = self.service.model(deadline=deadline)
        budget = (deadline - self.settings.deadline_margin_ms / 1000) if deadline is not None \
            else time.monotonic() + 60
        with storage_deadline.within(budget):  # every DNS lookup, connect and read ends by the call's deadline
            results = [self._one(ref, model, deadline, budget, sources) for ref in refs]
        summary = {o: sum(r.outcome == o for r in results) for o in ("written", "skipped", "failed", "refused")}
        return {"objects": [r.to_dict() for r in results], **summary,
                "model": {"name": model.manifest.name, "version": model.manifest.version,
                          "sha256": model.manifest.portable.sha256}}

    # -- one object ----------------------------------------------------------------------------
    def _one(self, ref: ev.ObjectRef, model, deadline: float | None, budget: float,
             sources: tuple[Source, ...]) -> Outcome:
        """One object: refused, skipped, answered (`deadline` bounds its inference, `budget` its storage calls)
        or recorded as failed."""
        refusal = _refusal(ref, sources)
        if refusal:
            reason, message = refusal
            logs.event(log, "event_object_refused", source=ref.source, reason=reason)
            valid = not (names.bucket_problem(ref.bucket, ref.source) or names.key_problem(ref.key))
            return Outcome(ref.bucket if valid else None, ref.key if valid else None, "refused", message)
        source, output = self._stores(ref)
        skip = self._skip_reason(ref, source, output)
        if skip:
            logs.event(log, "event_object_skipped", bucket=ref.bucket, key_bytes=len(ref.key.encode()), reason=skip)
            return Outcome(ref.bucket, ref.key, "skipped", skip)
        results = Results(output, budget)
        started = time.perf_counter()
        ms = {}
        sha = model.manifest.portable.sha256
        refused = {"source-etag": (ref.etag or "").strip('"'), "model-sha256": sha}
        if ref.source == "s3" and ref.size is not None and ref.etag:
            head = Stat(ref.size, ref.etag)  # an S3 notification carries size and ETag: no HEAD needed
        else:
            try:
                head = retrying(lambda: source.stat(ref.key), budget, "the object's HEAD")
            except ObjectMissing:
                return Outcome(ref.bucket, ref.key, "skipped", "the object no longer exists")
            except OnnxfnError as e:
                return self._refused(ref, results, refused, e)
        tag = {"source-etag": (head.version or ref.etag or "").strip('"'), "model-sha256": sha}
        limit = self.settings.max_body_bytes
        if head.size is not None and head.size > limit:
            return self._poison(ref, results, tag, PayloadTooLarge(
                f"the object is {head.size:,} bytes, over the input limit of {limit:,} (ONNXFN_MAX_BODY_BYTES); "
                "it was not downloaded", code="refused"))
        ms["head"] = _since(started)
        t = time.perf_counter()
        try:
            data, version = retrying(lambda: source.read(ref.key, limit), budget, "the object")
        except ObjectMissing:
            return Outcome(ref.bucket, ref.key, "skipped", "the object no longer exists")
        except OnnxfnError as e:
            return self._refused(ref, results, tag, e)
        if version:  # what was read is what the result describes
            tag["source-etag"] = version.strip('"')
        ms["fetch"] = _since(t)
        try:
            answer = self.service.predict(data, _content_type(ref.key), deadline,
                                          dicom=DICOM_OPTIONAL if self.settings.dicom_results else None)
        except OnnxfnError as e:
            if e.status >= 500 and not isinstance(e, InferenceError):
                raise  # storage, the model or the configuration, not the object: fail the invocation
            return self._poison(ref, results, tag, e)
        for step in ("decode", "preprocess", "inference", "postprocess"):
            ms[step] = answer.timings_ms.get(step, 0.0)
        t = time.perf_counter()
        outputs = results.answer(ref, answer.body, tag, answer.dicom, answer.dicom_skipped)
        ms["write"] = _since(t)
        ms["total"] = _since(started)
        if not outputs:
            return Outcome(ref.bucket, ref.key, "skipped", "already processed (same object version and model)",
                           (), ms)
        return Outcome(ref.bucket, ref.key, "written", "", outputs, ms)

    def _refused(self, ref: ev.ObjectRef, results: Results, tag: dict, error: OnnxfnError) -> Outcome:
        """Storage refused this key (it rejects some names): a poison object. Storage down or refusing the
        credentials fails the invocation instead."""
        if error.code != "storage_error":
            raise error
        return self._poison(ref, results, tag, BadRequest(f"object storage refused to read this key: {error.message}",
                                                          code="storage_rejected"))

    def _poison(self, ref: ev.ObjectRef, results: Results, tag: dict, error: OnnxfnError) -> Outcome:
        """An object that cannot be answered: its error record is written and the invocation goes on."""
        name = results.error(ref, error, tag)
        if name is None:
            return Outcome(ref.bucket, ref.key, "skipped", "already processed (recorded as failed for this object "
                                                           "version and model)")
        logs.event(log, "event_object_failed", bucket=ref.bucket, code=error.code, status=error.status)
        return Outcome(ref.bucket, ref.key, "failed", error.message, (name,))

    # -- where ---------------------------------------------------------------------------------
    def _stores(self, ref: ev.ObjectRef) -> tuple[S3Store, S3Store]:
        s = self.settings
        if ref.source == "oci":
            if not ref.namespace:
                raise BadRequest("event field data.additionalDetails.namespace is missing", code="invalid_event")
            uri = f"oci://{ref.bucket}@{ref.namespace}/"
        else:
            uri = f"s3://{ref.bucket}/"
        return store_for(s, uri), store_for(s, s.output_uri or uri + DEFAULT_PREFIX)

    def _skip_reason(self, ref: ev.ObjectRef, source: S3Store, output: S3Store) -> str:
        if ref.action == "deleted":
            return "delete event: nothing to infer"
        if output.bucket == source.bucket and ref.key.startswith(output.prefix):
            return f"the object lies under the output prefix {output.prefix!r} (a result, not an input)"
        lowered = ref.key.lower()
        if lowered.endswith(RESULT_SUFFIXES):
            return "the object's name is a result's (.json, .mask.png, .npz, .seg.dcm, .sr.dcm), not an input"
        name = lowered.rsplit("/", 1)[-1]
        if "." in name and not lowered.endswith(INPUT_SUFFIXES):
            return f"not an input type ({names.shown(name.rsplit('.', 1)[-1])}); inputs are {', '.join(INPUT_SUFFIXES)} " \
                   "or names without an extension (DICOM)"
        return ""


def _refusal(ref: ev.ObjectRef, sources: tuple[Source, ...]) -> tuple[str, str] | None:
    """(reason, message) when the object must not be touched: a name that fails validation, or a bucket and
    prefix outside the allowed sources. Names are quoted only once they have passed validation."""
    problem = ((names.namespace_problem(ref.namespace) if ref.source == "oci" else None)
               or names.bucket_problem(ref.bucket, ref.source) or names.key_problem(ref.key))
    if problem:
        return "invalid_name", problem
    if not any(source.allows(ref) for source in sources):
        where = f"{ref.source}://{ref.bucket}" + (f"@{ref.namespace}" if ref.source == "oci" else "")
        return "not_allowed", (f"{names.shown(where)} (or this key's prefix) is not among the event sources this "
                               f"function processes ({VARIABLE}): nothing was read or written")
    return None


def _content_type(key: str) -> str | None:
    lowered = key.lower()
    for suffixes, ctype in (((".png",), "image/png"), ((".jpg", ".jpeg"), "image/jpeg"),
                            ((".tif", ".tiff"), "image/tiff"), ((".bmp",), "image/bmp"),
                            ((".dcm", ".dicom"), "application/dicom")):
        if lowered.endswith(suffixes):
            return ctype
    return None  # sniffed


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
