"""The call's deadline for storage requests. `within(deadline)` sets it for a block (a context variable:
per thread and per asyncio task, and not inherited by threads started inside the block); every storage
client asks `timeout(limit)` before each DNS lookup, connect and read, so a black-holed server or a
slow DNS never outlives the call. Without a deadline, requests are bounded by the storage timeout only.

A hung resolver cannot be interrupted: `resolve` waits for getaddrinfo in a daemon thread for at most
the time given, and leaves that thread behind (one per host at most: callers asking for a host whose
lookup is still running wait for the same one)."""
from __future__ import annotations

import contextvars
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from onnxfn.errors import StorageUnavailable

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("onnxfn_storage_deadline", default=None)


@contextmanager
def within(deadline: float | None) -> Iterator[None]:
    """Bound every storage request made in this block by `deadline` (time.monotonic()); None: by the storage
    timeout only."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def current() -> float | None:
    """The deadline (time.monotonic()) storage requests made here must meet, or None."""
    return _deadline.get()


def timeout(limit: float) -> float:
    """The seconds a storage request may wait now: `limit`, or less when the call's deadline is nearer;
    `StorageUnavailable` when the deadline has come."""
    deadline = _deadline.get()
    if deadline is None:
        return limit
    left = deadline - time.monotonic()
    if left <= 0:
        raise StorageUnavailable("the call's deadline leaves no time for the request to object storage")
    return min(limit, left)


# -- DNS and connect --------------------------------------------------------------------------------

class _Lookup:
    """One getaddrinfo in a daemon thread; whoever asks for the same host and port meanwhile waits for it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.done = threading.Event()
        self.addresses: list[str] = []
        self.error: OSError | None = None

    def run(self) -> None:
        import socket
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self.addresses = list(dict.fromkeys(info[4][0] for info in infos))
        except (OSError, UnicodeError) as e:
            self.error = socket.gaierror(f"{self.host!r} could not be resolved: {getattr(e, 'strerror', None) or e}")
        finally:
            with _lookups_lock:
                if _lookups.get((self.host, self.port)) is self:
                    del _lookups[(self.host, self.port)]
            self.done.set()


_lookups: dict[tuple[str, int], _Lookup] = {}
_lookups_lock = threading.Lock()


def _literal(host: str) -> bool:
    import socket
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            pass
    return False


def _addresses(host: str, port: int, timeout: float) -> list[str]:
    """`host`'s addresses within `timeout` seconds; `socket.gaierror` or `TimeoutError` (both naming the host)."""
    if _literal(host):
        return [host]
    with _lookups_lock:
        lookup = _lookups.get((host, port))
        if lookup is None:
            lookup = _lookups[(host, port)] = _Lookup(host, port)
            threading.Thread(target=lookup.run, daemon=True, name="onnxfn-resolve").start()
    if not lookup.done.wait(max(timeout, 0.0)):
        raise TimeoutError(f"{host!r} was not resolved within {timeout:.1f} s (DNS is slow or unreachable)")
    if lookup.error is not None:
        raise lookup.error
    if not lookup.addresses:
        import socket
        raise socket.gaierror(f"{host!r} could not be resolved: no address")
    return lookup.addresses


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """`host`'s addresses, looked up for `timeout` seconds at most (compute it here: a context variable does not
    reach the lookup's thread); `StorageUnavailable` naming the host when it cannot be resolved in time."""
    try:
        return _addresses(host, port, timeout)
    except OSError as e:
        raise StorageUnavailable(f"the storage host {e}; check the endpoint, or retry later") from None


def connect(host: str, port: int, timeout: float):
    """A TCP socket to host:port, its DNS lookup and connect within `timeout` seconds in all; the socket's timeout
    is what is left (for a TLS handshake). Raises `OSError` (`TimeoutError`, `socket.gaierror`, refused...)."""
    import socket
    end = time.monotonic() + timeout
    error: OSError | None = None
    for address in _addresses(host, port, timeout):
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            sock = socket.create_connection((address, port), left)
        except OSError as e:
            error = e
            continue
        sock.settimeout(max(end - time.monotonic(), 0.001))
        return sock
    raise error or TimeoutError(f"connecting to {host}:{port} took longer than {timeout:.1f} s")
