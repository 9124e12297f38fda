"""The lean S3 client: AWS SigV4 over the standard library's http.client, one kept-alive connection
per thread, path-style URLs, no checksum headers (what Oracle's S3-compatible API requires).
`storage.s3.client` chooses it for oci:// and S3-compatible endpoints with keys in the environment."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import re
import socket
import ssl
import threading
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import quote, urlsplit

from onnxfn.errors import ConfigError, StorageUnavailable
from onnxfn.storage import deadline
from onnxfn.storage.s3 import S3Error, Unreachable
from onnxfn.storage.store import CHUNK

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    """One TLS context for every connection: loading the CA bundle costs ~50 ms."""
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


class _Bounded(http.client.HTTPConnection):
    """http.client's connection, its DNS lookup and connect bounded together by its timeout."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _bounded_connect


class _BoundedTLS(http.client.HTTPSConnection):
    """The same over TLS: the handshake gets what is left of the timeout."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _bounded_connect


def _bounded_connect(address, timeout, source_address=None):
    return deadline.connect(address[0], address[1], timeout)


def connection(scheme: str, netloc: str, timeout: float) -> http.client.HTTPConnection:
    """An unopened HTTP(S) connection to `netloc` whose DNS lookup, connect and TLS handshake take `timeout`
    seconds at most in all (`deadline.connect`); set its socket's timeout for each read after."""
    if scheme == "https":
        return _BoundedTLS(netloc, timeout=timeout, context=_tls_context())
    return _Bounded(netloc, timeout=timeout)


def wait(limit: float) -> float:
    """`deadline.timeout(limit)`, the call's deadline having come being `Unreachable` (the clients' own error)."""
    try:
        return deadline.timeout(limit)
    except StorageUnavailable as e:
        raise Unreachable(e.message) from None


def _check_credential(name: str, value: str | None) -> str | None:
    """Keys go into headers: refuse control characters, spaces and non-ASCII without repeating the value."""
    if value is None:
        return None
    value = value.strip()
    if not value or any(not (33 <= ord(c) <= 126) for c in value):
        raise ConfigError(f"{name} holds spaces, control or non-ASCII characters (a stray newline?); set it to the "
                          "key alone", code="storage_auth_failed")
    return value


# -- lean: SigV4 on http.client ----------------------------------------------------------------------

class Lean:
    """The lean S3 client for one endpoint and region; `ConfigError` when the endpoint is not an http(s) URL
    or a key holds characters a header cannot carry."""

    def __init__(self, endpoint: str, region: str, access_key: str, secret_key: str, token: str | None,
                 timeout: float):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the S3 endpoint {endpoint!r} must be an http:// or https:// URL")
        self.region, self.timeout = region, timeout
        self.scheme, self.host = parts.scheme, parts.netloc
        self.base = parts.path.rstrip("/")
        self._access = _check_credential("AWS_ACCESS_KEY_ID", access_key)
        self._secret = _check_credential("AWS_SECRET_ACCESS_KEY", secret_key)
        self._token = _check_credential("AWS_SESSION_TOKEN", token)
        self._keys: tuple[str, bytes] | None = None  # (date, signing key)
        self._local = threading.local()

    # the four operations ----------------------------------------------------------------------
    def head(self, bucket: str, key: str) -> dict[str, str]:
        """The object's response headers, lower-cased; an error status raises `S3Error`."""
        with self._request("HEAD", bucket, key) as (response, _):
            return _headers(response)

    @contextmanager
    def get(self, bucket: str, key: str) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        """Yield the object's headers and its body in chunks; a body cut short of its Content-Length
        raises `Unreachable`; each read waits as long as the storage timeout and the call's deadline allow."""
        with self._request("GET", bucket, key, stream=True) as (response, sock):
            # response.length: None when the server gives no Content-Length
            yield _headers(response), _chunks(response, response.length, sock, self.timeout)

    def put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """Write `data` with `headers` (content-type, x-amz-meta-*, conditions) as given; the response's headers."""
        with self._request("PUT", bucket, key, data, headers) as (response, _):
            return _headers(response)

    def copy(self, bucket: str, source: str, target: str) -> None:
        """Copy `source` to `target` within the bucket, server-side, keeping the metadata; a 200 whose body reports
        an error raises `S3Error` (500)."""
        headers = {"x-amz-copy-source": quote(f"/{bucket}/{source}", safe="/~"), "x-amz-metadata-directive": "COPY"}
        with self._request("PUT", bucket, target, b"", headers, stream=True) as (response, sock):
            try:
                sock.settimeout(wait(self.timeout))
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise Unreachable(f"{type(e).__name__}: {e}") from None
        if b"<Error>" in body:  # S3 may answer 200 and report the copy's failure in the body
            raise S3Error(500, *_error_fields(body))

    def url(self, bucket: str, key: str) -> str:
        """The object's path-style URL (key percent-encoded); unsigned."""
        return f"{self.scheme}://{self.host}{self._path(bucket, key)}"

    # the wire -----------------------------------------------------------------------------------
    def _path(self, bucket: str, key: str) -> str:
        return quote(f"{self.base}/{bucket}/{key}", safe="/~")

    @contextmanager
    def _request(self, method: str, bucket: str, key: str, body: bytes = b"", headers: dict[str, str] | None = None,
                 stream: bool = False):
        """One request on this thread's connection, yielding the response and its socket (to bound each read
        of a streamed body). Only this client's own I/O becomes `Unreachable`: what the caller's block raises
        (a full cache disk, say) passes through unchanged."""
        path = self._path(bucket, key)
        sent = self._sign(method, path, body, headers or {})
        conn, sock, response = self._send(method, path, body, sent)
        try:
            try:
                if response.status >= 300:
                    raw = response.read()  # b"" for HEAD; reading it keeps the connection usable
                    code, message = _error_fields(raw) if raw else ("", "")
                    raise S3Error(response.status, code or _STATUS_CODES.get(response.status, str(response.status)),
                                  message)
                if not stream:
                    response.read()
            except (OSError, http.client.HTTPException) as e:
                raise Unreachable(f"{type(e).__name__}: {e}") from None
            yield response, sock
        finally:
            if response.will_close or not response.isclosed():
                # the server closes it, or a body was left unread: this connection cannot be used again
                response.close()
                self._forget(conn)

    def _send(self, method: str, path: str, body: bytes, headers: dict[str, str]):
        """Send on this thread's kept-alive connection. A reused connection the server closed while idle is
        replaced once; should the server have processed the request after all, it is answered twice (the
        processor's writes are conditional, so a second answer is a 412 it expects). The socket waits for the
        answer as long as the storage timeout and the call's deadline allow."""
        for attempt in (0, 1):
            fresh = getattr(self._local, "conn", None) is None
            conn = None
            try:
                conn = self._connection()
                sock = conn.sock  # kept: http.client lets go of it when the server closes the connection
                sock.settimeout(wait(self.timeout))
                conn.request(method, path, body=body or None, headers=headers)
                return conn, sock, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self._forget(conn)
                if fresh or attempt:
                    raise Unreachable(f"{type(e).__name__}: {e}") from None
            except ssl.SSLCertVerificationError as e:
                self._forget(conn)
                raise ConfigError(f"the TLS certificate of {self.host} could not be verified ({e.verify_message}): "
                                  "check the endpoint (ONNXFN_OCI_ENDPOINT, AWS_ENDPOINT_URL_S3)") from None
            except (ValueError, UnicodeError):  # http.client's message repeats the header: never pass it on
                self._forget(conn)
                raise ConfigError("a request header to object storage holds characters HTTP cannot carry (control or "
                                  "non-ASCII characters in a key, token or metadata value)") from None
            except (OSError, http.client.HTTPException) as e:
                self._forget(conn)
                raise Unreachable(f"{type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # DNS, connect and TLS: 5 s at most in all, less when the call's deadline is nearer
            conn = connection(self.scheme, self.host, wait(min(5.0, self.timeout)))
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = conn
        return conn

    def _forget(self, conn: http.client.HTTPConnection | None) -> None:
        """Close a connection and make sure this thread opens a new one next time."""
        if conn is not None:
            conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def _sign(self, method: str, path: str, body: bytes, extra: dict[str, str]) -> dict[str, str]:
        """AWS Signature Version 4 for S3 (the payload's sha256 signed; no query string)."""
        now = dt.datetime.now(dt.timezone.utc)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        headers = {k.lower(): " ".join(str(v).split()) for k, v in extra.items()}  # SigV4 collapses whitespace
        headers.update({"host": self.host, "x-amz-date": stamp, "x-amz-content-sha256": payload})
        if self._token:
            headers["x-amz-security-token"] = self._token
        signed = sorted(k for k in headers if k == "host" or k.startswith("x-amz-"))
        canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in signed), "", ";".join(signed),
                               payload])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self._access}/{scope}, "
                                    f"SignedHeaders={';'.join(signed)}, Signature={signature}")
        if body:
            headers["content-length"] = str(len(body))
        return headers

    def _signing_key(self, day: str) -> bytes:
        keys = self._keys  # read once: another thread may replace it at midnight
        if keys is None or keys[0] != day:
            key = ("AWS4" + self._secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            keys = self._keys = (day, key)
        return keys[1]


_STATUS_CODES = {304: "NotModified", 400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                 409: "Conflict", 412: "PreconditionFailed", 503: "ServiceUnavailable"}


def _error_fields(body: bytes) -> tuple[str, str]:
    text = body[:4096].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    return (code.group(1) if code else ""), (message.group(1) if message else "")


def _headers(response: http.client.HTTPResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in response.getheaders()}


def _chunks(response, length: int | None, sock: socket.socket, limit: float) -> Iterator[bytes]:
    """The body in chunks, each read waiting `limit` seconds at most, less when the call's deadline is nearer;
    a body cut short of its Content-Length is `Unreachable`."""
    received = 0
    while True:
        try:
            sock.settimeout(wait(limit))
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"{type(e).__name__}: {e}") from None
        if not chunk:
            break
        received += len(chunk)
        yield chunk
    if length is not None and received != length:
        raise Unreachable(f"the connection closed after {received:,} of {length:,} bytes")


