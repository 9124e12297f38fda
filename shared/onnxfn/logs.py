"""Structured logging: one JSON line per call, and quiet libraries.

Never log pixel data, request bodies or DICOM tags: a call's line holds ids, timings,
sizes and outcomes only.
"""
from __future__ import annotations

import json
import logging
import warnings
import sys

NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "PIL", "fdk", "asyncio", "onnxruntime",
         "pylibjpeg", "libjpeg", "openjpeg", "rle")  # pydicom's decoder plugins log each decode at DEBUG
#: DICOM libraries quote element values (UIDs, names: patient data) in their warnings and errors, and highdicom
#: logs each source's SOP Instance UID at INFO: they are silenced; onnxfn's own errors say what failed
SILENT = ("pydicom", "highdicom")
_configured = False


def setup(level: str = "INFO") -> logging.Logger:
    """Quiet the libraries (the fdk sets the root logger to DEBUG) and give onnxfn its own handler."""
    global _configured
    logger = logging.getLogger("onnxfn")
    logger.setLevel(level.upper())
    if not _configured:
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
        silence()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        _configured = True
    return logger


def silence() -> None:
    """Silence the `SILENT` libraries' loggers and warnings. Called again after pydicom is first imported: its
    import sets its logger back to WARNING."""
    for name in SILENT:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")  # their warnings go to stderr too


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields) -> None:
    """Log one JSON line {"event": name, **fields} at `level`; values JSON cannot hold are written as str, and
    nothing is serialised when the level is off."""
    if logger.isEnabledFor(level):
        logger.log(level, json.dumps({"event": name, **fields}, separators=(",", ":"), default=str))
