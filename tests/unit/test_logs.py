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
    assert all(logging.getLogger(name).level > logging.CRITICAL for name in logs.SILENT)
    assert logger.propagate is False


def test_dicom_libraries_never_log_or_warn_the_values_they_quote(fresh):
    import warnings
    from pydicom.dataset import Dataset
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # as the fdk sets it
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")  # what reaches stderr, the function's log, otherwise
            logs.setup("DEBUG")
            Dataset().SOPInstanceUID = "1.x.55555"  # pydicom logs and warns "Invalid value for VR UI: '1.x.55555'"
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
    assert not [r for r in records if "55555" in r.getMessage()]
    assert not [w for w in shown if "55555" in str(w.message)]


def test_event_is_one_compact_json_line_and_respects_the_level(fresh, capsys):
    logger = logs.setup("INFO")
    logs.event(logger, "call", route="predict", status=200, when=dt.date(2026, 12, 2))
    logs.event(logger, "noise", logging.DEBUG, detail="hidden")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and ", " not in lines[0] and '": ' not in lines[0]
    assert json.loads(lines[0]) == {"event": "call", "route": "predict", "status": 200, "when": "2026-12-02"}


def test_pydicom_stays_silent_when_the_function_imports_it_after_setup():
    import subprocess
    import sys
    code = ("import logging; logging.basicConfig(level=logging.DEBUG)\n"  # the fdk's root logger
            "from onnxfn import logs; logs.setup()\n"
            "from onnxfn.codecs import dicom; dicom._pydicom()\n"  # the first DICOM call imports pydicom
            "from pydicom.dataset import Dataset; Dataset().SOPInstanceUID = '1.x.55555'\n"
            "print('done')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "done", out.stderr[-2000:]
    assert "55555" not in out.stderr
