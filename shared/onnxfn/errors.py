"""One family of errors. Each carries its HTTP status, a stable code and a message
that says what was wrong and what to do; `body()` is the one shape every answer, log line
and event error record gives them."""
from __future__ import annotations


class OnnxfnError(Exception):
    """The base of every error onnxfn answers with: an HTTP status, a stable code and a message. Raised as
    itself only for an unexpected failure (a bug): report it with the call id from the log."""
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
    """The request is wrong: an empty, corrupt or truncated image, malformed JSON or base64, a bad OIP request,
    an input the model cannot take. Fix the request as the message says; retrying it unchanged fails again."""
    status, code = 400, "bad_request"


class NotFound(OnnxfnError):
    """No such route, model or version here: call a route this function has, with the model name and version
    it serves (the message names them)."""
    status, code = 404, "not_found"


class MethodNotAllowed(OnnxfnError):
    """The route exists but not with this HTTP method: use one of those the `Allow` header lists."""
    status, code = 405, "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...]):
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        """``Allow``: the methods the route takes."""
        return {"Allow": ", ".join(self.allowed)}


class NotAcceptable(OnnxfnError):
    """The answer cannot take the form the request asks for (`Accept: application/dicom`): a DICOM result needs
    a single-frame DICOM input and a segmentation or classification model. Send a DICOM file, or ask for
    application/json."""
    status, code = 406, "not_acceptable"


class PayloadTooLarge(OnnxfnError):
    """The body, or the image its header declares, is over ONNXFN_MAX_BODY_BYTES or ONNXFN_MAX_PIXELS (checked
    before decoding): send a smaller image, or raise the limit."""
    status, code = 413, "payload_too_large"


class InsufficientMemory(PayloadTooLarge):
    """The image is within the body and pixel limits, but inferring it would need more memory than the function
    has (checked from the header, before decoding): the message gives the image's size, the memory it would
    need and the memory the function has. Downscale the image, raise the function's memory, or package the
    model with tiling (sliding-window inference)."""
    code = "insufficient_memory"


class ResponseTooLarge(OnnxfnError):
    """The answer would exceed ONNXFN_MAX_RESPONSE_BYTES (Oracle Functions returns at most 6 MB), refused before
    it is built: ask for fewer outputs, for binary outputs (binary_data_output), send a smaller input, or use
    the event route, which writes answers to storage."""
    status, code = 413, "response_too_large"


class UnsupportedMediaType(OnnxfnError):
    """The body is in a format onnxfn cannot decode (unknown type and bytes, DICOM without pixel data or in a
    transfer syntax no installed decoder handles): send a supported format, or install the decoder named."""
    status, code = 415, "unsupported_media_type"


class ConfigError(OnnxfnError):
    """The function's configuration (environment) is wrong, or storage refused its credentials; the message
    names the variable. Fix the configuration; a retry alone fails again."""
    status, code = 500, "configuration_error"


class BundleError(OnnxfnError):
    """The model bundle is invalid: its manifest, an artifact, its checksum or its pin; the message names the
    field or the artifact. Nothing is cached: repackage or fix the bundle, and the next call loads it again."""
    status, code = 500, "bundle_error"


class InferenceError(OnnxfnError):
    """onnxruntime failed to run the model, or its output does not fit the task the manifest declares: the
    bundle does not match the model; fix the manifest or the model."""
    status, code = 500, "inference_failed"


class ServiceUnavailable(OnnxfnError):
    """The function cannot answer now, for a reason that passes: retry after the `Retry-After` seconds."""
    status, code = 503, "unavailable"


class StorageUnavailable(OnnxfnError):
    """Object storage could not be reached or failed (5xx, timeout), after retries within the call's deadline:
    retry after `Retry-After`; the next call recovers once storage is back. With status 502 (`storage_error`)
    storage refused the request for a reason that is not transient: check the bucket, key and policy."""
    status, code = 503, "storage_unavailable"


class LoadTimeout(OnnxfnError):
    """The model could not be loaded before the call's deadline (a cold start); loading goes on: retry after
    `Retry-After`, and the next call gets the model."""
    status, code = 503, "model_loading"


class ObjectMissing(BundleError):
    """A bucket or object that storage says does not exist: check MODEL_URI (or the event's object) and that
    the credentials may see the bucket."""
    code = "bundle_not_found"


class PreconditionFailed(OnnxfnError):
    """A conditional write lost: the object changed or already exists. Event processing handles it (a
    concurrent delivery wrote the result); callers do not see it."""
    status, code = 412, "precondition_failed"
