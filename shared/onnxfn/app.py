"""The app: one call in, one `Reply` out, whatever the trigger. Platform-neutral: an adapter (Fn
today, `fn.py`) builds a `Request` and sends back the `Reply`.

A gateway call is routed (`routes.py`); a direct invocation has no route: an object storage
event goes to the events processor, OIP JSON (or OIP with the binary extension's
Inference-Header-Content-Length header) to inference, anything else to predict. Every
error becomes an answer here, through `Reply.error`, and every call writes one log line.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from onnxfn import logs, routes
from onnxfn.errors import OnnxfnError, ResponseTooLarge
from onnxfn.codecs.payload import check_size
from onnxfn.routes import Reply, Request
from onnxfn.settings import Settings

__all__ = ["App", "Reply", "Request"]
JSON = "application/json"


class App:
    """Answers calls: builds the core on the first call (the model starts loading before the core's
    heavy imports), routes or dispatches each call, turns every error into an answer and logs it."""

    def __init__(self, settings_factory: Callable[[], Settings] = Settings.from_env):
        self._settings_factory = settings_factory
        self._service = None
        self._runner = None
        self._building = threading.Lock()
        self.logger = logs.setup()

    @property
    def service(self):
        """The core (`service.Service`), built on first use; a configuration error raises here."""
        return self.service_for(None)

    def service_for(self, deadline: float | None, inference: bool = False):
        """The core, built once, on the first call: the model starts loading (fetch first) before numpy,
        Pillow and the core are imported, so that the cold start's download overlaps them."""
        if self._service is None:
            with self._building:  # Fn sends one call at a time; `onnxfn serve` and tests may not
                if self._service is None:
                    settings = self._settings_factory()
                    self.logger = logs.setup(settings.log_level)
                    if self._runner is None:
                        from onnxfn.runtime.loader import Runner  # imports no numpy
                        self._runner = Runner(settings)
                    self._runner.start(deadline, inference_waits=inference)
                    from onnxfn.runtime import session
                    # numpy and onnxruntime first, while the load thread reads and verifies the artifact (no
                    # GIL held); then the rest of the core while it builds the session (no GIL held either)
                    try:
                        session.engine()
                    except ImportError:  # the load fails on it too, and tells the calls that need the model
                        pass
                    from onnxfn.service import Service  # the core loads here, not at import (numpy is in)
                    self._service = Service(settings, self._runner)
        return self._service

    def handle(self, request: Request) -> Reply:
        """Answer one call; never raises."""
        started = time.perf_counter()
        if self._service is None:  # the first call starts the load
            try:
                self.service_for(request.deadline, inference=routes.runs_inference(request))
            except Exception:
                pass  # answered by the route that needs the model (liveness does not)
        route = "unrouted" if request.gateway else "invoke"
        try:
            if request.gateway:
                match = routes.find(request.method, routes.path_of(request, self._base_path()))
                route = match.name
                reply = match.answer(self, request)
            else:
                check_size(request.body, self.service.settings.max_body_bytes)  # before any parsing
                route, document = _invocation(request)
                reply = self._invoke(route, request, document)
        except OnnxfnError as e:
            reply = Reply.error(e)
        except BaseException as e:  # the safety net: nothing escapes to the fdk (a compiled library's panic either)
            if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            self.logger.exception("unexpected error")
            reply = Reply.error(OnnxfnError(f"unexpected {type(e).__name__}: {e}"))
        if reply.status < 400:
            reply = self._bounded(reply)
        reply.route = route
        self._log(request, reply, started)
        if self._runner is not None:
            try:
                self._runner.settle()  # a session built for the cold start is replaced while Fn waits for the next call
            except Exception:  # no thread to spare: the first session stays, and this call's answer is made
                self.logger.exception("settle failed")
        return reply

    def _bounded(self, reply: Reply) -> Reply:
        """The answer, or a 413 when its bytes exceed ONNXFN_MAX_RESPONSE_BYTES (the platform would drop it):
        the last check, on the exact bytes; outputs are estimated before they are built (`service.check_answer`)."""
        # no core after the first call's attempt: a configuration error (liveness still answers, default limit)
        limit = (self._service.settings if self._service is not None else Settings).max_response_bytes
        size = len(reply.encoded())
        if size <= limit:
            return reply
        error = ResponseTooLarge(f"the answer is {size:,} bytes, over the limit of {limit:,} "
                                 "(ONNXFN_MAX_RESPONSE_BYTES): send a smaller input, or use the event route, which "
                                 "writes answers to storage")
        return Reply(error.status, error.body(), error.headers(), cold=reply.cold, timings_ms=reply.timings_ms)

    def refuse(self, request: Request, error: OnnxfnError) -> Reply:
        """Answer a call the adapter already knows is wrong."""
        reply = Reply.error(error, route="refused")
        self._log(request, reply, time.perf_counter())
        return reply

    def events(self, document, deadline: float | None) -> dict:
        """An object storage event: each object in, a stored result out."""
        from onnxfn.events.processor import Processor
        return Processor(self.service, self.service.settings).handle(document, deadline)

    def _invoke(self, kind: str, request: Request, document) -> Reply:
        """A direct invocation, once `_invocation` has told what it is."""
        if kind == "event":
            return Reply(200, self.events(document, request.deadline))
        if kind == "infer":
            return Reply.answer(self.service.infer(document, deadline=request.deadline))
        return routes.predicted(self, request)

    def _base_path(self) -> str:
        try:
            return self.service.settings.base_path
        except OnnxfnError:
            return ""

    def _log(self, request: Request, reply: Reply, started: float) -> None:
        fields = {"call_id": request.call_id, "route": reply.route, "method": request.method if request.gateway else None,
                  "status": reply.status, "outcome": "ok" if reply.status < 400 else reply.body.get("code"),
                  "bytes_in": len(request.body), "ms": round((time.perf_counter() - started) * 1000, 3),
                  "cold_start": reply.cold, "timings_ms": reply.timings_ms,
                  "error": reply.body.get("error") if reply.status >= 400 and _loggable(reply) else None}
        logs.event(self.logger, "call", **{k: v for k, v in fields.items() if v is not None})


def _loggable(reply: Reply) -> bool:
    """Whether an error's message may go to the log: an event's may name the object it failed on (a key can
    hold patient data), so only its code is logged, unless it is about the configuration."""
    return reply.route != "event" or reply.body.get("code") == "configuration_error"


def _invocation(request: Request) -> tuple[str, object]:
    """What a direct invocation is: ("event", its document), ("infer", the OIP document, or the framed request
    when the binary extension's header came with it) or ("predict", None)."""
    from onnxfn.codecs import binary
    from onnxfn.codecs.payload import media_type, sniff
    if binary.HEADER in request.headers:
        return "infer", binary.frame(request.body, request.headers[binary.HEADER])
    kind, _ = media_type(request.content_type)
    if kind == JSON or kind.endswith("+json") or sniff(request.body) == "json":
        from onnxfn.events.envelopes import is_event, might_be_event  # JSON only: an image skips events
        if might_be_event(request.body):
            document = routes.parse_json(request.body)
            if is_event(document):
                return "event", document
            if isinstance(document, dict) and "inputs" in document:
                return "infer", document
        if b'"inputs"' in request.body:
            return "infer", routes.parse_json(request.body)
    return "predict", None
