"""`onnxfn serve`: a local HTTP front for development. It runs the function under the
real fdk on a unix socket and forwards each HTTP request exactly as OCI API Gateway
does (Fn-Intent, Fn-Http-Method, Fn-Http-Request-Url, Fn-Http-H-*), answering with the
function's status, headers and body. If the function process dies, it is restarted."""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from onnxfn.tools.dev.agent import Function

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade",
              "proxy-connection", "trailer"}


class Front(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, env: dict[str, str]):
        self.env = env
        self.function = Function(env=env).start()
        self.lock = threading.Lock()  # Fn sends one call at a time per container
        super().__init__(address, _Handler)

    def forward(self, method: str, url: str, headers: dict[str, str], body: bytes):
        with self.lock:
            if not self.function.alive:
                self.function.stop()
                self.function = Function(env=self.env).start()
            return self.function.call(body, headers.get("content-type"), method=method, url=url,
                                      headers=headers)

    def server_close(self) -> None:
        super().server_close()
        self.function.stop()


class _Handler(BaseHTTPRequestHandler):
    server: Front
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            reply = self.server.forward(self.command, self.path, headers, body)
        except (OSError, RuntimeError) as e:
            self._send(502, {"content-type": "application/json"},
                       json.dumps({"error": f"the function failed: {e}", "code": "function_failed",
                                   "status": 502}).encode())
            return
        self._send(reply.http_status, reply.http_headers, reply.body)

    def _body(self) -> bytes:
        """The request body as bytes: by Content-Length, or de-chunked (as API Gateway hands the function the
        whole body either way). Bytes pass untouched, so binary bodies (the OIP binary extension) do too."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write("onnxfn serve: " + format % args + "\n")


def serve(host: str, port: int, env: dict[str, str]) -> None:
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt  # unwinds serve_forever, so the function process is stopped too
    signal.signal(signal.SIGTERM, stop)
    front = Front((host, port), env)
    print(f"onnxfn serve: http://{host}:{front.server_address[1]} -> function {front.function.entry} "
          f"(MODEL_URI={env.get('MODEL_URI')})", file=sys.stderr, flush=True)
    try:
        front.serve_forever()
    finally:
        front.server_close()
