"""One family of errors. Each carries its HTTP status, a stable code and a message
that says what was wrong and what to do; `body()` is the one shape every answer, log line
and event error record gives them."""
from __future__ import annotations


class OnnxfnError(Exception):
    """The base of every error onnxfn answers with: an HTTP status, a stable code and a message."""
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status

    def body(self, **extra) -> dict:
        """The error as answers carry it: ``{"error": message, "code": code, "status": status, **extra}``."""
        return {"error": self.message, "code": self.code, "status": self.status, **extra}

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer needs: ``Allow`` for 405, ``Retry-After`` for 503."""
        headers = {}
        if self.status == 503:
            headers["Retry-After"] = "2"
        return headers


class BadRequest(OnnxfnError):
    status, code = 400, "bad_request"


class NotFound(OnnxfnError):
    status, code = 404, "not_found"


class MethodNotAllowed(OnnxfnError):
    status, code = 405, "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...]):
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class PayloadTooLarge(OnnxfnError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(OnnxfnError):
    status, code = 415, "unsupported_media_type"


class ConfigError(OnnxfnError):
    """The function's configuration (environment) is wrong: fix it and redeploy."""
    status, code = 500, "configuration_error"


class BundleError(OnnxfnError):
    """The model bundle is invalid: its manifest, an artifact or its checksum."""
    status, code = 500, "bundle_error"


class InferenceError(OnnxfnError):
    status, code = 500, "inference_failed"


class ServiceUnavailable(OnnxfnError):
    status, code = 503, "unavailable"


class StorageUnavailable(OnnxfnError):
    """Object storage could not be reached or failed (5xx, timeout): transient, retried; the next call recovers."""
    status, code = 503, "storage_unavailable"


class LoadTimeout(OnnxfnError):
    """The model could not be loaded before the call's deadline; loading goes on for the next call."""
    status, code = 503, "model_loading"


class ObjectMissing(BundleError):
    """A bucket or object that storage says does not exist."""
    code = "bundle_not_found"


class PreconditionFailed(OnnxfnError):
    """A conditional write lost: the object changed or already exists."""
    status, code = 412, "precondition_failed"
