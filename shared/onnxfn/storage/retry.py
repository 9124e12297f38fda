"""Retrying transient storage faults with backoff, never past the call's deadline."""
from __future__ import annotations

import time

from onnxfn.errors import StorageUnavailable


def retrying(action, deadline: float, what: str):
    """Run action(); on a transient StorageUnavailable retry with backoff while the deadline allows. A refusal
    that is not transient (code storage_error: storage answered a 4xx that retrying cannot change) is raised
    at once."""
    delay = 0.2
    while True:
        try:
            return action()
        except StorageUnavailable as e:
            if e.code == "storage_error":
                raise
            if time.monotonic() + delay >= deadline:
                raise StorageUnavailable(f"{e.message} (gave up on {what} before the call's deadline)",
                                         status=e.status, code=e.code) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
