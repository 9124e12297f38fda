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
`Unreachable` (no answer); the store turns them into onnxfn errors. Both wait no longer than the
storage timeout and the call's deadline (`storage.deadline`) allow: the lean client sets its
socket's timeout before each DNS lookup, connect and read; boto3's timeouts are fixed per client,
so under a deadline each of its calls (and each read of a body) runs on a worker thread the caller
stops waiting for when the deadline comes.
"""
from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from onnxfn.errors import ConfigError, ObjectMissing, PreconditionFailed, StorageUnavailable
from onnxfn.storage import deadline
from onnxfn.storage.store import CHUNK, Download, Stat, Store, user_metadata, write_headers

_T = TypeVar("_T")


class S3Error(Exception):
    """The server answered with an error."""

    def __init__(self, status: int, code: str, message: str = ""):
        super().__init__(f"{status} {code} {message}".strip())
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """No answer: connection refused or reset, timeout, body cut short."""


def endpoint_from_env() -> str:
    """The S3 endpoint the environment sets (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL), or "" for AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def region_from_env() -> str:
    """AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1."""
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
        from onnxfn.storage.sigv4 import Lean  # http.client and ssl, imported only when used
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


def metadata(headers: dict[str, str]) -> dict[str, str]:
    """The user metadata among lower-case headers: x-amz-meta-<key>: value -> {<key>: value}."""
    return user_metadata(headers, "x-amz-meta-")



# -- the store (the lean SigV4 client, or boto3) ----------------------------------------------

class S3Store(Store):
    """A bundle under a bucket and prefix, read over the S3 API (AWS, or Oracle Object Storage's compatible
    endpoint); the client's `S3Error` and `Unreachable` become onnxfn errors."""

    def __init__(self, uri: str, bucket: str, prefix: str, endpoint: str | None, region: str | None = None,
                 timeout: float = 20.0, client: str = "auto"):
        self.uri, self.bucket, self.prefix = uri, bucket, prefix
        self.endpoint, self.region, self.timeout, self.kind = endpoint, region, timeout, client
        self._client = None

    @property
    def client(self):
        """The shared lean or boto3 client for this store's endpoint, region and keys, chosen on first use."""
        if self._client is None:
            self._client = client(self.endpoint, self.region, self.timeout, self.kind)
        return self._client

    def stat(self, name: str) -> Stat:
        """A HEAD's size, ETag and user metadata (the x-amz-meta-* headers)."""
        with self._errors(name):
            headers = self.client.head(self.bucket, self.prefix + name)
        length = headers.get("content-length")
        return Stat(int(length) if length else None, headers.get("etag"), metadata(headers))

    def put(self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """Write an object; with if_none_match it must not exist yet, with if_match it must still have that ETag."""
        headers = write_headers(content_type, metadata, "x-amz-meta-", if_none_match=if_none_match, if_match=if_match)
        with self._errors(name):
            return self.client.put(self.bucket, self.prefix + name, data, headers).get("etag")

    def copy(self, source: str, target: str) -> None:
        """Copy `source` to `target` (both under the prefix) server-side, metadata included."""
        with self._errors(source):
            self.client.copy(self.bucket, self.prefix + source, self.prefix + target)

    @contextmanager
    def open(self, name: str):
        """A GET's body in chunks, with its ETag; a connection lost while the body is read becomes
        `StorageUnavailable` too."""
        with self._errors(name):
            with self.client.get(self.bucket, self.prefix + name) as (headers, chunks):
                yield Download(chunks, headers.get("etag"))

    @contextmanager
    def _errors(self, name: str):
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



# -- boto3 ---------------------------------------------------------------------------------------------

class _Workers:
    """A few daemon threads running botocore calls, so that a caller can stop waiting at its deadline: a call
    left behind ends by botocore's own timeouts, and never holds up the process's exit."""

    def __init__(self, size: int):
        self.size, self.threads = size, 0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()

    def submit(self, action: Callable[[], _T]):
        """A Future of action()'s result, run on an idle worker (a new one while there are fewer than `size`)."""
        from concurrent.futures import Future
        future: Future = Future()
        self._jobs.put((future, action))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if self.threads < self.size:
                    self.threads += 1
                    threading.Thread(target=self._work, daemon=True, name=f"onnxfn-boto3-{self.threads}").start()
        return future

    def _work(self) -> None:
        while True:
            future, action = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(action())
                except BaseException as e:
                    future.set_exception(e)
                del future, action  # a result is not kept alive while the worker waits
            self._idle.release()


_workers = _Workers(8)


def _bounded(action: Callable[[], _T], limit: float, abandoned: list | None = None) -> _T:
    """action() (a botocore call), waited for `limit` seconds at most, less when the call's deadline is nearer:
    then `Unreachable` (its Future, still running, appended to `abandoned`). Without a deadline it runs here, as
    boto3 does (its own timeouts bound it)."""
    if deadline.current() is None:
        return action()
    from concurrent.futures import TimeoutError as FutureTimeout
    try:
        wait = deadline.timeout(limit)
    except StorageUnavailable as e:
        raise Unreachable(e.message) from None
    future = _workers.submit(action)
    try:
        return future.result(timeout=wait)
    except FutureTimeout:
        if not future.cancel() and abandoned is not None:  # cancelled: not started yet (every worker busy)
            abandoned.append(future)
        raise Unreachable(f"no answer within {wait:.1f} s, the time the call's deadline left") from None


class Boto3:
    """boto3's S3 client behind the same four operations; under a call's deadline (`storage.deadline`) each call
    and each read of a body is waited for only until then."""

    def __init__(self, endpoint: str | None, region: str | None, timeout: float):
        import boto3
        from botocore.config import Config
        custom = endpoint or endpoint_from_env()
        config = Config(signature_version="s3v4", s3={"addressing_style": "path" if custom else "auto"},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        retries={"total_max_attempts": 1, "mode": "standard"},  # one attempt: onnxfn retries within the deadline
                        connect_timeout=min(5.0, timeout), read_timeout=timeout)
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)
        self.timeout = timeout
        self.limit = min(5.0, timeout) + timeout  # what botocore may take itself: a connect, then a read

    def head(self, bucket: str, key: str) -> dict[str, str]:
        """The object's headers, lower-cased, with ETag, content-length and x-amz-meta-* from boto3's fields."""
        with self._errors():
            head = _bounded(lambda: self.client.head_object(Bucket=bucket, Key=key), self.limit)
        return _boto_headers(head)

    @contextmanager
    def get(self, bucket: str, key: str):
        """Yield the object's headers and its body in CHUNK-sized pieces; the body is closed on leaving."""
        with self._errors():
            response = _bounded(lambda: self.client.get_object(Bucket=bucket, Key=key), self.limit)
        body, abandoned = response["Body"], []
        try:  # what the caller's block raises passes through unchanged
            yield _boto_headers(response), self._chunks(body, abandoned)
        finally:
            if abandoned:  # closing would wait for the read left running (it holds the buffer's lock): after it
                abandoned[-1].add_done_callback(lambda _: body.close())
            else:
                body.close()

    def _chunks(self, body, abandoned: list) -> Iterator[bytes]:
        """The body in CHUNK-sized pieces; under a deadline each read is waited for only until then (a read
        left running goes into `abandoned`)."""
        with self._errors():
            if deadline.current() is None:
                yield from body.iter_chunks(CHUNK)
                return
            while chunk := _bounded(lambda: body.read(CHUNK), self.timeout, abandoned):
                yield chunk

    def put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """Write `data`; content-type, x-amz-meta-* and the if-match / if-none-match conditions come from `headers`."""
        extra = {}
        if "if-none-match" in headers:
            extra["IfNoneMatch"] = headers["if-none-match"]
        if "if-match" in headers:
            extra["IfMatch"] = headers["if-match"]
        with self._errors():
            response = _bounded(lambda: self.client.put_object(
                Bucket=bucket, Key=key, Body=data, ContentType=headers.get("content-type", "application/octet-stream"),
                Metadata=metadata(headers), **extra), self.limit)
        return _boto_headers(response)

    def copy(self, bucket: str, source: str, target: str) -> None:
        """Copy `source` to `target` within the bucket, server-side, keeping the metadata."""
        with self._errors():
            _bounded(lambda: self.client.copy_object(Bucket=bucket, Key=target, MetadataDirective="COPY",
                                                     CopySource={"Bucket": bucket, "Key": source}), self.limit)

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
