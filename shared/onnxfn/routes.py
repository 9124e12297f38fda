"""The gateway's routes: a path and method to a handler over the core (`Service`).

  POST /predict                                  image -> task answer
  POST /v2/models/{name}[/versions/{v}]/infer    OIP tensors -> OIP outputs
  GET  /v2/models/{name}[/versions/{v}]          OIP model metadata
  GET  /v2/models/{name}[/versions/{v}]/ready    200 once the model is loaded
  GET  /v2/health/live, /v2/health/ready, /v2    liveness, readiness, server metadata

Each handler takes the app, the request and the path's parameters and returns a `Reply`; it reaches the
core through `app.service` only when it needs it (liveness never does, so it answers even when the
configuration is wrong)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from onnxfn import __version__
from onnxfn.codecs import binary
from onnxfn.codecs.payload import check_size, media_type
from onnxfn.errors import BadRequest, MethodNotAllowed, NotFound, OnnxfnError


@dataclass
class Request:
    """One call, whatever its trigger: what an adapter (Fn today) hands the app."""
    method: str
    url: str                              # path and query, no host
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    call_id: str = ""
    gateway: bool = False                 # an API Gateway call (routed, real HTTP statuses)
    deadline: float | None = None         # the call's deadline as time.monotonic()

    @property
    def content_type(self) -> str | None:
        """The Content-Type header, if any."""
        return self.headers.get("content-type")

    @property
    def wants_dicom(self) -> bool:
        """Whether the Accept header prefers application/dicom to JSON (`accepts_dicom`)."""
        return accepts_dicom(self.headers.get("accept"))


@dataclass
class Reply:
    """One answer (status, JSON body, headers) and what the call's log line says of it: the route or,
    for a direct invocation, what it turned out to be (event, infer, predict), and for inference the
    cold flag and timings. `tensors`, when not empty, is binary tensor data that follows the JSON (the
    OIP binary extension): the body is then the JSON, then those bytes. `document`, when set, is the answer
    itself in another form (a DICOM SEG or SR): its bytes are sent, with `media_type`, and `body` is what the
    log line reads of the call."""
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    route: str = ""
    cold: bool | None = None
    timings_ms: dict | None = None
    tensors: list[bytes] = field(default_factory=list)
    document: bytes | None = field(default=None, repr=False)
    media_type: str | None = None
    _bytes: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def error(cls, error: OnnxfnError, route: str = "") -> "Reply":
        """The one way an error becomes an answer."""
        return cls(error.status, error.body(), error.headers(), route)

    def encoded(self) -> bytes:
        """The body as compact JSON bytes; with binary tensors, the JSON then their bytes, and the JSON's length
        goes into the `Inference-Header-Content-Length` header; a `document`, its bytes. Encoded once."""
        if self.document is not None:
            return self.document
        if self._bytes is None:
            head = json.dumps(self.body, separators=(",", ":")).encode()
            if self.tensors:
                self.headers[binary.RESPONSE_HEADER] = str(len(head))
            self._bytes = b"".join([head, *self.tensors]) if self.tensors else head
        return self._bytes

    @property
    def content_type(self) -> str:
        """application/json, application/octet-stream for an answer carrying binary tensors, or a document's
        media type."""
        if self.document is not None and self.media_type:
            return self.media_type
        return binary.CONTENT_TYPE if self.tensors else "application/json"

    @classmethod
    def answer(cls, answer, dicom: bool = False) -> "Reply":
        """A `service.Answer` as a 200: its JSON (and binary tensors), or with `dicom` its DICOM result."""
        if dicom and answer.dicom is not None:
            return cls(200, answer.body, cold=answer.cold, timings_ms=answer.timings_ms,
                       document=answer.dicom.data, media_type=answer.dicom.media_type)
        return cls(200, answer.body, cold=answer.cold, timings_ms=answer.timings_ms, tensors=answer.tensors)


def parse_json(body: bytes):
    """The body as JSON, or a 400 naming what is wrong with it."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("the body's JSON nests too deeply", code="invalid_json") from None


JSON, DICOM = "application/json", "application/dicom"


def accepts_dicom(accept: str | None) -> bool:
    """Whether an Accept header asks for application/dicom over application/json: DICOM's quality (from its
    most specific matching range: exact, `application/*`, `*/*`) must be above zero and above JSON's. No
    header, `*/*`, ties and types neither matches answer JSON, the default (a server may disregard Accept)."""
    if not accept:
        return False
    ranges = []
    for part in accept.split(","):
        kind, params = media_type(part)
        try:
            q = min(max(float(params.get("q", "1")), 0.0), 1.0)
        except ValueError:
            q = 0.0  # an unreadable weight counts for nothing
        if kind:
            ranges.append((kind, q))

    def quality(media: str) -> float:
        kind = media.split("/")[0]
        for pattern in (media, kind + "/*", "*/*"):  # the most specific range that matches decides
            found = [q for k, q in ranges if k == pattern]
            if found:
                return max(found)
        return 0.0
    dicom = quality(DICOM)
    return dicom > 0 and dicom > quality(JSON)


def path_of(request: Request, base_path: str = "") -> str:
    """The request's path as routes see it: unquoted, the deployment's base path removed, no trailing /."""
    try:
        path = unquote(urlsplit(request.url).path) or "/"
    except ValueError:  # urlsplit refuses some URLs ("//[x" is an invalid IPv6 host)
        raise NotFound(f"the request URL {request.url[:200]!r} cannot be parsed", code="route_not_found") from None
    if base_path and (path == base_path or path.startswith(base_path + "/")):
        path = path[len(base_path):] or "/"
    return path.rstrip("/") or "/"


def runs_inference(request: Request) -> bool:
    """Whether this call will run the model (direct invocations, /predict, /infer), not just look at it."""
    if not request.gateway:
        return True
    path = urlsplit(request.url).path.rstrip("/")
    return request.method.upper() == "POST" and (path.endswith("/predict") or path.endswith("/infer"))


@dataclass
class Match:
    """A route matched by a path: its name, its handler for the request's method (None: not allowed)
    and the path's parameters."""
    name: str
    handler: Callable[..., Reply] | None
    params: dict
    allowed: tuple[str, ...]
    path: str

    def answer(self, app, request: Request) -> Reply:
        """Run the handler; a method the route does not take is a 405 naming the ones it does."""
        if self.handler is None:
            raise MethodNotAllowed(f"{request.method} is not allowed on {self.path}; use {', '.join(self.allowed)}",
                                   self.allowed)
        return self.handler(app, request, **self.params)


def find(method: str, path: str) -> Match:
    """The route for `path` (as `path_of` gives it); no route is a 404 listing the routes."""
    for pattern, methods, name in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return Match(name, methods.get(method.upper()), match.groupdict(), tuple(sorted(methods)), path)
    raise NotFound(f"no route {path}; routes are POST /predict, POST /v2/models/{{name}}/infer, "
                   "GET /v2/models/{name}, GET /v2/health/live, GET /v2/health/ready", code="route_not_found")


# -- handlers: (app, request, **path parameters) -> Reply ----------------------------------------

def predict(app, request: Request) -> Reply:
    """POST /predict: an image in, the task's answer out; for a tensor bundle, `?binary_data_output=true` asks
    for the outputs as OIP binary data (as `/infer`'s `binary_data_output` parameter does); `Accept:
    application/dicom` for a DICOM input's answer as a DICOM SEG or SR (406 when it has none)."""
    binary_output = parse_qs(urlsplit(request.url).query).get("binary_data_output", [""])[-1].lower() == "true"
    return predicted(app, request, binary_output)


def predicted(app, request: Request, binary_output: bool = False) -> Reply:
    """The task's answer to an image call (a gateway's /predict or a direct invocation); `Accept:
    application/dicom` answers the DICOM SEG or SR itself."""
    from onnxfn.service import DICOM_REQUIRED
    dicom = request.wants_dicom
    answer = app.service.predict(request.body, request.content_type, request.deadline, binary_output=binary_output,
                                 dicom=DICOM_REQUIRED if dicom else None)
    return Reply.answer(answer, dicom)


def infer(app, request: Request, name: str | None = None, version: str | None = None) -> Reply:
    """POST /v2/models/{name}/infer: OIP tensors in and out, as JSON or with the binary extension (a request
    with the Inference-Header-Content-Length header; outputs asked for as binary)."""
    header = request.headers.get(binary.HEADER)
    check_size(request.body, app.service.settings.max_body_bytes)  # before parsing: JSON costs ~10x its size
    document = binary.frame(request.body, header) if header is not None else parse_json(request.body)
    answer = app.service.infer(document, name, version, request.deadline)
    return Reply(200, answer.body, cold=answer.cold, timings_ms=answer.timings_ms, tensors=answer.tensors)


def metadata(app, request: Request, name: str, version: str | None = None) -> Reply:
    """GET /v2/models/{name}: OIP model metadata."""
    return Reply(200, app.service.metadata(name, version, request.deadline))


def model_ready(app, request: Request, name: str, version: str | None = None) -> Reply:
    """GET /v2/models/{name}/ready: 200 once the named model is loaded (this call loads it if needed)."""
    app.service.model(None, name, version, request.deadline)
    return Reply(200, {"name": name, "ready": True})


def live(app, request: Request) -> Reply:
    """GET /v2/health/live: the process answers (the model and configuration are not looked at)."""
    return Reply(200, {"live": True})


def ready(app, request: Request) -> Reply:
    """Ready means the model is loaded: this call loads it if needed (it is the cold start)."""
    try:
        app.service.model(deadline=request.deadline)
    except OnnxfnError as e:
        return Reply(503, {"ready": False, **e.body(status=503)})
    return Reply(200, {"ready": True})


def server(app, request: Request) -> Reply:
    """GET /v2: OIP server metadata."""
    return Reply(200, {"name": "onnxfn", "version": __version__, "extensions": ["binary_tensor_data"]})


_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
ROUTES: list[tuple[re.Pattern, dict[str, Callable[..., Reply]], str]] = [
    (re.compile(r"/predict"), {"POST": predict}, "predict"),
    (re.compile(_MODEL + r"/infer"), {"POST": infer}, "infer"),
    (re.compile(_MODEL + r"/ready"), {"GET": model_ready}, "model_ready"),
    (re.compile(_MODEL), {"GET": metadata}, "metadata"),
    (re.compile(r"/v2/health/live"), {"GET": live}, "live"),
    (re.compile(r"/v2/health/ready"), {"GET": ready}, "ready"),
    (re.compile(r"/v2"), {"GET": server}, "server"),
]
