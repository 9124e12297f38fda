"""The Fn adapter: an fdk call (context + body) becomes a `Request`; the `Reply` becomes an
fdk `Response`. Gateway calls (`Fn-Intent: httprequest`) get their real HTTP status through
`Response(status_code=...)`, which the fdk sends as `Fn-Http-Status`; a direct invocation is
answered 200 with its outcome in the body (Fn would turn any other status into 200 anyway).
An answer with binary tensors (OIP binary extension) goes out as bytes, `Content-Type:
application/octet-stream` and `Inference-Header-Content-Length`: the fdk passes a bytes body through
untouched and keeps Content-Type a real header on a gateway call, the other headers going as Fn-Http-H-*."""
from __future__ import annotations

import datetime as dt
import io
import re
import time

from onnxfn.app import App, Reply, Request

_app: App | None = None


def app() -> App:
    """The container's one app, made on the first call."""
    global _app
    if _app is None:
        _app = App()
    return _app


def request(ctx, data: io.BytesIO | None) -> Request:
    """The fdk's call as a `Request`: a gateway call's method, URL and HTTP headers, or a direct invocation."""
    headers = ctx.Headers() or {}
    gateway = _first(headers.get("fn-intent")) == "httprequest"
    source = ctx.HTTPHeaders() if gateway else headers
    body = data.getvalue() if data is not None else b""
    return Request(method=(ctx.Method() or "POST") if gateway else "POST",
                   url=(ctx.RequestURL() or "/") if gateway else "/",
                   headers={k.lower(): _first(v) for k, v in source.items()},
                   body=body, call_id=ctx.CallID() or "", gateway=gateway,
                   deadline=deadline(_first(headers.get("fn-deadline"))))


def deadline(value: str | None) -> float | None:
    """Fn-Deadline (RFC 3339, maybe with nanoseconds) as a time.monotonic() value; None if absent or unreadable."""
    if not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return time.monotonic() + (when - dt.datetime.now(dt.timezone.utc)).total_seconds()


def handler(ctx, data: io.BytesIO = None):
    """Every trigger: gateway calls are routed, direct invocations predict or infer."""
    return _respond(ctx, request(ctx, data))


def gateway_handler(ctx, data: io.BytesIO = None):
    """API Gateway only: a call that did not come through a gateway is refused."""
    call = request(ctx, data)
    if not call.gateway:
        from onnxfn.errors import BadRequest
        return _respond(ctx, call, BadRequest("this function answers API Gateway calls only (Fn-Intent: "
                                              "httprequest); invoke the main entry point instead",
                                              code="gateway_only"))
    return _respond(ctx, call)


def invoke_handler(ctx, data: io.BytesIO = None):
    """Direct invocation only: the body is the input, whatever headers came with it."""
    call = request(ctx, data)
    call.gateway = False
    return _respond(ctx, call)


def events_handler(ctx, data: io.BytesIO = None):
    """Object Storage events only: any other body is refused without touching storage."""
    import json
    from onnxfn.errors import BadRequest
    from onnxfn.events.envelopes import is_event
    call = request(ctx, data)
    call.gateway = False
    try:
        document = json.loads(call.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return _respond(ctx, call, BadRequest(f"the event is not valid JSON: {e}", code="invalid_json"))
    if not is_event(document):
        return _respond(ctx, call, BadRequest("this function handles Object Storage events (an OCI Events envelope "
                                              "or S3 notification Records); send images to the main entry point",
                                              code="event_expected"))
    return _respond(ctx, call)


def _respond(ctx, call: Request, error=None):
    from fdk.response import Response

    reply = app().refuse(call, error) if error else app().handle(call)
    body = reply.encoded()  # first: an answer with binary tensors adds Inference-Header-Content-Length
    headers = {"Content-Type": reply.content_type, **reply.headers}
    return Response(ctx, response_data=body, headers=headers, status_code=_status(call, reply))


def _status(call: Request, reply: Reply) -> int:
    """Gateway calls get their real status. Direct invocations are answered 200 with the outcome in the
    body, except an event whose storage or model failed: 502 makes the platform deliver it again."""
    if call.gateway:
        return reply.status
    return 502 if reply.route == "event" and reply.status >= 500 else 200


def _first(value):
    """Some header values arrive as lists (the gateway repeats host, user-agent, content-type)."""
    if isinstance(value, list):
        return value[0] if value else ""
    return value
