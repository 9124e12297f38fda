"""Pre-authenticated request (PAR) URLs: a bundle's prefix read with plain HTTP GETs, no SDK and no
key in the function. The URL's token is never shown: errors name the host and the file only."""
from __future__ import annotations

import http.client
from contextlib import contextmanager
from urllib.parse import quote, urljoin, urlsplit

from onnxfn.errors import ConfigError, ObjectMissing, StorageUnavailable
from onnxfn.storage.http import body_chunks, connection, wait
from onnxfn.storage.s3 import Unreachable
from onnxfn.storage.store import Download, Stat, Store

_REDIRECTS = 10  # as many as urllib followed


class _Status(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class HttpStore(Store):
    """A bundle behind a pre-authenticated request URL ending in /: file names are appended to it and read
    with plain GETs over http.client, DNS, connect and each read bounded by the storage timeout and the
    call's deadline (`storage.deadline`)."""

    def __init__(self, uri: str, timeout: float = 20.0):
        self.uri, self.timeout = uri, timeout

    def _url(self, name: str) -> str:
        return self.uri + quote(name)

    def describe(self, name: str) -> str:
        """Scheme, host and file name only: the URL's path holds the PAR token."""
        parts = urlsplit(self.uri)  # never log a PAR token: show host and the tail only
        return f"{parts.scheme}://{parts.netloc}/…/{name}"

    def stat(self, name: str) -> Stat:
        """A HEAD request's Content-Length and ETag; no metadata."""
        with self._errors(name), self._request("HEAD", name) as (response, _):
            length = response.headers.get("Content-Length")
            return Stat(int(length) if length else None, response.headers.get("ETag"))

    @contextmanager
    def open(self, name: str):
        """A GET's body in chunks, with its ETag; a body cut short of its Content-Length, or a read past the
        deadline, raises `StorageUnavailable` while it is read."""
        with self._errors(name), self._request("GET", name) as (response, sock):
            length = response.headers.get("Content-Length")
            yield Download(body_chunks(response, int(length) if length else None, sock, self.timeout),
                           response.headers.get("ETag"))

    @contextmanager
    def _request(self, method: str, name: str):
        """Yield the answer to one request and its socket, redirects followed; an error status raises `_Status`."""
        url, status = self._url(name), 0
        for _ in range(_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _Status(status)  # a redirect elsewhere than http(s): its status is the answer
            conn = connection(parts.scheme, parts.netloc, wait(min(5.0, self.timeout)))
            try:
                conn.connect()
                sock = conn.sock  # kept: http.client lets go of it when the server closes the connection
                sock.settimeout(wait(self.timeout))
                conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                             headers={"Connection": "close"})
                response = conn.getresponse()
                location, status = response.headers.get("Location"), response.status
                if status in (301, 302, 303, 307, 308) and location:
                    url = urljoin(url, location)
                    continue
                if response.status >= 300:
                    raise _Status(response.status)
                yield response, sock
                return
            finally:
                conn.close()
        raise _Status(status)  # redirected too many times

    @contextmanager
    def _errors(self, name: str):
        where = self.describe(name)
        try:
            yield
        except _Status as e:
            if e.status in (401, 403):
                raise ConfigError(f"the pre-authenticated URL was refused for {where} ({e.status}): it may have "
                                  "expired or been revoked; create a new one", code="storage_auth_failed") from None
            if e.status == 404:
                raise ObjectMissing(f"{where} does not exist (404)") from None
            if e.status >= 500 or e.status == 429:
                raise StorageUnavailable(f"object storage answered {e.status} for {where}; retry later") from None
            raise StorageUnavailable(f"object storage answered {e.status} for {where}", status=502,
                                     code="storage_error") from None
        except (http.client.InvalidURL, UnicodeError):  # their messages repeat the URL, token and all
            raise ConfigError(f"the pre-authenticated URL for {where} holds characters HTTP cannot carry (spaces, "
                              "control or non-ASCII characters): percent-encode them in MODEL_URI") from None
        except (http.client.HTTPException, OSError, Unreachable) as e:
            raise StorageUnavailable(f"object storage is unreachable for {where}: {_reason(e)}; retry later") from None


def _reason(e: Exception) -> str:
    """What went wrong, without a URL (its path holds the token)."""
    if isinstance(e, TimeoutError):
        return "no answer in time (timed out)"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
