"""Entry point for a function reached by direct invocation only (fn invoke, OCI SDK): the body is the input."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from onnxfn.fn import invoke_handler as handler  # noqa: E402

__all__ = ["handler"]
