"""ONNX Runtime in the container: the CPU, the one session factory, artifact choice, the loaded model and its loader."""
