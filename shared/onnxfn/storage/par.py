"""Pre-authenticated request (PAR) URLs: a bundle's prefix read with plain HTTP GETs, no SDK and no
key in the function. The URL's token is never shown: errors name the host and the file only."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator
from urllib.parse import quote, urlsplit

from onnxfn.errors import ConfigError, ObjectMissing, StorageUnavailable
from onnxfn.storage.store import CHUNK, Download, Stat, Store


class HttpStore(Store):
    """A bundle behind a pre-authenticated request URL ending in /: file names are appended to it and read
    with plain GETs."""

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
        import urllib.request
        with self._errors(name):
            with urllib.request.urlopen(urllib.request.Request(self._url(name), method="HEAD"),
                                        timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                return Stat(int(length) if length else None, response.headers.get("ETag"))

    @contextmanager
    def open(self, name: str):
        """A GET's body in chunks, with its ETag; a body cut short of its Content-Length raises
        `StorageUnavailable` while it is read."""
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
