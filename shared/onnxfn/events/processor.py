"""Object Storage events -> stored results. Each object an event names is read from its
bucket, run through the model's task, and answered beside it:

    <output prefix><key>.json         the same answer a direct call gives, plus the source key,
                                      its ETag and the model's sha256
    <output prefix><key>.mask.png     segmentation masks
    <output prefix><key>.error.json   an object that cannot be decoded or inferred (poison)

Rules:
- Idempotent: a result records the source ETag and the model's sha256 (object metadata). Results
  are written with If-None-Match: *; only when one exists already is it looked at: a replay for
  the same object version and model writes nothing (the model runs again, storage is not
  touched). A new object version or model version writes a new result; the previous one is
  first copied to `<key>.<etag8>-<sha8>.json` (and `.mask.png`), then replaced with If-Match, so
  nothing is silently destroyed.
- Loop-safe: delete events, objects under the output prefix, result-like names and objects
  that are not input types are skipped with a logged reason.
- Failures: a poison object gets `.error.json` and the invocation succeeds (the platform must
  not retry it forever); a storage fault fails the invocation so the platform retries.
- Keys are data: each key segment is kept, `%` becomes `%25`, and empty, `.` and `..`
  segments are percent-encoded, so results land inside the output prefix and nowhere else;
  keys too long for a result name are replaced by their sha256 under `_long/`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass

from onnxfn import logs
from onnxfn.events import envelopes as ev
from onnxfn.storage.retry import retrying
from onnxfn.errors import BadRequest, InferenceError, ObjectMissing, OnnxfnError, PreconditionFailed
from onnxfn.settings import Settings
from onnxfn.bundles.source import store_for
from onnxfn.storage.s3 import S3Store
from onnxfn.storage.store import Stat

log = logging.getLogger("onnxfn")
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
RESULT_SUFFIXES = (".json", ".mask.png")
DEFAULT_PREFIX = "results/"
MAX_KEY = 1024


@dataclass
class Outcome:
    bucket: str
    key: str
    outcome: str            # written, skipped, failed
    reason: str = ""
    outputs: tuple[str, ...] = ()
    ms: dict | None = None

    def to_dict(self) -> dict:
        out = {"bucket": self.bucket, "key": self.key, "outcome": self.outcome}
        if self.reason:
            out["reason"] = self.reason
        if self.outputs:
            out["outputs"] = list(self.outputs)
        if self.ms:
            out["timings_ms"] = self.ms
        return out


def result_name(key: str, suffix: str) -> str:
    """The output name for a source key (without the output prefix)."""
    segments = []
    for segment in key.split("/"):
        segment = segment.replace("%", "%25")
        if segment in ("", ".", ".."):
            segment = {"": "%00", ".": "%2E", "..": "%2E%2E"}[segment]
        segments.append(segment)
    name = "/".join(segments) + suffix
    if len(name.encode()) > MAX_KEY - 200:  # leave room for the prefix and archive suffixes
        name = "_long/" + hashlib.sha256(key.encode()).hexdigest() + suffix
    return name


class Processor:
    def __init__(self, service, settings: Settings):
        self.service, self.settings = service, settings

    def handle(self, document, deadline: float | None) -> dict:
        refs = ev.parse(document)  # malformed envelopes fail here: nothing is written
        model, _ = self.service.model(deadline=deadline)
        margin = self.settings.deadline_margin_ms / 1000
        self._deadline = (deadline - margin) if deadline is not None else time.monotonic() + 60
        results = [self._one(ref, model, deadline) for ref in refs]
        summary = {o: sum(r.outcome == o for r in results) for o in ("written", "skipped", "failed")}
        return {"objects": [r.to_dict() for r in results], **summary,
                "model": {"name": model.manifest.name, "version": model.manifest.version,
                          "sha256": model.manifest.portable.sha256}}

    # -- one object ----------------------------------------------------------------------------
    def _one(self, ref: ev.ObjectRef, model, deadline) -> Outcome:
        source, output = self._stores(ref)
        skip = self._skip_reason(ref, source, output)
        if skip:
            logs.event(log, "event_object_skipped", bucket=ref.bucket, key_bytes=len(ref.key.encode()), reason=skip)
            return Outcome(ref.bucket, ref.key, "skipped", skip)
        started = time.perf_counter()
        ms = {}
        sha = model.manifest.portable.sha256
        refused = {"source-etag": (ref.etag or "").strip('"'), "model-sha256": sha}
        if ref.source == "s3" and ref.size is not None and ref.etag:
            head = Stat(ref.size, ref.etag)  # an S3 notification carries size and ETag: no HEAD needed
        else:
            try:
                head = self._retry(lambda: source.stat(ref.key), "the object's HEAD")
            except ObjectMissing:
                return Outcome(ref.bucket, ref.key, "skipped", "the object no longer exists")
            except OnnxfnError as e:
                return self._refused(ref, output, refused, e)
        tag = {"source-etag": (head.version or ref.etag or "").strip('"'), "model-sha256": sha}
        limit = self.settings.max_body_bytes
        if head.size is not None and head.size > limit:
            return self._poison(ref, output, tag, f"the object is {head.size:,} bytes, over the input limit of "
                                                  f"{limit:,} (ONNXFN_MAX_BODY_BYTES); it was not downloaded", 413)
        ms["head"] = _since(started)
        t = time.perf_counter()
        try:
            data, version = self._retry(lambda: source.read(ref.key, limit), "the object")
        except ObjectMissing:
            return Outcome(ref.bucket, ref.key, "skipped", "the object no longer exists")
        except OnnxfnError as e:
            return self._refused(ref, output, tag, e)
        if version:  # what was read is what the result describes
            tag["source-etag"] = version.strip('"')
        ms["fetch"] = _since(t)
        try:
            answer = self.service.predict(data, _content_type(ref.key), deadline)
        except OnnxfnError as e:
            if e.status >= 500 and not isinstance(e, InferenceError):
                raise  # storage, the model or the configuration, not the object: fail the invocation
            return self._poison(ref, output, tag, e.message, e.status, e.code)
        for step in ("decode", "preprocess", "inference", "postprocess"):
            ms[step] = answer["timings_ms"].get(step, 0.0)
        t = time.perf_counter()
        outputs = self._write(ref, output, answer, tag)
        ms["write"] = _since(t)
        ms["total"] = _since(started)
        if not outputs:
            return Outcome(ref.bucket, ref.key, "skipped", "already processed (same object version and model)",
                           (), ms)
        return Outcome(ref.bucket, ref.key, "written", "", outputs, ms)

    def _write(self, ref, output: S3Store, answer: dict, tag: dict) -> tuple[str, ...]:
        """Write the result files (conditionally: a replay writes nothing); the names actually written."""
        answer = {**answer, "source": {"bucket": ref.bucket, "key": ref.key, "etag": tag["source-etag"]},
                  "model": {**answer["model"], "sha256": tag["model-sha256"]}}
        files = []
        mask = answer.get("result", {}).get("mask")
        if mask is not None:
            png = base64.b64decode(mask.pop("data"))
            mask["key"] = output.prefix + result_name(ref.key, ".mask.png")
            files.append((result_name(ref.key, ".mask.png"), png, "image/png"))
        files.append((result_name(ref.key, ".json"), _compact(answer), "application/json"))
        written = []
        for name, data, ctype in files:  # the JSON last: its presence means the result is complete
            if self._put(output, name, data, ctype, tag):
                written.append(output.prefix + name)
        return tuple(written)

    def _refused(self, ref, output: S3Store, tag: dict, error: OnnxfnError) -> Outcome:
        """Storage refused this key (it rejects some names): a poison object. Storage down or refusing the
        credentials fails the invocation instead."""
        if error.code != "storage_error":
            raise error
        return self._poison(ref, output, tag, f"object storage refused to read this key: {error.message}", 400,
                            "storage_rejected")

    def _poison(self, ref, output: S3Store, tag: dict, message: str, status: int, code: str = "") -> Outcome:
        body = {"error": message, "status": status, "code": code or "refused",
                "source": {"bucket": ref.bucket, "key": ref.key, "etag": tag["source-etag"]},
                "model_sha256": tag["model-sha256"]}
        name = result_name(ref.key, ".error.json")
        if not self._put(output, name, _compact(body), "application/json", tag):
            return Outcome(ref.bucket, ref.key, "skipped", "already processed (recorded as failed for this object "
                                                           "version and model)")
        logs.event(log, "event_object_failed", bucket=ref.bucket, code=body["code"], status=status)
        return Outcome(ref.bucket, ref.key, "failed", message, (output.prefix + name,))

    def _put(self, output: S3Store, name: str, data: bytes, ctype: str, tag: dict) -> bool:
        """Write one result object; False when the same object version and model already wrote it.
        The write is conditional (If-None-Match: *): only when it exists already is it looked at."""
        try:
            self._retry(lambda: output.put(name, data, ctype, tag, if_none_match=True), name)
            return True
        except PreconditionFailed:  # a result exists: a replay, a new version, or a concurrent delivery
            previous = self._stat(output, name)
            if previous is None:
                return False
        if _same(previous.metadata, tag):
            return False
        old = f"{previous.metadata.get('source-etag', 'unknown')[:8]}-{previous.metadata.get('model-sha256', 'x')[:8]}"
        archive = f"{name[: -len('.mask.png')]}.{old}.mask.png" if name.endswith(".mask.png") else \
            f"{name[: -len('.json')]}.{old}.json"
        self._retry(lambda: output.copy(name, archive), archive)
        try:
            self._retry(lambda: output.put(name, data, ctype, tag, if_match=previous.version), name)
        except PreconditionFailed:
            pass  # a newer write won; ours is superseded
        return True

    def _stat(self, store: S3Store, name: str):
        try:
            return self._retry(lambda: store.stat(name), name)
        except ObjectMissing:
            return None

    def _retry(self, action, what: str):
        """Storage calls retry transient faults with backoff within the call's deadline."""
        return retrying(action, self._deadline, what)

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
            return "the object's name is a result's (.json, .mask.png), not an input"
        name = lowered.rsplit("/", 1)[-1]
        if "." in name and not lowered.endswith(INPUT_SUFFIXES):
            return f"not an input type ({name.rsplit('.', 1)[-1]}); inputs are {', '.join(INPUT_SUFFIXES)} " \
                   "or names without an extension (DICOM)"
        return ""


def _same(metadata: dict, tag: dict) -> bool:
    return metadata.get("source-etag") == tag["source-etag"] and metadata.get("model-sha256") == tag["model-sha256"]


def _compact(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


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
