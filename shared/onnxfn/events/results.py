"""Results beside the objects events name: the answer (`<key>.json`, and `<key>.mask.png` for
segmentation; with ONNXFN_RESULT_FORMATS=json,dicom, a DICOM input's SEG `<key>.seg.dcm` or SR
`<key>.sr.dcm`; for a tensor bundle taking images, its OIP outputs in `<key>.json`, and in `<key>.npz` when
the JSON would be over `TENSOR_JSON_LIMIT`) or an error record (`<key>.error.json`), written idempotently:

- every write is conditional (If-None-Match: *); only when a result exists already is it looked at;
- a result records the source ETag and the model's sha256 (object metadata): a replay for the same
  object version and model writes nothing; a new object version or model version first copies the
  previous result to `<key>.<etag8>-<sha8>.json` (and `.mask.png`, `.seg.dcm`...), then replaces it with If-Match,
  so nothing is silently destroyed;
- keys are data: each key segment is kept, `%` becomes `%25`, and empty, `.` and `..` segments are
  percent-encoded, so results land inside the output prefix and nowhere else; keys too long for a
  result name are replaced by their sha256 under `_long/`.
"""
from __future__ import annotations

import base64
import hashlib
import json

from onnxfn.errors import OnnxfnError, ObjectMissing, PreconditionFailed
from onnxfn.events.envelopes import ObjectRef
from onnxfn.storage.retry import retrying
from onnxfn.storage.s3 import S3Store
from onnxfn.storage.store import Stat

DICOM_SUFFIXES = (".seg.dcm", ".sr.dcm")
RESULT_SUFFIXES = (".json", ".mask.png", ".npz") + DICOM_SUFFIXES
#: a tensor answer whose JSON would be larger than this (bytes) has its outputs written to `<key>.npz`
#: (one array per output name) and the JSON keeps their names, datatypes and shapes, not their data
TENSOR_JSON_LIMIT = 1 << 20
DEFAULT_PREFIX = "results/"
MAX_KEY = 1024


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


class Results:
    """Writes one event's results to the output store; storage calls retry transient faults with backoff
    until `deadline` (time.monotonic())."""

    def __init__(self, output: S3Store, deadline: float):
        self.output, self.deadline = output, deadline

    def answer(self, ref: ObjectRef, answer: dict, tag: dict, dicom=None, dicom_skipped: str = "") -> tuple[str, ...]:
        """Write an object's answer (its mask and DICOM result (`dicom_result.Encoded`) first, the JSON last:
        its presence means the result is complete; the JSON names the DICOM object, or says why there is
        none when `dicom_skipped`); the names actually written (none for a replay)."""
        answer = {**answer, "source": {"bucket": ref.bucket, "key": ref.key, "etag": tag["source-etag"]},
                  "model": {**answer["model"], "sha256": tag["model-sha256"]}}
        files = []
        mask = answer.get("result", {}).get("mask")
        if mask is not None:
            png = base64.b64decode(mask.pop("data"))
            mask["key"] = self.output.prefix + result_name(ref.key, ".mask.png")
            files.append((result_name(ref.key, ".mask.png"), png, "image/png"))
        if dicom is not None:
            name = result_name(ref.key, dicom.suffix)
            answer["dicom"] = {"key": self.output.prefix + name, "media_type": dicom.media_type}
            files.append((name, dicom.data, dicom.media_type))
        elif dicom_skipped:
            answer["dicom"] = {"skipped": dicom_skipped}
        document = _compact(answer)
        outputs = answer.get("result", {}).get("outputs")
        if outputs is not None and len(document) > TENSOR_JSON_LIMIT:
            name = result_name(ref.key, ".npz")
            files.append((name, outputs_npz(outputs), "application/octet-stream"))
            answer["result"] = {"outputs": [{k: v for k, v in o.items() if k != "data"} for o in outputs],
                                "npz": {"key": self.output.prefix + name, "json_bytes": len(document)}}
            document = _compact(answer)
        files.append((result_name(ref.key, ".json"), document, "application/json"))
        return tuple(self.output.prefix + name for name, data, ctype in files if self._put(name, data, ctype, tag))

    def error(self, ref: ObjectRef, error: OnnxfnError, tag: dict) -> str | None:
        """Record why an object could not be answered (a poison object); its name, or None when the same
        object version and model already recorded it."""
        body = error.body(source={"bucket": ref.bucket, "key": ref.key, "etag": tag["source-etag"]},
                          model_sha256=tag["model-sha256"])
        name = result_name(ref.key, ".error.json")
        if not self._put(name, _compact(body), "application/json", tag):
            return None
        return self.output.prefix + name

    def _put(self, name: str, data: bytes, ctype: str, tag: dict) -> bool:
        """Write one result object; False when the same object version and model already wrote it."""
        try:
            self._retry(lambda: self.output.put(name, data, ctype, tag, if_none_match=True), name)
            return True
        except PreconditionFailed:  # a result exists: a replay, a new version, or a concurrent delivery
            previous = self._stat(name)
            if previous is None:
                return False
        if _same(previous.metadata, tag):
            return False
        old = f"{previous.metadata.get('source-etag', 'unknown')[:8]}-{previous.metadata.get('model-sha256', 'x')[:8]}"
        suffix = next(s for s in RESULT_SUFFIXES if name.endswith(s))  # none ends with another
        archive = f"{name[: -len(suffix)]}.{old}{suffix}"
        self._retry(lambda: self.output.copy(name, archive), archive)
        try:
            self._retry(lambda: self.output.put(name, data, ctype, tag, if_match=previous.version), name)
        except PreconditionFailed:
            pass  # a newer write won; ours is superseded
        return True

    def _stat(self, name: str) -> Stat | None:
        try:
            return self._retry(lambda: self.output.stat(name), name)
        except ObjectMissing:
            return None

    def _retry(self, action, what: str):
        return retrying(action, self.deadline, what)


def _same(metadata: dict, tag: dict) -> bool:
    return metadata.get("source-etag") == tag["source-etag"] and metadata.get("model-sha256") == tag["model-sha256"]


def _compact(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def outputs_npz(outputs: list[dict]) -> bytes:
    """OIP JSON outputs (name, datatype, shape, data) as the bytes of an .npz holding one array per output name."""
    import io
    import numpy as np
    from onnxfn.codecs.tensor import OIP_TO_NUMPY
    arrays = {}
    for o in outputs:
        dtype = OIP_TO_NUMPY.get(o["datatype"], "string")
        arrays[o["name"]] = np.asarray(o["data"], dtype=str if dtype == "string" else dtype).reshape(o["shape"])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
