"""Object Storage events, typed: OCI Events envelopes (CloudEvents 0.1) and S3 event
notifications. Properties over the raw payload; decoding (URL-unquoting S3 keys) happens
once, here. `parse` turns any supported envelope into `ObjectRef`s, one per object."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from onnxfn.errors import BadRequest

OCI_PREFIX = "com.oraclecloud.objectstorage."
OCI_TYPES = {OCI_PREFIX + "createobject": "created", OCI_PREFIX + "updateobject": "updated",
             OCI_PREFIX + "deleteobject": "deleted"}


@dataclass(frozen=True)
class ObjectRef:
    """One object an event speaks of."""
    action: str              # created, updated, deleted
    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    namespace: str | None = None
    event_id: str | None = None
    source: str = "oci"      # oci or s3


def _field(data: Any, path: str, kind: type = str):
    """data["a"]["b"], with an error naming the path when it is missing or of the wrong type."""
    value = data
    walked = []
    for part in path.split("."):
        walked.append(part)
        if not isinstance(value, dict) or part not in value or value[part] is None:
            raise BadRequest(f"the event has no field {'.'.join(walked)}", code="invalid_event")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"event field {path} must be {kind.__name__}, got {type(value).__name__}",
                         code="invalid_event")
    return value


def _optional(data: Any, path: str, kind: type = str):
    """data["a"]["b"] when every step is an object and the value is a `kind`, else None: optional fields of any
    shape are ignored, never a crash."""
    try:
        return _field(data, path, kind)
    except BadRequest:
        return None


class OciEvent:
    """An OCI Events envelope (CloudEvents 0.1) for an Object Storage object."""

    def __init__(self, raw: dict):
        self.raw = raw

    @property
    def event_type(self) -> str:
        """The eventType, e.g. com.oraclecloud.objectstorage.createobject; `BadRequest` when absent."""
        return _field(self.raw, "eventType")

    @property
    def event_id(self) -> str | None:
        """The envelope's eventID, or None when absent or not a string."""
        value = self.raw.get("eventID")
        return value if isinstance(value, str) else None

    @property
    def object_name(self) -> str:
        """The object's name (data.resourceName); `BadRequest` when absent."""
        return _field(self.raw, "data.resourceName")

    @property
    def bucket(self) -> str:
        """The bucket's name (data.additionalDetails.bucketName); `BadRequest` when absent."""
        return _field(self.raw, "data.additionalDetails.bucketName")

    @property
    def namespace(self) -> str | None:
        """The Object Storage namespace (data.additionalDetails.namespace), or None."""
        return _optional(self.raw, "data.additionalDetails.namespace")

    @property
    def etag(self) -> str | None:
        """The object's ETag (data.additionalDetails.eTag), or None."""
        return _optional(self.raw, "data.additionalDetails.eTag")

    def objects(self) -> list[ObjectRef]:
        """The one object this envelope names; `BadRequest` for an event type other than an object's
        creation, update or deletion."""
        kind = self.event_type
        if kind not in OCI_TYPES:
            raise BadRequest(f"event type {kind!r} is not an Object Storage object event; expected one of "
                             f"{', '.join(OCI_TYPES)}", code="unknown_event")
        key = self.object_name
        return [ObjectRef(OCI_TYPES[kind], self.bucket, key, self.etag, None, self.namespace, self.event_id, "oci")]


class S3Record:
    """One record of an S3 event notification."""

    def __init__(self, raw: dict, index: int):
        self.raw, self.index = raw, index

    def _get(self, path: str, kind: type = str):
        try:
            return _field(self.raw, path, kind)
        except BadRequest as e:
            raise BadRequest(e.message.replace("field ", f"field Records[{self.index}].", 1),
                             code=e.code) from None

    @property
    def event_name(self) -> str:
        """The record's eventName, e.g. ObjectCreated:Put; `BadRequest` naming Records[i] when absent."""
        return self._get("eventName")

    @property
    def bucket(self) -> str:
        """The bucket's name (s3.bucket.name); `BadRequest` when absent."""
        return self._get("s3.bucket.name")

    @property
    def key(self) -> str:
        """The object key, decoded: S3 URL-encodes keys in notifications, with + for spaces."""
        return unquote_plus(self._get("s3.object.key"))

    @property
    def etag(self) -> str | None:
        """The object's ETag (s3.object.eTag), or None."""
        return _optional(self.raw, "s3.object.eTag")

    @property
    def size(self) -> int | None:
        """The object's size in bytes (s3.object.size), or None."""
        return _optional(self.raw, "s3.object.size", int)

    def object(self) -> ObjectRef:
        """The object this record names: ObjectCreated:* is created, ObjectRemoved:* deleted, any other
        event a `BadRequest`; its event id is the x-amz-request-id."""
        name = self.event_name
        if name.startswith("ObjectCreated:"):
            action = "created"
        elif name.startswith("ObjectRemoved:"):
            action = "deleted"
        else:
            raise BadRequest(f"Records[{self.index}].eventName {name!r} is not an object event; expected "
                             "ObjectCreated:* or ObjectRemoved:*", code="unknown_event")
        return ObjectRef(action, self.bucket, self.key, self.etag, self.size, None,
                         _optional(self.raw, "responseElements.x-amz-request-id"), "s3")


#: The top-level keys that make a JSON document an object storage event envelope.
MARKERS = ("cloudEventsVersion", "eventType", "Records")


def is_event(document: Any) -> bool:
    """Does this JSON document look like an object storage event envelope? The one test of it."""
    return isinstance(document, dict) and any(key in document for key in MARKERS)


def might_be_event(body: bytes) -> bool:
    """A cheap look at a body's first 4 KiB before parsing it (envelopes name their markers first):
    False means the body is not taken for an event."""
    head = body[:4096]
    return any(b'"%s"' % key.encode() in head for key in MARKERS)


def parse(document: Any) -> list[ObjectRef]:
    """Every object an envelope names; errors name the missing field."""
    if not isinstance(document, dict):
        raise BadRequest("an event must be a JSON object", code="invalid_event")
    if "Records" in document:
        records = document["Records"]
        if not isinstance(records, list) or not records:
            raise BadRequest("event field Records must be a non-empty list", code="invalid_event")
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise BadRequest(f"event field Records[{i}] must be an object", code="invalid_event")
        return [S3Record(record, i).object() for i, record in enumerate(records)]
    if "eventType" in document or "cloudEventsVersion" in document:
        return OciEvent(document).objects()
    raise BadRequest("unknown event envelope: expected an OCI Events envelope (eventType, data.resourceName) or an "
                     "S3 notification (Records)", code="unknown_event")
