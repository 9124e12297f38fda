"""The HTTP plumbing the object storage clients share (the lean S3 client, the native OCI client, PAR URLs):
http.client connections whose DNS lookup, connect and TLS handshake are bounded together, each read bounded by
the storage timeout and the call's deadline (`storage.deadline`), and one kept-alive connection per thread."""
from __future__ import annotations

import http.client
import socket
import ssl
import threading
from typing import Iterator

from onnxfn.errors import ConfigError, StorageUnavailable
from onnxfn.storage import deadline
from onnxfn.storage.s3 import Unreachable
from onnxfn.storage.store import CHUNK


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
    """http.client's connect hook: `deadline.connect` (DNS and connect within `timeout`)."""
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


class KeptAlive:
    """One kept-alive connection per thread to `scheme://host`, each request's socket waiting `timeout` seconds at
    most (less when the call's deadline is nearer). `ENDPOINT` names the settings that choose the endpoint, for
    the message when its TLS certificate fails."""
    ENDPOINT = "the endpoint"

    def __init__(self, scheme: str, host: str, timeout: float):
        self.scheme, self.host, self.timeout = scheme, host, timeout
        self._local = threading.local()

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
                                  f"check {self.ENDPOINT}") from None
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
            self._local.conn = conn
        if conn.sock is None:  # new, or closed by a server that keeps no connection alive (Connection: close)
            conn.timeout = wait(min(5.0, self.timeout))
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _forget(self, conn: http.client.HTTPConnection | None) -> None:
        """Close a connection and make sure this thread opens a new one next time."""
        if conn is not None:
            conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None


def response_headers(response: http.client.HTTPResponse) -> dict[str, str]:
    """An answer's headers, names lower-cased."""
    return {k.lower(): v for k, v in response.getheaders()}


def body_chunks(response, length: int | None, sock: socket.socket, limit: float) -> Iterator[bytes]:
    """The body in chunks, each read waiting `limit` seconds at most, less when the call's deadline is nearer;
    a body cut short of its Content-Length is `Unreachable`."""
    received = 0
    while True:
        if response.isclosed():  # all read, and a server that closes its connections (HTTP/1.0) closed it
            break
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


