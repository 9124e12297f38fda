"""A loopback HTTP/1.1 proxy that injects storage faults in front of a real server (SeaweedFS in the tests).

    with FaultProxy(s3.endpoint) as proxy:          # http://127.0.0.1:<port>, relaying to the server
        env = {**s3.env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint}
        proxy.set(Fault.latency(0.5))               # every answer 0.5 s late
        proxy.set(Fault.reset(4096))                # answers cut by a TCP reset after 4,096 body bytes
        proxy.set(Fault.slowdown(3))                # the next 3 requests: 503 SlowDown (S3's XML error body)
        proxy.set(Fault.blackhole())                # requests read, never answered
        proxy.set(Fault.slowdown(match=r"^PUT .*json$"))  # only requests whose "METHOD path" matches
        proxy.clear()                               # relay faithfully again

Requests are relayed byte for byte (a SigV4 signature covers the Host header the client sent, which is the
proxy's, and the server checks it against what it receives: the same bytes), one upstream connection per client
connection, kept alive as long as both ends keep it. `Expect: 100-continue` is answered by the proxy and the
header dropped upstream (SigV4 never signs it). A fault applies to each request that arrives while it is set;
`proxy.log` lists (method, path, what was done) per request. A black-holed connection stays silent until its
client gives up or the proxy stops (clearing the fault does not answer it: a real black hole does not either).
"""
from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

HOST = "127.0.0.1"
HEAD_LIMIT = 64 * 1024
SLOWDOWN_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 '<Message>Please reduce your request rate.</Message><Resource>{resource}</Resource>'
                 '<RequestId>{request_id}</RequestId></Error>')


@dataclass(frozen=True)
class Fault:
    """What the proxy does to requests: `kind` is latency, reset, slowdown or blackhole."""
    kind: str
    seconds: float = 0.0       # latency: added before each answer
    after: int = 0             # reset: body bytes relayed before the reset
    count: int | None = None   # slowdown: how many consecutive requests get a 503 (None: all, until cleared)
    match: str | None = None   # a regular expression "METHOD path" must match for the fault to apply (None: all)

    @staticmethod
    def latency(seconds: float, match: str | None = None) -> "Fault":
        """Every answer delayed by `seconds` (before its first byte)."""
        return Fault("latency", seconds=seconds, match=match)

    @staticmethod
    def reset(after: int, match: str | None = None) -> "Fault":
        """Answers with a body longer than `after` bytes: the head and `after` body bytes, then a TCP reset."""
        return Fault("reset", after=after, match=match)

    @staticmethod
    def slowdown(count: int | None = None, match: str | None = None) -> "Fault":
        """The next `count` requests (None: every one until cleared) answered 503 SlowDown, not relayed."""
        return Fault("slowdown", count=count, match=match)

    @staticmethod
    def blackhole(match: str | None = None) -> "Fault":
        """Requests accepted and read, never answered."""
        return Fault("blackhole", match=match)


class _Closed(Exception):
    """The peer closed the connection."""


class _Reader:
    """Buffered reads from one socket."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _Closed()
        self.buffer += data

    def until(self, marker: bytes, limit: int = HEAD_LIMIT) -> bytes:
        """Everything up to and including `marker`."""
        while (at := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise _Closed()
            self._fill()
        out, self.buffer = self.buffer[:at + len(marker)], self.buffer[at + len(marker):]
        return out

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def some(self, size: int) -> bytes:
        """Up to `size` bytes: what is buffered, else one read (b"" when the peer closed)."""
        if not self.buffer:
            try:
                self._fill()
            except _Closed:
                return b""
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    """The start line and the lower-cased headers of a message head."""
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


def _without(head: bytes, name: str) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(name.encode() + b":"))


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a graceful FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """The proxy: `start()` listens on a free loopback port; see the module docstring."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or HOST, parts.port or 80)
        self.fault: Fault | None = None
        self.log: list[tuple[str, str, str]] = []  # (method, path, "relayed" | the fault's kind)
        self._left: int | None = None  # slowdown requests still to answer 503
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://{HOST}:{self._listener.getsockname()[1]}"

    def set(self, fault: Fault | None) -> None:
        """Apply `fault` to the requests that arrive from now on (None: relay faithfully)."""
        with self._lock:
            self.fault = fault
            self._left = fault.count if fault is not None and fault.kind == "slowdown" else None

    def clear(self) -> None:
        """Relay faithfully again."""
        self.set(None)

    def injected(self, kind: str | None = None) -> int:
        """How many requests got a fault (of `kind`)."""
        return sum(1 for _, _, what in self.log if what != "relayed" and (kind is None or what == kind))

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)
        thread = threading.Thread(target=self._accept, daemon=True, name="faultproxy-accept")
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop accepting, close every open connection, wait for the threads."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it (close alone does not)
            _reset(sock)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- connections --------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._track(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True, name="faultproxy-conn")
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _track(self, sock: socket.socket, add: bool = True) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        reader = _Reader(client)
        try:
            while not self._stopping.is_set():
                head, body, method, path = self._request(reader, client)
                fault = self._take(method, path)
                if fault is not None and fault.kind == "blackhole":
                    self._hold(client)
                    return
                if fault is not None and fault.kind == "slowdown":
                    client.sendall(self._slowdown(method, path))
                    continue
                if fault is not None and fault.kind == "latency" and self._stopping.wait(fault.seconds):
                    return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, 10)
                    self._track(upstream)
                upstream.sendall(head + body)
                if not self._relay(_Reader(upstream), client, method, fault):
                    return
        except (_Closed, OSError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._track(sock, add=False)
                    with contextlib.suppress(OSError):
                        sock.close()

    def _request(self, reader: _Reader, client: socket.socket) -> tuple[bytes, bytes, str, str]:
        """One request from the client: its head (Expect dropped, answered here) and body."""
        head = reader.until(b"\r\n\r\n")
        start, fields = _headers(head)
        method, _, rest = start.partition(" ")
        path = rest.rpartition(" ")[0]
        if "chunked" in fields.get("transfer-encoding", "").lower():
            raise _Closed()  # not needed by the S3 clients here: refuse rather than relay it wrongly
        if fields.get("expect", "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = _without(head, "expect")
        body = reader.exactly(int(fields.get("content-length") or 0))
        return head, body, method, path

    def _take(self, method: str, path: str) -> Fault | None:
        """The fault this request gets (a slowdown burst counts down), logged."""
        with self._lock:
            fault = self.fault
            if fault is not None and fault.match is not None and not re.search(fault.match, f"{method} {path}"):
                fault = None
            if fault is not None and fault.kind == "slowdown" and self._left is not None:
                if self._left <= 0:
                    fault = None
                else:
                    self._left -= 1
            self.log.append((method, path, fault.kind if fault is not None else "relayed"))
        return fault

    def _hold(self, client: socket.socket) -> None:
        """Say nothing until the client closes or the proxy stops."""
        client.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                if not client.recv(65536):
                    return
            except socket.timeout:
                continue

    @staticmethod
    def _slowdown(method: str, path: str) -> bytes:
        request_id = uuid.uuid4().hex[:16].upper()
        body = SLOWDOWN_BODY.format(resource=path.split("?")[0], request_id=request_id).encode()
        head = (f"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                f"x-amz-request-id: {request_id}\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}"
                "\r\n\r\n").encode()
        return head if method == "HEAD" else head + body

    def _relay(self, upstream: _Reader, client: socket.socket, method: str, fault: Fault | None) -> bool:
        """Relay one answer; False when the connection ends with it (closed, or reset by the fault)."""
        head = upstream.until(b"\r\n\r\n")
        start, fields = _headers(head)
        status = int(start.split()[1])
        client.sendall(head)
        cut = fault.after if fault is not None and fault.kind == "reset" else None
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return fields.get("connection", "").lower() != "close"
        sent = 0

        def send(data: bytes) -> bool:
            nonlocal sent
            if cut is not None and sent + len(data) > cut:
                client.sendall(data[:cut - sent])
                _reset(client)
                return False
            client.sendall(data)
            sent += len(data)
            return True

        if "chunked" in fields.get("transfer-encoding", "").lower():
            while True:
                line = upstream.until(b"\r\n")
                size = int(line.split(b";")[0], 16)
                if not send(line + upstream.exactly(size + 2)):
                    return False
                if size == 0:
                    break
        elif "content-length" in fields:
            left = int(fields["content-length"])
            while left > 0:
                data = upstream.some(min(left, 65536))
                if not data:
                    raise _Closed()
                left -= len(data)
                if not send(data):
                    return False
        else:  # the body ends when the server closes
            while data := upstream.some(65536):
                if not send(data):
                    return False
            return False
        return fields.get("connection", "").lower() != "close"
