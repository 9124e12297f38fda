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
    keys = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if kind == "lean" and not (url and all(keys)):
        raise ConfigError("ONNXFN_S3_CLIENT=lean needs an endpoint (oci://, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL) "
                          "and AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (on OCI: a customer "
                          "secret key)", code="storage_auth_failed")
    if kind != "boto3" and url and all(keys):
        return _cached(("lean", url, region, timeout), lambda: Lean(url, region or region_from_env(), keys[0],
                                                                      keys[1], os.environ.get("AWS_SESSION_TOKEN"),
                                                                      timeout))
    return _cached(("boto3", endpoint, region, timeout), lambda: Boto3(endpoint, region, timeout))


_clients: dict = {}
_clients_lock = threading.Lock()


def _cached(key, make):
    """One client per kind, endpoint and region, shared by every store and thread."""
    with _clients_lock:
        if key not in _clients:
            _clients[key] = make()
        return _clients[key]


# -- lean: SigV4 on http.client ----------------------------------------------------------------------

class Lean:
    def __init__(self, endpoint: str, region: str, access_key: str, secret_key: str, token: str | None,
                 timeout: float):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the S3 endpoint {endpoint!r} must be an http:// or https:// URL")
        self.endpoint, self.region, self.timeout = endpoint.rstrip("/"), region, timeout
        self.scheme, self.host = parts.scheme, parts.netloc
        self.base = parts.path.rstrip("/")
        self._access, self._secret, self._token = access_key, secret_key, token
        self._keys: tuple[str, bytes] | None = None  # (date, signing key)
        self._local = threading.local()

    # the four operations ----------------------------------------------------------------------
    def head(self, bucket: str, key: str) -> dict[str, str]:
        with self._request("HEAD", bucket, key) as response:
            return _headers(response)

    @contextmanager
    def get(self, bucket: str, key: str) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        with self._request("GET", bucket, key, stream=True) as response:
            headers = _headers(response)
            length = response.getheader("content-length")
            yield headers, _chunks(response, int(length) if length else None)

    def put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        with self._request("PUT", bucket, key, data, headers) as response:
            return _headers(response)

    def copy(self, bucket: str, source: str, target: str) -> None:
        headers = {"x-amz-copy-source": quote(f"/{bucket}/{source}", safe="/~"), "x-amz-metadata-directive": "COPY"}
        with self._request("PUT", bucket, target, b"", headers, stream=True) as response:
            body = response.read()
        if b"<Error>" in body:  # S3 may answer 200 and report the copy's failure in the body
            raise S3Error(500, *_error_fields(body))

    def url(self, bucket: str, key: str) -> str:
        return f"{self.endpoint}{self._path(bucket, key)}"

    # the wire -----------------------------------------------------------------------------------
    def _path(self, bucket: str, key: str) -> str:
        return quote(f"{self.base}/{bucket}/{key}", safe="/~")

    @contextmanager
    def _request(self, method: str, bucket: str, key: str, body: bytes = b"", headers: dict[str, str] | None = None,
                 stream: bool = False):
        path = self._path(bucket, key)
        sent = self._sign(method, path, body, headers or {})
        response = self._send(method, path, body, sent)
        try:
            if response.status >= 300:
                raw = response.read() if method != "HEAD" else b""
                code, message = _error_fields(raw) if raw else ("", "")
                raise S3Error(response.status, code or _STATUS_CODES.get(response.status, str(response.status)),
                              message)
            if not stream:
                response.read()
            yield response
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            raise Unreachable(f"{type(e).__name__}: {e}") from None
        finally:
            if not response.isclosed():  # a body left unread: the connection cannot be reused
                self._drop()

    def _send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send on this thread's kept-alive connection; a connection the server closed while idle is
        replaced once (the request never reached it)."""
        for attempt in (0, 1):
            fresh = getattr(self._local, "conn", None) is None
            try:
                conn = self._connection()
                conn.request(method, path, body=body or None, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self._drop()
                if fresh or attempt:
                    raise Unreachable(f"{type(e).__name__}: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise Unreachable(f"{type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = kind(self.host, timeout=min(5.0, self.timeout))
            conn.connect()
            conn.sock.settimeout(self.timeout)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _sign(self, method: str, path: str, body: bytes, extra: dict[str, str]) -> dict[str, str]:
        """AWS Signature Version 4 for S3 (the payload's sha256 signed; no query string)."""
        now = dt.datetime.now(dt.timezone.utc)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        headers = {k.lower(): str(v).strip() for k, v in extra.items()}
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
        if self._keys is None or self._keys[0] != day:
            key = ("AWS4" + self._secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = (day, key)
        return self._keys[1]


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
            try:
                yield _boto_headers(response), body.iter_chunks(CHUNK)
            finally:
                body.close()

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
