"""Which buckets' events the function processes: `ONNXFN_EVENT_SOURCES`, else the bucket of
`OUTPUT_URI`, else none (an event is then a configuration error naming the variable).

Whoever may invoke the function chooses the bucket, namespace and object an event names; the
allow-list is what keeps the function from reading (and writing results into) any bucket its
credentials reach on anyone's request."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import urlsplit

from onnxfn.errors import ConfigError
from onnxfn.events.envelopes import ObjectRef
from onnxfn.events.names import bucket_problem, namespace_problem

VARIABLE = "ONNXFN_EVENT_SOURCES"
FORMS = "oci://bucket@namespace/prefix/ or s3://bucket/prefix/"


@dataclass(frozen=True)
class Source:
    """One allowed source: a bucket (and for OCI its namespace), and a key prefix ("" for the whole bucket)."""
    scheme: str              # oci or s3
    bucket: str
    namespace: str | None
    prefix: str = ""

    def allows(self, ref: ObjectRef) -> bool:
        """Whether an event's object lies in this source."""
        return (ref.source == self.scheme and ref.bucket == self.bucket and ref.key.startswith(self.prefix)
                and (self.scheme != "oci" or ref.namespace == self.namespace))

    def __str__(self) -> str:
        where = f"{self.bucket}@{self.namespace}" if self.scheme == "oci" else self.bucket
        return f"{self.scheme}://{where}/{self.prefix}"


@functools.lru_cache(maxsize=8)
def parse(text: str, variable: str = VARIABLE) -> tuple[Source, ...]:
    """The sources a comma-separated list names; a malformed entry is a `ConfigError` naming `variable`. Parsed
    once per text (settings validation, then every event invocation, ask for the same one)."""
    sources = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        parts = urlsplit(entry)
        scheme = parts.scheme.lower()
        bucket, at, namespace = parts.netloc.partition("@")
        problem = None
        if scheme not in ("oci", "s3") or parts.query or parts.fragment:
            problem = f"must be {FORMS}"
        elif scheme == "oci" and not at:
            problem = "must name the namespace: oci://bucket@namespace/prefix/"
        elif scheme == "s3" and at:
            problem = "names a namespace, which s3:// sources do not have"
        else:
            problem = bucket_problem(bucket, scheme) or (namespace_problem(namespace) if scheme == "oci" else None)
        if problem:
            raise ConfigError(f"{variable} entry {entry!r} {problem}" if problem.startswith("must")
                              else f"{variable} entry {entry!r}: {problem}")
        sources.append(Source(scheme, bucket, namespace if scheme == "oci" else None, parts.path.lstrip("/")))
    return tuple(sources)


def configured(event_sources: str, output_uri: str) -> tuple[Source, ...]:
    """The allow-list in force: `event_sources` when set, else the whole bucket of `output_uri`; neither is a
    `ConfigError` saying what to set."""
    if event_sources.strip():
        return parse(event_sources)
    if output_uri:
        parts = urlsplit(output_uri)
        return parse(f"{parts.scheme}://{parts.netloc}/", "OUTPUT_URI")
    raise ConfigError(f"no event sources are configured: set {VARIABLE} to the buckets (and prefixes) whose "
                      f"events this function processes, e.g. {VARIABLE}=oci://scans@mytenancy/incoming/ "
                      "(or OUTPUT_URI, whose bucket is then the one source)")
