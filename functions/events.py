"""Entry point for a function triggered by Object Storage events only (OCI Events rules or S3
notifications): each uploaded image becomes a stored result."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from onnxfn.fn import events_handler as handler  # noqa: E402

__all__ = ["handler"]
