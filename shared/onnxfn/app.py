"""Routes and the one place errors become answers. Platform-neutral: an adapter (Fn
today) builds a `Request` and sends back the `Reply`.

Gateway routes (real HTTP statuses):
  POST /predict                                  image -> task answer
  POST /v2/models/{name}[/versions/{v}]/infer    OIP tensors -> OIP outputs
  GET  /v2/models/{name}[/versions/{v}]          OIP model metadata
  GET  /v2/models/{name}[/versions/{v}]/ready    200 once the model is loaded
  GET  /v2/health/live, /v2/health/ready, /v2    liveness, readiness, server metadata
A direct invocation has no route: OIP JSON goes to infer, anything else to predict.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote, urlsplit

from onnxfn import __version__, logs
from onnxfn.errors import MethodNotAllowed, NotFound, OnnxfnError, UnsupportedMediaType
from onnxfn.settings import Settings

JSON = "application/json"


@dataclass
class Request:
    method: str
    url: str                              # path and query, no host
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    call_id: str = ""
    gateway: bool = False
    deadline: float | None = None         # the call's deadline as time.monotonic()
    kind: str = ""                        # what a direct invocation turned out to be: event, infer, predict


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class App:
    def __init__(self, settings_factory: Callable[[], Settings] = Settings.from_env):
        self._settings_factory = settings_factory
        self._service = None
        self._runner = None
        self._building = threading.Lock()
        self.logger = logs.setup()

    @property
    def service(self):
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
                    from onnxfn.runtime.session import IMPORTS
                    with IMPORTS:
                        from onnxfn.service import Service  # numpy and the core load here, not at import
                    self._service = Service(settings, self._runner)
        return self._service

    def handle(self, request: Request) -> Reply:
        """Answer one call; never raises."""
        started = time.perf_counter()
        route = ["invoke" if not request.gateway else "unrouted"]
        if self._service is None:  # the first call starts the load
            try:
                self.service_for(request.deadline, inference=_runs_inference(request))
            except Exception:
                pass  # answered by the route that needs the model (liveness does not)
        try:
            if request.gateway:
                reply = self._route(request, route)
            else:
                reply = Reply(200, self._invoke(request))
        except OnnxfnError as e:
            reply = self._error(e)
        except Exception as e:  # the safety net: nothing escapes to the fdk
            self.logger.exception("unexpected error")
            reply = self._error(OnnxfnError(f"unexpected {type(e).__name__}: {e}"))
        self._log(request, request.kind or route[0], reply, started)
        return reply

    def refuse(self, request: Request, error: OnnxfnError) -> Reply:
        """Answer a call the adapter already knows is wrong."""
        reply = self._error(error)
        self._log(request, "refused", reply, time.perf_counter())
        return reply

    # -- routing ------------------------------------------------------------------------
    def _invoke(self, request: Request) -> dict:
        """A direct invocation: an object storage event, OIP tensors, or an image."""
        from onnxfn.codecs.payload import media_type, sniff
        kind, _ = media_type(request.headers.get("content-type"))
        if kind == JSON or kind.endswith("+json") or sniff(request.body) == "json":
            if _looks_like_event(request.body):
                request.kind = "event"
                return self.events(_json(request.body), request.deadline)
            if b'"inputs"' in request.body:
                request.kind = "infer"
                return self.service.infer(_json(request.body), deadline=request.deadline)
        request.kind = "predict"
        return self.service.predict(request.body, request.headers.get("content-type"), request.deadline)

    def events(self, document, deadline: float | None) -> dict:
        """An object storage event: each object in, a stored result out."""
        from onnxfn.events.processor import Processor
        request_events = Processor(self.service, self.service.settings)
        return request_events.handle(document, deadline)

    def _route(self, request: Request, route: list[str]) -> Reply:
        path = unquote(urlsplit(request.url).path) or "/"
        base = self._base_path()
        if base and (path == base or path.startswith(base + "/")):
            path = path[len(base):] or "/"
        path = path.rstrip("/") or "/"
        for pattern, methods, name in ROUTES:
            match = pattern.fullmatch(path)
            if not match:
                continue
            route[0] = name
            handler = methods.get(request.method.upper())
            if handler is None:
                allowed = tuple(sorted(methods))
                raise MethodNotAllowed(f"{request.method} is not allowed on {path}; use {', '.join(allowed)}",
                                       allowed)
            status, body = handler(self, request, **match.groupdict())
            return Reply(status, body)
        raise NotFound(f"no route {path}; routes are POST /predict, POST /v2/models/{{name}}/infer, "
                       "GET /v2/models/{name}, GET /v2/health/live, GET /v2/health/ready", code="route_not_found")

    def _base_path(self) -> str:
        try:
            return self.service.settings.base_path
        except OnnxfnError:
            return ""

    def _error(self, error: OnnxfnError) -> Reply:
        headers = {}
        if isinstance(error, MethodNotAllowed):
            headers["Allow"] = ", ".join(error.allowed)
        if error.status == 503:
            headers["Retry-After"] = "2"
        return Reply(error.status, {"error": error.message, "code": error.code, "status": error.status}, headers)

    def _log(self, request: Request, route: str, reply: Reply, started: float) -> None:
        body = reply.body
        fields = {"call_id": request.call_id, "route": route, "method": request.method if request.gateway else None,
                  "status": reply.status, "outcome": "ok" if reply.status < 400 else body.get("code"),
                  "bytes_in": len(request.body), "ms": round((time.perf_counter() - started) * 1000, 3)}
        params = body.get("parameters") if isinstance(body.get("parameters"), dict) else body
        for key in ("cold", "timings_ms"):
            if key in params:
                fields["cold_start" if key == "cold" else key] = params[key]
        if reply.status >= 400:
            fields["error"] = body.get("error")
        logs.event(self.logger, "call", **{k: v for k, v in fields.items() if v is not None})


def _runs_inference(request: Request) -> bool:
    """Whether this call will run the model (direct invocations, /predict, /infer), not just look at it."""
    if not request.gateway:
        return True
    path = urlsplit(request.url).path.rstrip("/")
    return request.method.upper() == "POST" and (path.endswith("/predict") or path.endswith("/infer"))


def _looks_like_event(body: bytes) -> bool:
    head = body[:4096]
    return b'"eventType"' in head or b'"cloudEventsVersion"' in head or b'"Records"' in head


def _json(body: bytes):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        from onnxfn.errors import BadRequest
        raise BadRequest(f"the body is not valid JSON: {e}", code="invalid_json") from None


# -- route handlers: (app, request, **path parameters) -> (status, body) --------------------

def _predict(app: App, request: Request) -> tuple[int, dict]:
    return 200, app.service.predict(request.body, request.headers.get("content-type"), request.deadline)


def _infer(app: App, request: Request, name: str, version: str | None = None) -> tuple[int, dict]:
    if "inference-header-content-length" in request.headers:
        raise UnsupportedMediaType("the OIP binary tensor extension is not supported; send JSON tensors",
                                   code="binary_unsupported")
    return 200, app.service.infer(_json(request.body), name, version, request.deadline)


def _metadata(app: App, request: Request, name: str, version: str | None = None) -> tuple[int, dict]:
    return 200, app.service.metadata(name, version, request.deadline)


def _model_ready(app: App, request: Request, name: str, version: str | None = None) -> tuple[int, dict]:
    app.service.model(None, name, version, request.deadline)
    return 200, {"name": name, "ready": True}


def _live(app: App, request: Request) -> tuple[int, dict]:
    return 200, {"live": True}


def _ready(app: App, request: Request) -> tuple[int, dict]:
    """Ready means the model is loaded: this call loads it if needed (it is the cold start)."""
    try:
        app.service.model(deadline=request.deadline)
    except OnnxfnError as e:
        return 503, {"ready": False, "error": e.message, "code": e.code, "status": 503}
    return 200, {"ready": True}


def _server(app: App, request: Request) -> tuple[int, dict]:
    return 200, {"name": "onnxfn", "version": __version__, "extensions": []}


_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
ROUTES = [
    (re.compile(r"/predict"), {"POST": _predict}, "predict"),
    (re.compile(_MODEL + r"/infer"), {"POST": _infer}, "infer"),
    (re.compile(_MODEL + r"/ready"), {"GET": _model_ready}, "model_ready"),
    (re.compile(_MODEL), {"GET": _metadata}, "metadata"),
    (re.compile(r"/v2/health/live"), {"GET": _live}, "live"),
    (re.compile(r"/v2/health/ready"), {"GET": _ready}, "ready"),
    (re.compile(r"/v2"), {"GET": _server}, "server"),
]
