"""The deployed function: one entry point for every trigger (func.yaml points here).
Gateway calls and direct invocations are told apart by the call itself."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from onnxfn.fn import handler  # noqa: E402

__all__ = ["handler"]
