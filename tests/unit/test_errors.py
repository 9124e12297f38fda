"""errors.py: one family; each error carries its status, a stable code and the headers its answer needs."""
from __future__ import annotations

import inspect

import pytest

from onnxfn import errors
from onnxfn.errors import OnnxfnError

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, OnnxfnError)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_has_a_status_a_code_and_one_body(cls):
    error = cls("what went wrong", ("GET",)) if cls is errors.MethodNotAllowed else cls("what went wrong")
    assert 400 <= error.status < 600 and error.code and error.code == error.code.lower()
    assert error.body() == {"error": "what went wrong", "code": error.code, "status": error.status}
    assert str(error) == "what went wrong"


def test_codes_and_statuses_can_be_given_per_raise():
    error = errors.BadRequest("no pixels", code="empty_image")
    assert (error.status, error.code) == (400, "empty_image")
    moved = errors.StorageUnavailable("refused", status=502, code="storage_error")
    assert moved.body(key="k") == {"error": "refused", "code": "storage_error", "status": 502, "key": "k"}


def test_headers_a_503_and_a_405_need():
    assert errors.LoadTimeout("loading").headers() == {"Retry-After": "2"}
    assert errors.StorageUnavailable("down").headers() == {"Retry-After": "2"}
    assert errors.MethodNotAllowed("no", ("GET", "POST")).headers() == {"Allow": "GET, POST"}
    assert errors.BadRequest("bad").headers() == {}


def test_the_family_tree():
    assert issubclass(errors.ObjectMissing, errors.BundleError)  # a missing object is a bundle fault first
    assert errors.ObjectMissing("x").code == "bundle_not_found" and errors.ObjectMissing("x").status == 500
    assert errors.PreconditionFailed("x").status == 412
