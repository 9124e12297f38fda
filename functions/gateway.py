"""Entry point for a function reached by API Gateway only: routes and real HTTP statuses."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from onnxfn.fn import gateway_handler as handler  # noqa: E402

__all__ = ["handler"]
