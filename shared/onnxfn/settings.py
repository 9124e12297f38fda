"""One typed settings object, read once from the environment (Fn function and
application configuration arrive as environment variables)."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from onnxfn.errors import ConfigError

#: The demo bundle shipped with the repository: the embedded default model.
DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "digits-cnn"


@dataclass(frozen=True)
class Settings:
    """Every setting of the function, each field documented with the variable that sets it
    (docs/configuration.md is generated from these docstrings)."""
    model_uri: str = str(DEMO_MODEL)
    """MODEL_URI: the model bundle: a folder, file://, s3://bucket/prefix/, oci://bucket@namespace/prefix/ or a
    pre-authenticated (PAR) https:// URL ending in /. The default is the demo bundle models/digits-cnn."""
    model_sha256: str = ""
    """MODEL_SHA256: pins the bundle: the sha256 of its manifest.json (which pins every artifact). A pinned
    bundle is never revalidated, and a bundle that does not match is refused."""
    baked_bundle: str = "/function/bundle"
    """ONNXFN_BAKED_BUNDLE: a bundle folder inside the function image, used first when present and never
    revalidated (with MODEL_SHA256 set, one that does not match is ignored and MODEL_URI is used)."""
    cache_dir: str = "/tmp/onnxfn"
    """ONNXFN_CACHE_DIR: where remote bundles are cached (Oracle Functions: /tmp is the only writable folder)."""
    cache_bytes: int = 0
    """ONNXFN_CACHE_BYTES: cache size cap, least-recently-used artifacts evicted above it; 0 takes 80% of /tmp
    (a quarter of FN_MEMORY on Oracle Functions)."""
    revalidate_seconds: int = 300
    """ONNXFN_REVALIDATE_SECONDS: how often a warm container checks an unpinned bundle for a new version; 0 never."""
    deadline_margin_ms: int = 1000
    """ONNXFN_DEADLINE_MARGIN_MS: a call still waiting for the model answers 503 model_loading this long before
    its Fn-Deadline (the load goes on for the next call)."""
    oci_region: str = ""
    """ONNXFN_OCI_REGION: region of oci:// bundles (default: the resource principal's OCI_RESOURCE_PRINCIPAL_REGION)."""
    oci_endpoint: str = ""
    """ONNXFN_OCI_ENDPOINT: overrides the endpoint of oci:// URIs (dedicated endpoints, tests): the native one,
    https://objectstorage.<region>.oraclecloud.com, with a resource principal; the S3-compatible one,
    https://<namespace>.compat.objectstorage.<region>.oraclecloud.com, with keys."""
    oci_auth: str = "auto"
    """ONNXFN_OCI_AUTH: how oci:// is read and written: resource_principal uses the native Object Storage API
    signed with the function's resource principal (OCI_RESOURCE_PRINCIPAL_* variables, from a dynamic group and
    a policy); keys the S3-compatible API with a customer secret key (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY);
    auto the resource principal when the environment has one and no key pair is set, else keys."""
    s3_client: str = "auto"
    """ONNXFN_S3_CLIENT: how s3:// and oci:// are spoken: auto uses onnxfn's lean SigV4 client for oci:// and
    S3-compatible endpoints with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment, boto3 otherwise;
    boto3 forces boto3; lean forces the lean client."""
    storage_timeout: int = 20
    """ONNXFN_STORAGE_TIMEOUT: seconds a storage request may wait for the server."""
    output_uri: str = ""
    """OUTPUT_URI: where event-triggered results go (s3://bucket/prefix/ or oci://bucket@namespace/prefix/; a
    prefix is required); empty writes them under results/ in the source object's bucket."""
    event_sources: str = ""
    """ONNXFN_EVENT_SOURCES: the buckets (and key prefixes) whose Object Storage events are processed, comma-separated
    oci://bucket@namespace/prefix/ or s3://bucket/prefix/ entries; empty takes OUTPUT_URI's bucket, and without
    OUTPUT_URI an event is refused as a configuration error. Events for any other bucket are refused per object."""
    max_body_bytes: int = 6 * 1024 * 1024
    """ONNXFN_MAX_BODY_BYTES: largest request body or event object accepted, 413 above (Oracle Functions caps
    invoke bodies at 6 MB)."""
    max_pixels: int = 4096 * 4096
    """ONNXFN_MAX_PIXELS: largest image (width x height x frames), checked from the header before decoding,
    413 above."""
    max_response_bytes: int = 6 * 1024 * 1024
    """ONNXFN_MAX_RESPONSE_BYTES: largest answer the function returns; a larger one is refused with 413
    response_too_large before it is built (Oracle Functions returns at most 6 MB)."""
    memory_bytes: int = 0
    """ONNXFN_MEMORY_BYTES: the memory the function may use; 0 reads it from the container's cgroup (v2
    memory.max, v1 memory.limit_in_bytes) or FN_MEMORY (MB). Images whose inference would not fit are tiled
    (when the bundle allows it) or refused with 413 insufficient_memory before they are decoded."""
    result_formats: str = "json"
    """ONNXFN_RESULT_FORMATS: what an event writes beside its object: json (`<key>.json`, and the mask), or
    json,dicom to also write a DICOM SEG (`<key>.seg.dcm`) or SR (`<key>.sr.dcm`) for a single-frame DICOM
    object answered by a segmentation or classification model (other objects get the JSON only)."""
    top_k: int = 5
    """ONNXFN_TOP_K: how many labels a classification answer lists."""
    threads: int = 0
    """ONNXFN_THREADS: intra-op threads; 0 sizes them from the container's CPU quota (cgroup cpu.max,
    affinity)."""
    artifact: str = "auto"
    """ONNXFN_ARTIFACT: auto picks the best artifact this CPU satisfies; portable forces the plain .onnx;
    an artifact's path forces that one (falling back to the portable one if it fails to load)."""
    warmup: bool = True
    """ONNXFN_WARMUP: run one inference on zeros when the session is built, unless the call that started the load
    runs the model right away (its own inference is then the warm-up)."""
    base_path: str = ""
    """ONNXFN_BASE_PATH: the API Gateway deployment's path prefix (e.g. /imaging), removed before routing."""
    log_level: str = "INFO"
    """ONNXFN_LOG_LEVEL: level of onnxfn's own logger (libraries stay at WARNING)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read and validate the settings from `env` (default: the process environment); blank values
        keep the default; a bad value is a `ConfigError` naming the variable."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            name = variable(f.name)
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _convert(name, raw.strip(), f.type)
        settings = cls(**values)
        settings._validate()
        return settings

    def _validate(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_response_bytes", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{variable(name)} must be a positive whole number, got {getattr(self, name)}")
        if self.model_sha256 and not (len(self.model_sha256) == 64 and
                                      all(c in "0123456789abcdef" for c in self.model_sha256)):
            raise ConfigError("MODEL_SHA256 must be the 64 lowercase hex digits of manifest.json's sha256")
        for name in ("cache_bytes", "revalidate_seconds", "deadline_margin_ms", "memory_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{variable(name)} must be 0 or more, got {getattr(self, name)}")
        if self.output_uri:
            scheme, _, rest = self.output_uri.partition("://")
            bucket, _, prefix = rest.partition("/")
            if scheme not in ("s3", "oci") or not bucket:
                raise ConfigError(f"OUTPUT_URI must be s3://bucket/prefix/ or oci://bucket@namespace/prefix/, "
                                  f"got {self.output_uri!r}")
            if not prefix.strip("/"):
                raise ConfigError(f"OUTPUT_URI {self.output_uri!r} names no prefix: results written at a bucket's "
                                  "root look like new inputs and would trigger the function again; add one, "
                                  "e.g. s3://bucket/results/")
        if self.event_sources:
            from onnxfn.events.sources import parse
            parse(self.event_sources)
        formats = self._formats()
        if "json" not in formats or not set(formats) <= {"json", "dicom"}:
            raise ConfigError(f"ONNXFN_RESULT_FORMATS must be json or json,dicom (the JSON is always written: "
                              f"it marks a result complete), got {self.result_formats!r}")
        if self.s3_client not in ("auto", "lean", "boto3"):
            raise ConfigError(f"ONNXFN_S3_CLIENT must be auto, lean or boto3, got {self.s3_client!r}")
        if self.oci_auth.lower() not in ("auto", "resource_principal", "keys"):
            raise ConfigError(f"ONNXFN_OCI_AUTH must be auto, resource_principal or keys, got {self.oci_auth!r}")
        if self.storage_timeout < 1:
            raise ConfigError(f"ONNXFN_STORAGE_TIMEOUT must be a positive number of seconds, got {self.storage_timeout}")
        if self.threads < 0:
            raise ConfigError(f"ONNXFN_THREADS must be 0 (size from the CPU quota) or a positive count, got {self.threads}")
        if self.base_path and (not self.base_path.startswith("/") or self.base_path.endswith("/")):
            raise ConfigError(f"ONNXFN_BASE_PATH must start with / and not end with one, got {self.base_path!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"ONNXFN_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    @property
    def dicom_results(self) -> bool:
        """Whether events write DICOM results beside the JSON (ONNXFN_RESULT_FORMATS=json,dicom)."""
        return "dicom" in self._formats()

    def _formats(self) -> list[str]:
        return [f.strip().lower() for f in self.result_formats.split(",")]


def variable(field_name: str) -> str:
    """The environment variable that sets a field."""
    if field_name in ("model_uri", "model_sha256", "output_uri"):
        return field_name.upper()
    return "ONNXFN_" + field_name.upper()


def _convert(name: str, raw: str, kind: str):
    if kind == "int":
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if kind == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw

