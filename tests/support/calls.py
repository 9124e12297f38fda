"""Calls the tests make to a function under the real fdk (`onnxfn.tools.dev.agent.Function`)."""
from __future__ import annotations

from pathlib import Path

from tests.support.models import DIGIT


def gateway(fn, method: str, url: str, body: bytes = b"", content_type: str | None = None, **headers):
    """One API Gateway call (Fn-Intent: httprequest)."""
    return fn.call(body, content_type, method=method, url=url, headers=headers)


def predict(fn, deadline: float = 30.0):
    """POST /predict of the digit sample through the gateway."""
    return fn.call(DIGIT, "image/png", method="POST", url="/predict", deadline=deadline)


def assert_error(reply, status: int, code: str, *words: str) -> dict:
    """The reply is the error answer `status`/`code` whose message holds every one of `words`."""
    assert reply.http_status == status, reply.body
    body = reply.json()
    assert body["status"] == status and body["code"] == code, body
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]
    return body


def remote_env(uri: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A function serving the bundle at `uri` through a cache of its own, with no baked bundle."""
    return {"MODEL_URI": uri, "ONNXFN_CACHE_DIR": str(tmp_path / "cache"), "ONNXFN_BAKED_BUNDLE": "", **extra}
