"""storage/retry.py: transient faults retried within the deadline, refusals raised at once."""
from __future__ import annotations

import time

import pytest

from onnxfn.errors import StorageUnavailable
from onnxfn.storage.retry import retrying


def flaky(errors: list[StorageUnavailable]):
    calls = []

    def action():
        calls.append(time.monotonic())
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"
    return action, calls


def test_transient_faults_are_retried_until_they_pass():
    action, calls = flaky([StorageUnavailable("503 SlowDown"), StorageUnavailable("reset")])
    assert retrying(action, time.monotonic() + 10, "the manifest") == "ok" and len(calls) == 3


def test_a_refusal_is_not_retried_however_much_time_is_left():
    refusal = StorageUnavailable("object storage refused s3://b/../x: 400 BadRequest", status=502, code="storage_error")
    action, calls = flaky([refusal, refusal])
    with pytest.raises(StorageUnavailable) as raised:
        retrying(action, time.monotonic() + 30, "the object's HEAD")
    assert raised.value is refusal and len(calls) == 1


def test_a_transient_fault_past_the_deadline_says_so():
    action, calls = flaky([StorageUnavailable("503 SlowDown")] * 10)
    with pytest.raises(StorageUnavailable, match="gave up on the manifest before the call's deadline"):
        retrying(action, time.monotonic() + 0.5, "the manifest")
    assert 2 <= len(calls) <= 4
