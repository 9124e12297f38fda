"""logs.py: one compact JSON line per event, onnxfn's own handler once, libraries held at WARNING."""
from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from onnxfn import logs


@pytest.fixture
def fresh(monkeypatch):
    """logs.setup as in a new process (its handler writes to the captured stderr); restored afterwards."""
    logger = logging.getLogger("onnxfn")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers.clear()
    monkeypatch.setattr(logs, "_configured", False)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_setup_quiets_libraries_and_adds_one_handler(fresh):
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    logger = logs.setup("INFO")
    ours = lambda: [h for h in logger.handlers if type(h) is logging.StreamHandler]  # noqa: E731 (pytest adds its own)
    assert logs.setup("DEBUG") is logger and len(ours()) == 1 and logger.level == logging.DEBUG
    assert all(logging.getLogger(name).level == logging.WARNING for name in logs.NOISY)
    assert logger.propagate is False


def test_event_is_one_compact_json_line_and_respects_the_level(fresh, capsys):
    logger = logs.setup("INFO")
    logs.event(logger, "call", route="predict", status=200, when=dt.date(2026, 12, 2))
    logs.event(logger, "noise", logging.DEBUG, detail="hidden")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and ", " not in lines[0] and '": ' not in lines[0]
    assert json.loads(lines[0]) == {"event": "call", "route": "predict", "status": 200, "when": "2026-12-02"}
