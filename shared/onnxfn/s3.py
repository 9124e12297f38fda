"""The S3 API, spoken two ways behind one small interface (head, get, put, copy):

- `Lean`: SigV4 over the standard library's http.client, one kept-alive connection per thread.
  Used for Oracle Object Storage (oci://) and S3-compatible endpoints (AWS_ENDPOINT_URL_S3 or
  AWS_ENDPOINT_URL) when the keys are in the environment, which is how a function gets them.
  It does what Oracle requires: path-style URLs, SigV4 with the region in the scope, no
  checksum headers. It costs no import and no client creation (boto3's cost ~400 ms of a
  cold start here) and ~2-3 ms less per call than boto3's request pipeline
  (bench/coldstart.py, bench/events.py).
- `Boto3`: boto3's client, for everything else: AWS S3 itself (virtual hosts, region
  redirects), and credentials from profiles, SSO, or instance and container roles.

ONNXFN_S3_CLIENT=boto3 forces boto3 everywhere. Both raise `S3Error` (an HTTP answer) or
`Unreachable` (no answer); the store turns them into onnxfn errors.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import os
import re
import socket
import ssl
import threading
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import quote, urlsplit

from .errors import ConfigError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
CHUNK = 1 << 20


class S3Error(Exception):
    """The server answered with an error."""

    def __init__(self, status: int, code: str, message: str = ""):
        super().__init__(f"{status} {code} {message}".strip())
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """No answer: connection refused or reset, timeout, body cut short."""


def endpoint_from_env() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def region_from_env() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def client(endpoint: str | None, region: str | None, timeout: float, kind: str = "auto"):
    """The client for an endpoint (None: AWS, or AWS_ENDPOINT_URL_S3): lean where it can be, else boto3."""
    kind = (kind or "auto").lower()
    if kind not in ("auto", "lean", "boto3"):
        raise ConfigError(f"ONNXFN_S3_CLIENT must be auto, lean or boto3, got {kind!r}")
    url = endpoint or endpoint_from_env()
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    token = os.environ.get("AWS_SESSION_TOKEN") or None
    if kind == "lean" and not (url and access and secret):
        raise ConfigError("ONNXFN_S3_CLIENT=lean needs an endpoint (oci://, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL) "
                          "and AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (on OCI: a customer "
                          "secret key)", code="storage_auth_failed")
    if kind != "boto3" and url and access and secret:
        # the keys are part of the key: rotated credentials get a new client
        return _cached(("lean", url, region, timeout, access, secret, token),
                       lambda: Lean(url, region or region_from_env(), access, secret, token, timeout))
    return _cached(("boto3", endpoint, region, timeout), lambda: Boto3(endpoint, region, timeout))


_clients: dict = {}
_clients_lock = threading.Lock()


def _cached(key, make):
    """One client per kind, endpoint, region and keys, shared by every store and thread (built outside
    the lock: a boto3 client takes a few hundred ms)."""
    with _clients_lock:
        if key in _clients:
            return _clients[key]
    made = make()
    with _clients_lock:
        return _clients.setdefault(key, made)


_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    """One TLS context for every connection: loading the CA bundle costs ~50 ms."""
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


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
        with self._request("HEAD", bucket, key) as response:
            return _headers(response)

    @contextmanager
    def get(self, bucket: str, key: str) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        with self._request("GET", bucket, key, stream=True) as response:
            yield _headers(response), _chunks(response, response.length)  # length: None when not given

    def put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        with self._request("PUT", bucket, key, data, headers) as response:
            return _headers(response)

    def copy(self, bucket: str, source: str, target: str) -> None:
        headers = {"x-amz-copy-source": quote(f"/{bucket}/{source}", safe="/~"), "x-amz-metadata-directive": "COPY"}
        with self._request("PUT", bucket, target, b"", headers, stream=True) as response:
            try:
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise Unreachable(f"{type(e).__name__}: {e}") from None
        if b"<Error>" in body:  # S3 may answer 200 and report the copy's failure in the body
            raise S3Error(500, *_error_fields(body))

    def url(self, bucket: str, key: str) -> str:
        return f"{self.scheme}://{self.host}{self._path(bucket, key)}"

    # the wire -----------------------------------------------------------------------------------
    def _path(self, bucket: str, key: str) -> str:
        return quote(f"{self.base}/{bucket}/{key}", safe="/~")

    @contextmanager
    def _request(self, method: str, bucket: str, key: str, body: bytes = b"", headers: dict[str, str] | None = None,
                 stream: bool = False):
        """One request on this thread's connection. Only this client's own I/O becomes `Unreachable`:
        what the caller's block raises (a full cache disk, say) passes through unchanged."""
        path = self._path(bucket, key)
        sent = self._sign(method, path, body, headers or {})
        conn, response = self._send(method, path, body, sent)
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
            yield response
        finally:
            if response.will_close or not response.isclosed():
                # the server closes it, or a body was left unread: this connection cannot be used again
                response.close()
                self._forget(conn)

    def _send(self, method: str, path: str, body: bytes, headers: dict[str, str]):
        """Send on this thread's kept-alive connection. A reused connection the server closed while idle is
        replaced once; should the server have processed the request after all, it is answered twice (the
        processor's writes are conditional, so a second answer is a 412 it expects)."""
        for attempt in (0, 1):
            fresh = getattr(self._local, "conn", None) is None
            conn = None
            try:
                conn = self._connection()
                conn.request(method, path, body=body or None, headers=headers)
                return conn, conn.getresponse()
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
            connect = min(5.0, self.timeout)
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, timeout=connect, context=_tls_context())
            else:
                conn = http.client.HTTPConnection(self.host, timeout=connect)
            conn.connect()
            conn.sock.settimeout(self.timeout)  # connecting may take 5 s at most, each read up to the timeout
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


def _chunks(response, length: int | None) -> Iterator[bytes]:
    """The body in chunks; a body cut short of its Content-Length is `Unreachable`."""
    received = 0
    while True:
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"{type(e).__name__}: {e}") from None
        if not chunk:
            break
        received += len(chunk)
        yield chunk
    if length is not None and received != length:
        raise Unreachable(f"the connection closed after {received:,} of {length:,} bytes")


def metadata(headers: dict[str, str]) -> dict[str, str]:
    return {k[len("x-amz-meta-"):]: v for k, v in headers.items() if k.startswith("x-amz-meta-")}


# -- boto3 ---------------------------------------------------------------------------------------------

class Boto3:
    """boto3's S3 client behind the same four operations."""

    def __init__(self, endpoint: str | None, region: str | None, timeout: float):
        import boto3
        from botocore.config import Config
        custom = endpoint or endpoint_from_env()
        config = Config(signature_version="s3v4", s3={"addressing_style": "path" if custom else "auto"},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        retries={"max_attempts": 1, "mode": "standard"},  # onnxfn retries within the deadline
                        connect_timeout=min(5.0, timeout), read_timeout=timeout)
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def head(self, bucket: str, key: str) -> dict[str, str]:
        with self._errors():
            head = self.client.head_object(Bucket=bucket, Key=key)
        return _boto_headers(head)

    @contextmanager
    def get(self, bucket: str, key: str):
        with self._errors():
            response = self.client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:  # what the caller's block raises passes through unchanged
            yield _boto_headers(response), self._chunks(body)
        finally:
            body.close()

    def _chunks(self, body) -> Iterator[bytes]:
        with self._errors():
            yield from body.iter_chunks(CHUNK)

    def put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        extra = {}
        if "if-none-match" in headers:
            extra["IfNoneMatch"] = headers["if-none-match"]
        if "if-match" in headers:
            extra["IfMatch"] = headers["if-match"]
        with self._errors():
            response = self.client.put_object(Bucket=bucket, Key=key, Body=data,
                                              ContentType=headers.get("content-type", "application/octet-stream"),
                                              Metadata=metadata(headers), **extra)
        return _boto_headers(response)

    def copy(self, bucket: str, source: str, target: str) -> None:
        with self._errors():
            self.client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source},
                                    MetadataDirective="COPY")

    @contextmanager
    def _errors(self):
        from botocore import exceptions as bx
        try:
            yield
        except bx.ClientError as e:
            error = e.response.get("Error", {})
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            raise S3Error(status, str(error.get("Code", "")), str(error.get("Message", ""))) from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as e:
            raise S3Error(401, "NoCredentials", str(e)) from None
        except bx.ParamValidationError as e:
            raise ConfigError(f"invalid bucket or key: {e}") from None
        except (bx.BotoCoreError, OSError) as e:
            raise Unreachable(f"{type(e).__name__}: {e}") from None


def _boto_headers(response: dict) -> dict[str, str]:
    headers = {k.lower(): v for k, v in response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).items()}
    if response.get("ETag"):
        headers["etag"] = response["ETag"]
    if response.get("ContentLength") is not None:
        headers["content-length"] = str(response["ContentLength"])
    for k, v in (response.get("Metadata") or {}).items():
        headers["x-amz-meta-" + k.lower()] = v
    return headers
