"""Oracle Object Storage's native REST API, signed with the function's resource principal (`storage.principal`):
the store of `oci://` URIs when a resource principal is present (or ONNXFN_OCI_AUTH=resource_principal).

    HEAD / GET / PUT   {endpoint}/n/{namespace}/b/{bucket}/o/{object}     (object name percent-encoded, / too)

The endpoint is https://objectstorage.<region>.oraclecloud.com (ONNXFN_OCI_ENDPOINT overrides it). Like the
lean S3 client (`storage.sigv4`), this is the standard library's http.client with one kept-alive connection
per thread, every DNS lookup, connect and read bounded by the storage timeout and the call's deadline
(`storage.deadline`). Conditional writes send `if-none-match: *` or `if-match: <etag>`.

`copy` (the events' "copy the previous result aside, then replace it with If-Match") is a GET and a PUT, not
the API's copyObject: copyObject is asynchronous (a 202 and a work request to poll, and another policy
permission to read it), so the archive would not be known to exist when the replace follows; results are
small (a JSON document, a mask PNG), and GET + PUT needs only the object permissions the function has.

Nothing lists objects: neither the bundle cache (it reads manifest.json, which names every file) nor the
events path (an event names its object) does.

A 401 makes the principal read its credentials again (the runtime may have rotated them) and the request is
sent once more when they changed. Errors map as `S3Store`'s do; no token, key or signature is ever in one.
"""
from __future__ import annotations

import http.client
import json
import ssl
import threading
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import quote, urlsplit

from onnxfn.errors import ConfigError, ObjectMissing, PreconditionFailed, StorageUnavailable
from onnxfn.storage.principal import ResourcePrincipal, sign
from onnxfn.storage.s3 import Unreachable
from onnxfn.storage.http import KeptAlive, body_chunks, response_headers
from onnxfn.storage.store import Download, Stat, Store, user_metadata, write_headers

#: The largest object `copy` moves (it reads it whole): results are a JSON document or a mask PNG.
COPY_LIMIT = 64 << 20
AUTH_ADVICE = ("check that the function is in a dynamic group (matching rule ALL {resource.type = 'fnfunc', "
               "resource.compartment.id = '<compartment-ocid>'}) and that a policy lets that dynamic group read "
               "(and, for results, write) objects in this bucket")


def endpoint_for(region: str) -> str:
    """The native Object Storage endpoint of a region."""
    return f"https://objectstorage.{region}.oraclecloud.com"


class ServiceError(Exception):
    """Object Storage answered with an error status; `code` from its JSON body (`{"code": ..., "message": ...}`)."""

    def __init__(self, status: int, code: str, message: str = ""):
        super().__init__(f"{status} {code}".strip())
        self.status, self.code, self.message = status, code, message


class Native(KeptAlive):
    """The native API client for one endpoint, signing with `principal`; `ConfigError` when the endpoint is not an
    http(s) URL."""
    ENDPOINT = "the endpoint (ONNXFN_OCI_ENDPOINT)"

    def __init__(self, endpoint: str, principal: ResourcePrincipal, timeout: float):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the Object Storage endpoint {endpoint!r} must be an http:// or https:// URL "
                              "(ONNXFN_OCI_ENDPOINT)")
        super().__init__(parts.scheme, parts.netloc, timeout)
        self.principal, self.base = principal, parts.path.rstrip("/")

    def path(self, namespace: str, bucket: str, name: str) -> str:
        """The object's path: namespace, bucket and name percent-encoded, `/` included."""
        return f"{self.base}/n/{quote(namespace, safe='')}/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"

    def head(self, namespace: str, bucket: str, name: str) -> dict[str, str]:
        """The object's response headers, lower-cased; an error status raises `ServiceError`."""
        with self._request("HEAD", self.path(namespace, bucket, name)) as (response, _):
            return response_headers(response)

    @contextmanager
    def get(self, namespace: str, bucket: str, name: str) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        """Yield the object's headers and its body in chunks; a body cut short raises `Unreachable`."""
        with self._request("GET", self.path(namespace, bucket, name), stream=True) as (response, sock):
            yield response_headers(response), body_chunks(response, response.length, sock, self.timeout)

    def put(self, namespace: str, bucket: str, name: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """Write `data`; `headers` holds content-type (signed), opc-meta-* and if-match / if-none-match."""
        with self._request("PUT", self.path(namespace, bucket, name), data, headers) as (response, _):
            return response_headers(response)

    # the wire -----------------------------------------------------------------------------------
    @contextmanager
    def _request(self, method: str, path: str, body: bytes = b"", extra: dict[str, str] | None = None,
                 stream: bool = False):
        """One signed request on this thread's connection, yielding the response and its socket. A 401 reads the
        credentials again and, when they changed, sends the request once more."""
        extra = dict(extra or {})
        content_type = extra.pop("content-type", "application/octet-stream")
        if getattr(self._local, "conn", None) is None:
            self._open()  # DNS, connect and TLS while the credentials load (`_prefetch`): the first request's sign waits
        for attempt in (0, 1):
            signed = sign(self.principal.credentials(), method, path, self.host,
                          body if method in ("PUT", "POST") else None, content_type)
            conn, sock, response = self._send(method, path, body, {**extra, **signed})
            try:
                if response.status >= 300:
                    try:
                        raw = response.read()
                    except (OSError, http.client.HTTPException) as e:
                        raise Unreachable(f"{type(e).__name__}: {e}") from None
                    if response.status == 401 and attempt == 0 and self.principal.refresh():
                        continue
                    code, message = _error_fields(raw)
                    raise ServiceError(response.status, code or _STATUS_CODES.get(response.status, ""), message)
                if not stream:
                    try:
                        response.read()
                    except (OSError, http.client.HTTPException) as e:
                        raise Unreachable(f"{type(e).__name__}: {e}") from None
                yield response, sock
                return
            finally:
                if response.will_close or not response.isclosed():
                    response.close()
                    self._forget(conn)

    def _open(self) -> None:
        """Open this thread's connection now, its failures mapped as `_send` maps them."""
        try:
            self._connection()
        except ssl.SSLCertVerificationError as e:
            raise ConfigError(f"the TLS certificate of {self.host} could not be verified ({e.verify_message}): "
                              "check the endpoint (ONNXFN_OCI_ENDPOINT)") from None
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"{type(e).__name__}: {e}") from None

_STATUS_CODES = {400: "InvalidParameter", 401: "NotAuthenticated", 403: "Forbidden", 404: "NotFound",
                 409: "Conflict", 412: "PreconditionFailed", 429: "TooManyRequests", 503: "ServiceUnavailable"}


def _error_fields(body: bytes) -> tuple[str, str]:
    """(code, message) of an error body; empty when it is not Oracle's JSON."""
    try:
        document = json.loads(body[:8192])
    except ValueError:
        return "", ""
    if not isinstance(document, dict):
        return "", ""
    return str(document.get("code") or ""), str(document.get("message") or "")


_clients: dict = {}
_clients_lock = threading.Lock()


def client(endpoint: str, principal: ResourcePrincipal, timeout: float) -> Native:
    """One client per endpoint, principal and timeout, shared by every store and thread."""
    key = (endpoint, id(principal), timeout)
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = Native(endpoint, principal, timeout)
            if principal._current is None:
                threading.Thread(target=_prefetch, args=(principal,), daemon=True, name="onnxfn-oci-credentials").start()
        return found


def _prefetch(principal: ResourcePrincipal) -> None:
    """Load the credentials (cryptography's import, the key's parse: ~15-20 ms) while the first request connects;
    a failure is left for that request to raise."""
    try:
        credentials = principal.credentials()
        sign(credentials, "GET", "/", "prefetch")  # imports the signing modules and verifies the key once
    except Exception:
        pass


def metadata(headers: dict[str, str]) -> dict[str, str]:
    """The user metadata among lower-case headers: opc-meta-<key>: value -> {<key>: value}."""
    return user_metadata(headers, "opc-meta-")


# -- the store ---------------------------------------------------------------------------------------

class OciStore(Store):
    """A bundle (or an event's bucket) under a namespace, bucket and prefix, read and written over the native API
    with the function's resource principal; the client's errors become onnxfn errors as `S3Store`'s do."""

    def __init__(self, uri: str, namespace: str, bucket: str, prefix: str, endpoint: str,
                 principal: ResourcePrincipal, timeout: float = 20.0):
        self.uri, self.namespace, self.bucket, self.prefix = uri, namespace, bucket, prefix
        self.endpoint, self.timeout = endpoint, timeout
        self.client = client(endpoint, principal, timeout)

    def stat(self, name: str) -> Stat:
        """A HEAD's size, ETag and user metadata (the opc-meta-* headers)."""
        with self._errors(name):
            headers = self.client.head(self.namespace, self.bucket, self.prefix + name)
        length = headers.get("content-length")
        return Stat(int(length) if length else None, headers.get("etag"), metadata(headers))

    @contextmanager
    def open(self, name: str):
        """A GET's body in chunks, with its ETag; a connection lost while the body is read is `StorageUnavailable`."""
        with self._errors(name):
            with self.client.get(self.namespace, self.bucket, self.prefix + name) as (headers, chunks):
                yield Download(chunks, headers.get("etag"))

    def put(self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """Write an object; with if_none_match it must not exist yet, with if_match it must still have that ETag."""
        headers = write_headers(content_type, metadata, "opc-meta-", if_none_match=if_none_match, if_match=if_match)
        with self._errors(name):
            return self.client.put(self.namespace, self.bucket, self.prefix + name, data, headers).get("etag")

    def copy(self, source: str, target: str) -> None:
        """Copy `source` to `target` (both under the prefix), content type and metadata kept: a GET then a PUT, done
        when this returns (the API's copyObject is asynchronous)."""
        data = bytearray()
        with self._errors(source):
            with self.client.get(self.namespace, self.bucket, self.prefix + source) as (headers, chunks):
                for chunk in chunks:
                    data += chunk
                    if len(data) > COPY_LIMIT:
                        raise StorageUnavailable(f"{self.describe(source)} is larger than {COPY_LIMIT:,} bytes: "
                                                 "too large to copy aside", status=502, code="storage_error")
        self.put(target, bytes(data), headers.get("content-type", "application/octet-stream"), metadata(headers))

    @contextmanager
    def _errors(self, name: str):
        where = self.describe(name)
        try:
            yield
        except ServiceError as e:
            code, status = e.code, e.status
            if 300 <= status < 400:
                raise ConfigError(f"Object Storage redirected the request for {where} ({status}): the bucket is in "
                                  "another region or the endpoint is wrong; set ONNXFN_OCI_REGION or "
                                  "ONNXFN_OCI_ENDPOINT") from None
            if status in (401, 403) or code in ("NotAuthenticated", "NotAuthorized"):
                raise ConfigError(f"Object Storage refused the function's resource principal authentication for "
                                  f"{where} ({status} {code}): {AUTH_ADVICE}; a 401 also follows an expired token "
                                  f"({_expiry(self.client.principal)}) or a clock far from the server's",
                                  code="storage_auth_failed") from None
            if status == 404 and code in ("BucketNotFound", "NotAuthorizedOrNotFound"):
                raise ObjectMissing(f"bucket {self.bucket!r} in namespace {self.namespace!r} does not exist for "
                                    f"{where}, or the function's resource principal may not see it ({code}): "
                                    f"{AUTH_ADVICE}") from None
            if status == 404:
                raise ObjectMissing(f"{where} does not exist") from None
            if status in (409, 412):
                raise PreconditionFailed(f"{where} changed or already exists ({status} {code})") from None
            if status >= 500 or status == 429:
                raise StorageUnavailable(f"Object Storage failed on {where}: {status} {code}; retry later") from None
            raise StorageUnavailable(f"Object Storage refused {where}: {status} {code} {e.message}".rstrip(),
                                     status=502, code="storage_error") from None
        except Unreachable as e:
            raise StorageUnavailable(f"Object Storage is unreachable for {where}: {e}; retry later") from None


def _expiry(principal: ResourcePrincipal) -> str:
    """When the token in use expires, for messages (the claim, never the token)."""
    current = principal._current
    if current is None or current.expires is None:
        return "its expiry is unknown"
    import datetime as dt
    return "it expires " + dt.datetime.fromtimestamp(current.expires, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
