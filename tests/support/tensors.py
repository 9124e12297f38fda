"""Tensors as the Open Inference Protocol carries them: one edge-valued [2, 2] sample per datatype."""
from __future__ import annotations

import numpy as np

#: Each OIP datatype's extremes and a few ordinary values (BYTES: empty and non-ASCII strings).
SAMPLES = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 1], [254, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1], [65534, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1], [2**32 - 2, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1], [2**63, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, -1], [0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, -1], [0, 32767]], dtype=np.int16),
    "INT32": np.array([[-2**31, -1], [0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-2**63, -1], [0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-65504.0, 0.5], [0.000244140625, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-3.5, 0.0], [1e-30, 3.0e38]], dtype=np.float32),
    "FP64": np.array([[-1e300, 0.1], [5e-324, 1e300]], dtype=np.float64),
    "BYTES": np.array([["a", ""], ["ünï", "longer text"]], dtype=object),
}
