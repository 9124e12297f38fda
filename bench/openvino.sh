#!/usr/bin/env bash
# Run `onnxfn bench` with ONNX Runtime's OpenVINO execution provider.
#
#   bench/openvino.sh BUNDLE_OR_MODEL --out DIR [onnxfn bench options...]
#
# onnxruntime-openvino ships its own `onnxruntime` module (and replaces the plain one), so it lives
# in its own venv, .venv-openvino (made here on first use: onnxruntime-openvino, numpy, pillow,
# pydicom; onnxfn itself comes from shared/ through PYTHONPATH, not installed). Join its results
# with the main venv's run of the same model:
#
#   onnxfn bench BUNDLE --out A && bench/openvino.sh BUNDLE --out B && onnxfn bench --merge A/results.json B/results.json --out C
#
# Set ONNXFN_OPENVINO_VENV to use another venv folder.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${ONNXFN_OPENVINO_VENV:-$ROOT/.venv-openvino}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import onnxruntime as o, sys; sys.exit('OpenVINOExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
    "$VENV/bin/pip" install -q onnxruntime-openvino numpy pillow pydicom
fi
cd "$ROOT"
PYTHONPATH="$ROOT/shared${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m onnxfn.tools.cli bench "$@"
