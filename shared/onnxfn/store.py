"""Where bundles come from. `MODEL_URI` names a bundle; a store reads its files.

    /path/to/bundle, file:///path/to/bundle         a local folder (used in place)
    s3://bucket/prefix/                             boto3, standard AWS_* variables
    oci://bucket@namespace/prefix/                  Oracle Object Storage, S3-compatible API
    https://.../p/<token>/n/<ns>/b/<bucket>/o/<prefix>/   a pre-authenticated request (PAR) URL

Heavy SDKs are imported only by the store that needs them. Every store raises the same
errors: StorageUnavailable (503, transient, retried), ConfigError (credentials refused),
BundleError (bucket or object missing).
"""
from __future__ import annotations

import os
import threading
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


def open_store(uri: str, *, oci_region: str = "", oci_endpoint: str = "", timeout: float = 20.0) -> Store:
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
        return S3Store(uri, parts.netloc, _prefix(parts.path), endpoint=None, timeout=timeout)
    if scheme == "oci":
        bucket, at, namespace = parts.netloc.partition("@")
        if not (bucket and at and namespace):
            raise ConfigError(f"MODEL_URI {uri!r} must name bucket and namespace: oci://bucket@namespace/prefix/")
        region = oci_region or os.environ.get("OCI_RESOURCE_PRINCIPAL_REGION", "")
        if not region and not oci_endpoint:
            raise ConfigError("an oci:// MODEL_URI needs the region: set ONNXFN_OCI_REGION (e.g. us-phoenix-1); "
                              "on Oracle Functions the resource principal's OCI_RESOURCE_PRINCIPAL_REGION is used")
        endpoint = oci_endpoint or f"https://{namespace}.compat.objectstorage.{region}.oraclecloud.com"
        return S3Store(uri, bucket, _prefix(parts.path), endpoint=endpoint, region=region or None, timeout=timeout)
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


# -- S3 and OCI (boto3) ---------------------------------------------------------------------------

class S3Store(Store):
    def __init__(self, uri: str, bucket: str, prefix: str, endpoint: str | None, region: str | None = None,
                 timeout: float = 20.0):
        self.uri, self.bucket, self.prefix = uri, bucket, prefix
        self.endpoint, self.region, self.timeout = endpoint, region, timeout
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.endpoint, self.region, self.timeout)
        return self._client

    def stat(self, name: str) -> Stat:
        with self._errors(name):
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + name)
        return Stat(head.get("ContentLength"), head.get("ETag"), head.get("Metadata") or {})

    def put(self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """Write an object; with if_none_match it must not exist yet, with if_match it must still have that ETag."""
        extra = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match:
            extra["IfMatch"] = if_match
        with self._errors(name):
            response = self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data,
                                              ContentType=content_type, Metadata=metadata or {}, **extra)
        return response.get("ETag")

    def copy(self, source: str, target: str) -> None:
        with self._errors(source):
            self.client.copy_object(Bucket=self.bucket, Key=self.prefix + target,
                                    CopySource={"Bucket": self.bucket, "Key": self.prefix + source},
                                    MetadataDirective="COPY")

    @contextmanager
    def open(self, name: str):
        with self._errors(name):
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
            body = response["Body"]
            try:
                yield Download(body.iter_chunks(CHUNK), response.get("ETag"))
            finally:
                body.close()

    @contextmanager
    def _errors(self, name: str):
        from botocore import exceptions as bx
        where = self.describe(name)
        try:
            yield
        except bx.ClientError as e:
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken", "AuthorizationHeaderMalformed") or status in (401, 403):
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
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                raise StorageUnavailable(f"object storage failed reading {where}: {code or status}; "
                                         "retry later") from None
            raise StorageUnavailable(f"object storage refused {where}: {code or status} {error.get('Message', '')}",
                                     status=502, code="storage_error") from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as e:
            raise ConfigError(f"no usable credentials to read {where} ({e}): set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (on OCI: a customer secret key pair)",
                              code="storage_auth_failed") from None
        except bx.ParamValidationError as e:
            raise ConfigError(f"MODEL_URI names an invalid bucket or key for {where}: {e}") from None
        except (bx.EndpointConnectionError, bx.ConnectionError, bx.ReadTimeoutError, bx.ConnectTimeoutError,
                bx.ResponseStreamingError, bx.IncompleteReadError, bx.BotoCoreError, ConnectionError, TimeoutError,
                OSError) as e:
            raise StorageUnavailable(f"object storage is unreachable reading {where}: {type(e).__name__}: {e}; "
                                     "retry later") from None


_clients: dict = {}
_clients_lock = threading.Lock()


def _client(endpoint: str | None, region: str | None, timeout: float):
    """One boto3 client per endpoint and region, shared: creating one costs about 100 ms."""
    key = (endpoint, region, timeout)
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        import boto3
        from botocore.config import Config
        custom = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(signature_version="s3v4", s3={"addressing_style": "path" if custom else "auto"},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        retries={"max_attempts": 1, "mode": "standard"},  # onnxfn retries within the deadline
                        connect_timeout=min(5.0, timeout), read_timeout=timeout)
        _clients[key] = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region,
                                                       config=config)
        return _clients[key]


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
