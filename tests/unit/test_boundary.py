"""What the function imports is one tree, the tools another: serving a call through the deployed entry
point loads no `onnxfn.tools` module, no runtime module names one, and the image leaves them out."""
from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.support.models import ROOT

RUNTIME = ROOT / "shared" / "onnxfn"

SERVE_ONE_CALL = r"""
import importlib.util, io, json, sys
spec = importlib.util.spec_from_file_location("func", sys.argv[1])
func = importlib.util.module_from_spec(spec)
spec.loader.exec_module(func)
from fdk.context import InvokeContext
ctx = InvokeContext("app", "app", "fn", "onnxfn", "call-1", content_type="image/png",
                    headers={"content-type": "image/png"})
response = func.handler(ctx, io.BytesIO(open(sys.argv[2], "rb").read()))
print(json.dumps({"body": json.loads(response.body()),
                  "modules": sorted(m for m in sys.modules if m.startswith("onnxfn")),
                  "stdlib": sorted(m for m in ("uuid", "shutil", "tempfile", "bz2", "lzma") if m in sys.modules)}))
"""


def serve_one_call(**env: str) -> dict:
    """One digit PNG through the deployed entry point in a fresh interpreter: its answer and what it imported."""
    out = subprocess.run([sys.executable, "-c", SERVE_ONE_CALL, str(ROOT / "functions" / "func.py"),
                          str(ROOT / "samples" / "digit-7.png")], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "ONNXFN_THREADS": "1", **env})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["body"]["result"]["label"] == "7"
    return result


def test_a_call_through_the_entry_point_loads_no_tool():
    result = serve_one_call(ONNXFN_BAKED_BUNDLE="", MODEL_URI=str(ROOT / "models" / "digits-cnn"))
    assert "onnxfn.runtime.loader" in result["modules"]  # the call really went through the core
    assert [m for m in result["modules"] if m.startswith("onnxfn.tools")] == []
    # an image's cold path: no events, storage clients, DICOM codecs or 3-D tasks (import time is cold-start time)
    off_path = ("onnxfn.events", "onnxfn.storage.s3", "onnxfn.storage.oci", "onnxfn.storage.par", "onnxfn.storage.http",
                "onnxfn.storage.sigv4", "onnxfn.codecs.dicom", "onnxfn.codecs.tensor", "onnxfn.tasks.volume")
    assert [m for m in result["modules"] if m.startswith(off_path)] == []


def test_no_runtime_module_imports_a_tool():
    offenders = []
    for path in RUNTIME.rglob("*.py"):
        if "tools" in path.relative_to(RUNTIME).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("onnxfn.tools")]
    assert offenders == []


def test_both_images_copy_the_runtime_only():
    layered = (ROOT / "layers" / "Dockerfile.dockerignore").read_text().split()
    assert "!shared/onnxfn/" in layered and "shared/onnxfn/tools/" in layered
    assert layered.index("shared/onnxfn/tools/") > layered.index("!shared/onnxfn/")  # the later rule wins
    fn_build = (ROOT / ".dockerignore").read_text().split()  # `fn deploy` sends the root as the context
    assert "shared/onnxfn/tools/" in fn_build and not any(line.startswith("!") for line in fn_build)
    for needed in ("functions", "shared", "models", "func.yaml", "requirements.txt"):
        assert needed not in fn_build and needed + "/" not in fn_build


def test_a_baked_bundles_cold_call_imports_no_cache_storage_or_tiling():
    """Import time is cold-start time: a baked bundle reads no cache and no store, and an untiled one no tiling."""
    result = serve_one_call(MODEL_URI="", ONNXFN_BAKED_BUNDLE=str(ROOT / "models" / "digits-cnn"))
    assert result["body"]["runtime"]["source"] == "baked"
    assert "onnxfn.bundles.source" in result["modules"]  # resolved, then nothing else of the storage side
    assert [m for m in result["modules"] if m.startswith(("onnxfn.bundles.cache", "onnxfn.storage.store",
                                                          "onnxfn.storage.retry", "onnxfn.tasks.tiling"))] == []
    assert result["stdlib"] == []  # uuid (the cache's), shutil and tempfile (writing bundles), their compressors
