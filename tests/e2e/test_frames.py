"""Multi-frame DICOM under the real fdk, served as the manifest's `frames` says: pydicom's 30-frame ultrasound
(JPEG Baseline, colour) classified frame by frame, an enhanced CT built with pydicom (per-frame rescale,
positions out of order) segmented as one volume by a 3-D model, and the refusals: no `frames` option (400),
frames x pixels over the limit (413), a DICOM result asked for (406). The function stays up after each, and its
log carries none of the files' patient or study values."""
from __future__ import annotations

import base64
import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.e2e.test_dicom_results import private_values
from tests.support.calls import assert_error, gateway
from tests.support.images import png, pydicom_file
from tests.support.models import MODELS
from tests.support.volumes import enhanced_ct

DICOM = "application/dicom"
CINE = pydicom_file("examples_ybr_color.dcm").read_bytes()  # 30 frames, 240x320 YBR_FULL_422, JPEG Baseline


@pytest.fixture(scope="module")
def framed(tmp_path_factory) -> dict:
    from onnxfn.tools.package import Options, build
    from tests.support.models import linear_classifier
    from tests.support.volumes import volume_bundles
    root = tmp_path_factory.mktemp("frames")
    out = volume_bundles(root / "volumes")
    out["cls-each"] = build(linear_classifier(root / "cls.onnx"), root / "cls-each",
                            Options(name="cls-each", task="classification", activation="softmax",
                                    image={"frames": "each"})).root
    return out


def masks(result: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(f["mask"]["data"])))) for f in result["frames"]]


def test_cine_frames_are_classified_one_by_one_in_file_order(function, framed):
    fn = function({"MODEL_URI": str(framed["cls-each"])})
    reply = gateway(fn, "POST", "/predict", CINE, DICOM)
    assert reply.http_status == 200, reply.body
    answer = reply.json()
    frames = answer["result"]["frames"]
    assert [f["frame"] for f in frames] == list(range(30))
    assert answer["image"] == {"format": "dicom", "width": 320, "height": 240, "channels": 3, "bits": 8,
                               "frames": 30}
    rgb = pydicom.dcmread(io.BytesIO(CINE)).pixel_array  # pydicom's own RGB conversion of every frame
    for i in (0, 11, 29):  # a frame sent alone as a PNG gets the answer its entry holds
        alone = fn.call(png(rgb[i]), "image/png").json()["result"]
        assert [t["index"] for t in frames[i]["top"]] == [t["index"] for t in alone["top"]]
        assert [t["probability"] for t in frames[i]["top"]] == pytest.approx([t["probability"] for t in alone["top"]],
                                                                             abs=2e-6)
    assert len({tuple(t["probability"] for t in f["top"]) for f in frames}) > 1  # the frames differ
    assert [v for v in private_values(CINE) if v in fn.logs()] == []


def test_an_enhanced_ct_is_segmented_as_one_volume_in_position_order(function, framed):
    fn = function({"MODEL_URI": str(framed["shifter"])})
    data, stored, rescales = enhanced_ct([2.5, -5.0, 0.0, 5.0, -2.5], size=24)
    answer = fn.call(data, DICOM).json()  # direct invocation
    assert answer["volume"] == {"depth": 5, "order": [1, 4, 2, 0, 3], "spacing": [2.5, 0.5, 0.75]}
    hu = [stored[i] * slope + intercept for i, (slope, intercept) in enumerate(rescales)]
    order = answer["volume"]["order"]
    found = masks(answer["result"])
    for frame, mask in enumerate(found):  # the model marks a slice where the next one along the normal has HU > 0
        depth = order.index(frame)
        expected = hu[order[depth + 1]] > 0 if depth + 1 < len(order) else np.zeros(mask.shape, dtype=bool)
        np.testing.assert_array_equal(mask, expected.astype(np.uint8))
    assert sum(int(m.sum()) for m in found) > 0
    same = gateway(fn, "POST", "/predict", data, DICOM).json()
    assert same["result"] == answer["result"]  # the gateway route answers the same
    assert [v for v in private_values(data) if v in fn.logs()] == []


def test_multi_frame_refusals_name_what_to_do_and_the_function_stays_up(function, framed):
    plain = function({"MODEL_URI": str(MODELS / "digits-cnn")})
    assert_error(gateway(plain, "POST", "/predict", CINE, DICOM), 400, "multi_frame", "30 frames", '"frames"',
                 "each", "volume")
    limited = function({"MODEL_URI": str(framed["cls-each"]), "ONNXFN_MAX_PIXELS": str(240 * 320 * 10)})
    assert_error(gateway(limited, "POST", "/predict", CINE, DICOM), 413, "too_many_pixels", "320x240x30 frames",
                 "ONNXFN_MAX_PIXELS")
    data, _, _ = enhanced_ct([0.0, 1.0, 2.0])
    assert len(gateway(limited, "POST", "/predict", data, DICOM).json()["result"]["frames"]) == 3
    refused = gateway(limited, "POST", "/predict", data, DICOM, Accept=DICOM)
    assert_error(refused, 406, "not_acceptable", "multi-frame", "application/json", "3 frames")
    body = limited.call(data, DICOM, headers={"Accept": DICOM}).json()  # a direct invocation: 200, body 406
    assert (body["status"], body["code"]) == (406, "not_acceptable")
    assert gateway(limited, "POST", "/predict", data, DICOM).http_status == 200
