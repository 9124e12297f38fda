"""Bounded memory under the real fdk in a real v1 memory cgroup: images that pass the body and pixel limits are
answered whole, tiled or refused with 413 insufficient_memory, and never OOM-kill the function."""
from __future__ import annotations

import base64
import io
import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from onnxfn.tools.dev.agent import Function
from tests.support.cgroups import FDK
from tests.support.images import lesion_png
from tests.support.models import MODELS
MB = 1 << 20


def unet(tmp_path, tile: int | None):
    bundle = tmp_path / f"unet-{tile}"
    shutil.copytree(MODELS / "lesion-unet", bundle)
    if tile:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["inputs"][0]["image"]["tiling"] = {"tile": [tile, tile], "overlap": 0.25}
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.fixture
def limited(memory_cgroup):
    """start(bundle, megabytes) -> a function under the real fdk inside a memory cgroup of that limit."""
    started = []

    def start(bundle, megabytes: int) -> Function:
        (memory_cgroup / "memory.limit_in_bytes").write_text(str(megabytes * MB))
        try:
            (memory_cgroup / "memory.memsw.limit_in_bytes").write_text(str(megabytes * MB))
        except OSError:
            pass
        fn = Function(env={"MODEL_URI": str(bundle), "ONNXFN_BAKED_BUNDLE": "", "ONNXFN_THREADS": "1"},
                      command=[sys.executable, "-c", FDK, str(memory_cgroup)], timeout=120).start()
        started.append(fn)
        return fn
    yield start
    for fn in started:
        fn.stop()


def oom_kills(group) -> int:
    lines = dict(line.split() for line in (group / "memory.oom_control").read_text().splitlines())
    return int(lines.get("oom_kill", 0))


def predict(fn: Function, size: int):
    return fn.call(lesion_png(size), "image/png", method="POST", url="/predict", deadline=60)


def test_at_256_mb_every_size_is_answered_and_nothing_is_killed(limited, memory_cgroup, tmp_path):
    fn = limited(unet(tmp_path, 256), 256)
    answers = {size: predict(fn, size) for size in (512, 1024, 2048, 4096)}
    assert answers[512].http_status == 200
    for size, reply in answers.items():
        assert reply.http_status in (200, 413), (size, reply.body[:300])
        body = reply.json()
        if reply.http_status == 413:
            assert body["code"] == "insufficient_memory"
            assert f"{size}x{size} 16-bit" in body["error"] and "MB free of its 256 MB" in body["error"]
        else:
            assert body["result"]["mask"]["width"] == size  # tiled or whole, the mask is the image's size
    assert answers[4096].http_status == 413  # even tiled it cannot fit beside the runtime in 256 MB
    assert fn.alive and oom_kills(memory_cgroup) == 0
    assert int((memory_cgroup / "memory.max_usage_in_bytes").read_text()) < 256 * MB
    assert predict(fn, 512).http_status == 200  # and the next call is served as before


def test_tiling_answers_what_whole_inference_could_not(limited, memory_cgroup, tmp_path):
    fn = limited(unet(tmp_path, 256), 512)
    reply = predict(fn, 2048)
    assert reply.http_status == 200, reply.body[:300]
    body = reply.json()
    assert body["tiling"] == {"tile": [256, 256], "overlap": 0.25, "blend": "gaussian"}
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["result"]["mask"]["data"]))))
    assert mask.shape == (2048, 2048)
    assert fn.alive and oom_kills(memory_cgroup) == 0


def test_without_tiling_a_large_image_is_refused_with_what_to_do(limited, memory_cgroup, tmp_path):
    fn = limited(unet(tmp_path, None), 256)
    reply = predict(fn, 2048)
    assert reply.http_status == 413
    body = reply.json()
    assert body["code"] == "insufficient_memory" and "package the model with tiling" in body["error"]
    assert "downscale it to about" in body["error"]
    assert fn.alive and oom_kills(memory_cgroup) == 0
    assert predict(fn, 256).http_status == 200
