"""A detection bundle under the real fdk: a PNG in through the gateway and by direct invocation, boxes out
on the received image's pixels."""
from __future__ import annotations

import numpy as np

from onnxfn.tools.package import Options, build
from tests.support.calls import assert_error, gateway
from tests.support.images import png
from tests.support.models import constant_yolo


def test_a_detection_bundle_answers_a_png(function, tmp_path):
    # one raw YOLO output [1, 4+2, 3]: cx, cy, w, h in model pixels (64 x 64), then two class scores
    anchors = np.array([[32, 32, 32, 16, 0.9, 0.1],   # box (16, 24, 48, 40), "nodule"
                        [33, 32, 32, 16, 0.8, 0.1],   # nearly the same box and class: suppressed
                        [10, 30, 8, 8, 0.2, 0.6],     # box (6, 26, 14, 34), "mass"
                        [10, 8, 8, 8, 0.1, 0.7]],     # box (6, 4, 14, 12): in the letterbox padding
                       dtype=np.float32)
    model = constant_yolo(tmp_path / "yolo.onnx", anchors.T[None], shape=(1, 3, 64, 64))
    bundle = build(model, tmp_path / "bundle", Options(name="nodules", task="detection", labels=["nodule", "mass"],
                                                       image={"fit": "pad"}))
    fn = function({"MODEL_URI": str(bundle.root)})
    picture = png(np.full((100, 200, 3), 128, dtype=np.uint8))  # 200 wide: scale 0.32 -> 64 x 32, 16 rows down
    reply = gateway(fn, "POST", "/predict", picture, "image/png")
    assert reply.http_status == 200, reply.body
    body = reply.json()
    assert body["task"] == "detection" and body["model"]["name"] == "nodules"
    assert body["result"] == {"count": 2, "detections": [  # x / 0.32, (y - 16) / 0.32
        {"index": 0, "label": "nodule", "score": 0.9, "box": [50.0, 25.0, 150.0, 75.0]},
        {"index": 1, "label": "mass", "score": 0.6, "box": [18.75, 31.25, 43.75, 56.25]}]}
    direct = fn.call(picture, "image/png").json()
    assert direct["result"] == body["result"]
    assert_error(gateway(fn, "POST", "/predict", b"not an image", "text/plain"), 415, "unsupported_content_type")
