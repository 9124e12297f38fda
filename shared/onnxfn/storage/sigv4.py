"""The lean S3 client: AWS SigV4 over the standard library's http.client, one kept-alive connection
per thread, path-style URLs, no checksum headers (what Oracle's S3-compatible API requires).
`storage.s3.client` chooses it for oci:// and S3-compatible endpoints with keys in the environment."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import re
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import quote, urlsplit

from onnxfn.errors import ConfigError
from onnxfn.storage.s3 import S3Error, Unreachable
from onnxfn.storage.http import KeptAlive, body_chunks, response_headers, wait

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


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

class Lean(KeptAlive):
    """The lean S3 client for one endpoint and region; `ConfigError` when the endpoint is not an http(s) URL
    or a key holds characters a header cannot carry."""
    ENDPOINT = "the endpoint (ONNXFN_OCI_ENDPOINT, AWS_ENDPOINT_URL_S3)"

    def __init__(self, endpoint: str, region: str, access_key: str, secret_key: str, token: str | None,
                 timeout: float):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the S3 endpoint {endpoint!r} must be an http:// or https:// URL")
        super().__init__(parts.scheme, parts.netloc, timeout)
        self.region = region
        self.base = parts.path.rstrip("/")
        self._access = _check_credential("AWS_ACCESS_KEY_ID", access_key)
        self._secret = _check_credential("AWS_SECRET_ACCESS_KEY", secret_key)
        self._token = _check_credential("AWS_SESSION_TOKEN", token)
        self._keys: tuple[str, bytes] | None = None  # (date, signing key)

    # the four operations ----------------------------------------------------------------------
    def head(self, bucket: str, key: str) -> dict[str, str]:
        """The object's response headers, lower-cased; an error status raises `S3Error`."""
        with self._request("HEAD", bucket, key) as (response, _):
            return response_headers(response)

    @contextmanager
    def get(self, bucket: str, key: str) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        """Yield the object's headers and its body in chunks; a body cut short of its Content-Length
        raises `Unreachable`; each read waits as long as the storage timeout and the call's deadline allow."""
        with self._request("GET", bucket, key, stream=True) as (response, sock):
            # response.length: None when the server gives no Content-Length
            yield response_headers(response), body_chunks(response, response.length, sock, self.timeout)

    def put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """Write `data` with `headers` (content-type, x-amz-meta-*, conditions) as given; the response's headers."""
        with self._request("PUT", bucket, key, data, headers) as (response, _):
            return response_headers(response)

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
