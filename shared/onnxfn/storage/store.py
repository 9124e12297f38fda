"""Where bundles come from. `MODEL_URI` names a bundle; a store reads its files.

    /path/to/bundle, file:///path/to/bundle         a local folder (used in place)
    s3://bucket/prefix/                             S3 API (storage.s3), standard AWS_* variables
    oci://bucket@namespace/prefix/                  Oracle Object Storage: the native API with the function's
                                                    resource principal (storage.oci), else the S3-compatible API
                                                    with a customer secret key (ONNXFN_OCI_AUTH chooses)
    https://.../p/<token>/n/<ns>/b/<bucket>/o/<prefix>/   a pre-authenticated request (PAR) URL

Heavy SDKs are imported only by the store that needs them. Every store raises the same
errors: StorageUnavailable (503, transient, retried), ConfigError (credentials refused),
BundleError (bucket or object missing).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

from onnxfn.errors import BundleError, ConfigError, ObjectMissing

ACCEPTED = ("a folder path (/function/models/digits), file:///path, s3://bucket/prefix/, "
            "oci://bucket@namespace/prefix/, or an https:// pre-authenticated request URL ending in /")
CHUNK = 1 << 20


@dataclass
class Stat:
    """One file's size in bytes (None when not told), version and user metadata, learnt without reading it."""
    size: int | None
    version: str | None  # ETag, or a local file's size and mtime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Download:
    """One file being read: its byte chunks (consume them inside the `open` block) and its version."""
    chunks: Iterator[bytes]
    version: str | None


class Store:
    """A bundle's home: read its files by name (relative to the bundle's prefix)."""
    uri: str
    local: Path | None = None  # a local folder is used in place, not copied

    def stat(self, name: str) -> Stat:
        """One file's size, version and metadata without reading it; `ObjectMissing` when it does not exist."""
        raise NotImplementedError

    @contextmanager
    def open(self, name: str) -> Iterator["Download"]:
        """Yield one file's byte chunks and version."""
        raise NotImplementedError
        yield

    def read(self, name: str, limit: int) -> tuple[bytes, str | None]:
        """A small file's bytes and version."""
        data = bytearray()
        with self.open(name) as download:
            for chunk in download.chunks:
                data += chunk
                if len(data) > limit:
                    raise BundleError(f"{self.describe(name)} is larger than {limit:,} bytes", code="too_large")
        return bytes(data), download.version

    def describe(self, name: str) -> str:
        """Where a file is, for messages: the store's URI and the name."""
        return self.uri.rstrip("/") + "/" + name


def user_metadata(headers: dict[str, str], prefix: str) -> dict[str, str]:
    """The user metadata among lower-case answer headers: <prefix><key>: value -> {<key>: value}."""
    return {k[len(prefix):]: v for k, v in headers.items() if k.startswith(prefix)}


def write_headers(content_type: str, metadata: dict[str, str] | None, prefix: str, *, if_none_match: bool = False,
                  if_match: str | None = None) -> dict[str, str]:
    """A write's headers: its content type, the user metadata under `prefix` (x-amz-meta-, opc-meta-), and its
    condition: `If-None-Match: *` (the object must not exist yet) or `If-Match: <etag>` (it must still be that)."""
    headers = {"content-type": content_type, **{f"{prefix}{k}": v for k, v in (metadata or {}).items()}}
    if if_none_match:
        headers["if-none-match"] = "*"
    if if_match:
        headers["if-match"] = if_match
    return headers


def open_store(uri: str, *, oci_region: str = "", oci_endpoint: str = "", timeout: float = 20.0,
               s3_client: str = "auto", oci_auth: str = "auto") -> Store:
    """The store for a MODEL_URI; `ConfigError` for a URI it cannot use, `BundleError` for a local path
    that is not a folder. `oci_auth` chooses how oci:// is read (`oci_identity`)."""
    if not uri or not uri.strip():
        raise ConfigError(f"MODEL_URI is empty: set it to {ACCEPTED}")
    uri = uri.strip()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file" or scheme == "":
        return LocalStore(_local_path(uri, parts))
    if scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"MODEL_URI {uri!r} has no bucket: use s3://bucket/prefix/")
        from onnxfn.storage.s3 import S3Store
        return S3Store(uri, parts.netloc, _prefix(parts.path), endpoint=None, timeout=timeout, client=s3_client)
    if scheme == "oci":
        bucket, at, namespace = parts.netloc.partition("@")
        if not (bucket and at and namespace):
            raise ConfigError(f"MODEL_URI {uri!r} must name bucket and namespace: oci://bucket@namespace/prefix/")
        region = oci_region or os.environ.get("OCI_RESOURCE_PRINCIPAL_REGION", "").strip()
        if oci_identity(oci_auth) == "resource_principal":
            from onnxfn.storage import principal
            from onnxfn.storage.oci import OciStore, endpoint_for
            identity = principal.shared()  # ConfigError naming the variable when it is missing or incomplete
            region = oci_region or identity.region
            if not region and not oci_endpoint:
                raise ConfigError("an oci:// MODEL_URI needs the region: set ONNXFN_OCI_REGION (e.g. us-phoenix-1) or "
                                  "OCI_RESOURCE_PRINCIPAL_REGION")
            return OciStore(uri, namespace, bucket, _prefix(parts.path), oci_endpoint or endpoint_for(region),
                            identity, timeout=timeout)
        if not region and not oci_endpoint:
            raise ConfigError("an oci:// MODEL_URI needs the region: set ONNXFN_OCI_REGION (e.g. us-phoenix-1); "
                              "on Oracle Functions the resource principal's OCI_RESOURCE_PRINCIPAL_REGION is used")
        endpoint = oci_endpoint or f"https://{namespace}.compat.objectstorage.{region}.oraclecloud.com"
        from onnxfn.storage.s3 import S3Store
        return S3Store(uri, bucket, _prefix(parts.path), endpoint=endpoint, region=region or None, timeout=timeout,
                       client=s3_client)
    if scheme in ("https", "http"):
        if not parts.path.endswith("/"):
            raise ConfigError(f"MODEL_URI {uri!r} must end with / : a pre-authenticated request URL for the "
                              "bundle's prefix, to which file names are appended")
        from onnxfn.storage.par import HttpStore
        return HttpStore(uri, timeout=timeout)
    raise ConfigError(f"MODEL_URI scheme {parts.scheme!r} is not supported in {uri!r}; use {ACCEPTED}")


OCI_AUTH = ("auto", "resource_principal", "keys")


def oci_identity(oci_auth: str = "auto") -> str:
    """How oci:// is read: "resource_principal" (the native API, signed with the function's resource principal)
    or "keys" (the S3-compatible API with a customer secret key). auto takes the resource principal when the
    environment has one (OCI_RESOURCE_PRINCIPAL_VERSION) and no customer secret key pair is configured
    (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: keys set on purpose win, so a deployment that has them keeps
    working where Oracle Functions now also provides a resource principal)."""
    mode = (oci_auth or "auto").strip().lower()
    if mode not in OCI_AUTH:
        raise ConfigError(f"ONNXFN_OCI_AUTH must be auto, resource_principal or keys, got {oci_auth!r}")
    if mode != "auto":
        return mode
    keys = os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    rp = (os.environ.get("OCI_RESOURCE_PRINCIPAL_VERSION") or "").strip()
    return "resource_principal" if rp and not keys else "keys"


def _local_path(uri: str, parts) -> Path:
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"MODEL_URI {uri!r} names host {parts.netloc!r}; a file:// URI must be local")
        path = Path(unquote(parts.path))
    else:
        path = Path(uri)
    path = path.expanduser()
    if not path.is_dir():
        what = "is a file, not a bundle folder" if path.exists() else "does not exist"
        raise BundleError(f"model bundle {str(path)!r} (MODEL_URI) {what}: it must be a folder holding manifest.json",
                          code="bundle_not_found")
    return path


def _prefix(path: str) -> str:
    prefix = path.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def locate(uri: str) -> Path:
    """The local folder of a local bundle URI."""
    store = open_store(uri)
    if store.local is None:
        raise ConfigError(f"MODEL_URI {uri!r} is not a local folder")
    return store.local


# -- local ---------------------------------------------------------------------------------------

class LocalStore(Store):
    """A local bundle folder, used in place (`local` is set: nothing is copied into the cache)."""

    def __init__(self, root: Path):
        self.uri, self.local = str(root), root

    def stat(self, name: str) -> Stat:
        """The file's size, and size and mtime (ns) as its version; no metadata."""
        try:
            st = (self.local / name).stat()
        except FileNotFoundError:
            raise ObjectMissing(f"{self.describe(name)} does not exist") from None
        return Stat(st.st_size, f"{st.st_size}-{st.st_mtime_ns}")

    @contextmanager
    def open(self, name: str):
        """The file in CHUNK-sized pieces; its version is size and mtime, as `stat` gives it."""
        try:
            f = open(self.local / name, "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"{self.describe(name)} does not exist") from None
        with f:
            st = os.fstat(f.fileno())
            yield Download(iter(lambda: f.read(CHUNK), b""), f"{st.st_size}-{st.st_mtime_ns}")
