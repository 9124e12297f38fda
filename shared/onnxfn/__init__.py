"""onnxfn: ONNX models served from Oracle Functions (Fn) for single-request imaging inference."""
__version__ = "0.1.0"
