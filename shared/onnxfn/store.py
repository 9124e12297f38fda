"""Where bundles come from. `MODEL_URI` names a bundle; a store reads its files.

    /path/to/bundle, file:///path/to/bundle         a local folder (used in place)
    s3://bucket/prefix/                             S3 API (onnxfn.s3), standard AWS_* variables
    oci://bucket@namespace/prefix/                  Oracle Object Storage, S3-compatible API
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
from urllib.parse import quote, unquote, urlsplit

from .errors import BundleError, ConfigError, ObjectMissing, PreconditionFailed, StorageUnavailable

ACCEPTED = ("a folder path (/function/models/digits), file:///path, s3://bucket/prefix/, "
            "oci://bucket@namespace/prefix/, or an https:// pre-authenticated request URL ending in /")
CHUNK = 1 << 20


@dataclass
class Stat:
    size: int | None
    version: str | None  # ETag, or a local file's size and mtime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Download:
    chunks: Iterator[bytes]
    version: str | None


class Store:
    """A bundle's home: read its files by name (relative to the bundle's prefix)."""
    uri: str
    local: Path | None = None  # a local folder is used in place, not copied

    def stat(self, name: str) -> Stat:
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
        return self.uri.rstrip("/") + "/" + name


def open_store(uri: str, *, oci_region: str = "", oci_endpoint: str = "", timeout: float = 20.0,
               s3_client: str = "auto") -> Store:
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
        return S3Store(uri, parts.netloc, _prefix(parts.path), endpoint=None, timeout=timeout, client=s3_client)
    if scheme == "oci":
        bucket, at, namespace = parts.netloc.partition("@")
        if not (bucket and at and namespace):
            raise ConfigError(f"MODEL_URI {uri!r} must name bucket and namespace: oci://bucket@namespace/prefix/")
        region = oci_region or os.environ.get("OCI_RESOURCE_PRINCIPAL_REGION", "")
        if not region and not oci_endpoint:
            raise ConfigError("an oci:// MODEL_URI needs the region: set ONNXFN_OCI_REGION (e.g. us-phoenix-1); "
                              "on Oracle Functions the resource principal's OCI_RESOURCE_PRINCIPAL_REGION is used")
        endpoint = oci_endpoint or f"https://{namespace}.compat.objectstorage.{region}.oraclecloud.com"
        return S3Store(uri, bucket, _prefix(parts.path), endpoint=endpoint, region=region or None, timeout=timeout,
                       client=s3_client)
    if scheme in ("https", "http"):
        if not parts.path.endswith("/"):
            raise ConfigError(f"MODEL_URI {uri!r} must end with / : a pre-authenticated request URL for the "
                              "bundle's prefix, to which file names are appended")
        return HttpStore(uri, timeout=timeout)
    raise ConfigError(f"MODEL_URI scheme {parts.scheme!r} is not supported in {uri!r}; use {ACCEPTED}")


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
    def __init__(self, root: Path):
        self.uri, self.local = str(root), root

    def stat(self, name: str) -> Stat:
        try:
            st = (self.local / name).stat()
        except FileNotFoundError:
            raise ObjectMissing(f"{self.describe(name)} does not exist") from None
        return Stat(st.st_size, f"{st.st_size}-{st.st_mtime_ns}")

    @contextmanager
    def open(self, name: str):
        try:
            f = open(self.local / name, "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"{self.describe(name)} does not exist") from None
        with f:
            st = os.fstat(f.fileno())
            yield Download(iter(lambda: f.read(CHUNK), b""), f"{st.st_size}-{st.st_mtime_ns}")


# -- S3 and OCI (onnxfn.s3: a lean SigV4 client, or boto3) ----------------------------------------------

class S3Store(Store):
    def __init__(self, uri: str, bucket: str, prefix: str, endpoint: str | None, region: str | None = None,
                 timeout: float = 20.0, client: str = "auto"):
        self.uri, self.bucket, self.prefix = uri, bucket, prefix
        self.endpoint, self.region, self.timeout, self.kind = endpoint, region, timeout, client
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from . import s3
            self._client = s3.client(self.endpoint, self.region, self.timeout, self.kind)
        return self._client

    def stat(self, name: str) -> Stat:
        from .s3 import metadata
        with self._errors(name):
            headers = self.client.head(self.bucket, self.prefix + name)
        length = headers.get("content-length")
        return Stat(int(length) if length else None, headers.get("etag"), metadata(headers))

    def put(self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """Write an object; with if_none_match it must not exist yet, with if_match it must still have that ETag."""
        headers = {"content-type": content_type, **{f"x-amz-meta-{k}": v for k, v in (metadata or {}).items()}}
        if if_none_match:
            headers["if-none-match"] = "*"
        if if_match:
            headers["if-match"] = if_match
        with self._errors(name):
            return self.client.put(self.bucket, self.prefix + name, data, headers).get("etag")

    def copy(self, source: str, target: str) -> None:
        with self._errors(source):
            self.client.copy(self.bucket, self.prefix + source, self.prefix + target)

    @contextmanager
    def open(self, name: str):
        with self._errors(name):
            with self.client.get(self.bucket, self.prefix + name) as (headers, chunks):
                yield Download(chunks, headers.get("etag"))

    @contextmanager
    def _errors(self, name: str):
        from .s3 import S3Error, Unreachable
        where = self.describe(name)
        try:
            yield
        except S3Error as e:
            code, status = e.code, e.status
            if 300 <= status < 400 or code in ("PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed"):
                raise ConfigError(f"object storage redirected the request for {where} ({status} {code}): the bucket "
                                  "is in another region or the endpoint is wrong; set ONNXFN_OCI_REGION, AWS_REGION "
                                  "or the endpoint (ONNXFN_OCI_ENDPOINT, AWS_ENDPOINT_URL_S3)") from None
            if code == "RequestTimeTooSkewed":
                raise ConfigError(f"object storage refused {where}: this machine's clock is too far from the "
                                  "server's (RequestTimeTooSkewed)") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken", "NoCredentials") or status in (401, 403):
                raise ConfigError(f"object storage refused authentication for {where} ({code or status}): check "
                                  "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (on OCI: a customer secret key) "
                                  "and the policy on the bucket", code="storage_auth_failed") from None
            if code in ("NoSuchBucket", "BucketNotFound"):
                raise ObjectMissing(f"bucket {self.bucket!r} does not exist for {where} (on OCI a missing bucket can "
                                    "also mean the credentials may not see it)") from None
            if code in ("NoSuchKey", "NotFound", "404") or status == 404:
                raise ObjectMissing(f"{where} does not exist") from None
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (409, 412):
                raise PreconditionFailed(f"{where} changed or already exists ({code or status})") from None
            if status >= 500 or status == 429 or code in ("SlowDown", "ServiceUnavailable", "InternalError",
                                                           "RequestTimeout"):
                raise StorageUnavailable(f"object storage failed on {where}: {status} {code}; retry later") from None
            raise StorageUnavailable(f"object storage refused {where}: {status} {code} {e.message}",
                                     status=502, code="storage_error") from None
        except Unreachable as e:
            raise StorageUnavailable(f"object storage is unreachable for {where}: {e}; retry later") from None


# -- pre-authenticated request URLs (plain HTTP, no SDK) -----------------------------------------------

class HttpStore(Store):
    def __init__(self, uri: str, timeout: float = 20.0):
        self.uri, self.timeout = uri, timeout

    def _url(self, name: str) -> str:
        return self.uri + quote(name)

    def describe(self, name: str) -> str:
        parts = urlsplit(self.uri)  # never log a PAR token: show host and the tail only
        return f"{parts.scheme}://{parts.netloc}/…/{name}"

    def stat(self, name: str) -> Stat:
        import urllib.request
        with self._errors(name):
            with urllib.request.urlopen(urllib.request.Request(self._url(name), method="HEAD"),
                                        timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                return Stat(int(length) if length else None, response.headers.get("ETag"))

    @contextmanager
    def open(self, name: str):
        import urllib.request
        with self._errors(name):
            with urllib.request.urlopen(self._url(name), timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                yield Download(self._chunks(response, int(length) if length else None, name),
                               response.headers.get("ETag"))

    def _chunks(self, response, length: int | None, name: str) -> Iterator[bytes]:
        """The body in chunks; a body cut short of its Content-Length is a transient failure."""
        received = 0
        for chunk in iter(lambda: response.read(CHUNK), b""):
            received += len(chunk)
            yield chunk
        if length is not None and received != length:
            raise StorageUnavailable(f"the connection closed after {received:,} of {length:,} bytes of "
                                     f"{self.describe(name)}; retry later")

    @contextmanager
    def _errors(self, name: str):
        import http.client
        import urllib.error
        where = self.describe(name)
        try:
            yield
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise ConfigError(f"the pre-authenticated URL was refused for {where} ({e.code}): it may have "
                                  "expired or been revoked; create a new one", code="storage_auth_failed") from None
            if e.code == 404:
                raise ObjectMissing(f"{where} does not exist (404)") from None
            if e.code >= 500 or e.code == 429:
                raise StorageUnavailable(f"object storage answered {e.code} for {where}; retry later") from None
            raise StorageUnavailable(f"object storage answered {e.code} for {where}", status=502,
                                     code="storage_error") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StorageUnavailable(f"object storage is unreachable for {where}: {reason}; retry later") from None
