"""Inputs as callers send them: encoded images, pydicom's test corpus, OIP JSON, damaged files."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

#: Real-shaped Object Storage event payloads (OCI Events envelopes, S3 notifications).
EVENTS = Path(__file__).resolve().parents[1] / "data" / "events"


def png(array: np.ndarray) -> bytes:
    return encode(array, "PNG")


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def pydicom_file(name: str) -> Path:
    """A file of pydicom's own test corpus (shipped inside the pydicom package)."""
    import pydicom
    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def oip(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": [dict(name=n, datatype=d, shape=s, data=v) for n, d, s, v in inputs],
                       **extra}).encode()


def damage(data: bytes, edits, insert: int) -> bytes:
    """Apply hypothesis-drawn edits (where in [0, 1), byte value, "set" | "cut" | "insert") to a file."""
    out = bytearray(data)
    for where, value, op in edits:
        if not out:
            break
        at = int(where * len(out))
        if op == "set":
            out[at] = value
        elif op == "cut":
            del out[at:]
        else:
            out[at:at] = bytes([value]) * insert
    return bytes(out)


def lesion_png(size: int) -> bytes:
    """A size x size 16-bit PNG of HU + 1024 for the demo U-Net: zeros with a bright square in the middle (a
    'lesion'); a few KB whatever its size, so it passes every body limit."""
    from PIL import Image
    pixels = np.zeros((size, size), dtype=np.uint16)
    q = size // 4
    pixels[q:size - q, q:size - q] = 1024 + 80
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()
