"""The base of the tests' loopback HTTP servers: 127.0.0.1, a daemon thread per server and per request."""
from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LoopbackServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (`port` 0: any free one), started and stopped by the test."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler, port: int = 0):
        super().__init__(("127.0.0.1", port), handler)
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self):
        """Serve in a daemon thread; returns the server."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.shutdown()
        self.server_close()
