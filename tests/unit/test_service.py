"""service.py: the core in-process: answers with their figures, and the 4xx a caller's mistake gets."""
from __future__ import annotations

import time

import numpy as np
import pytest

from onnxfn.errors import BadRequest, NotFound
from onnxfn.service import Service, Timer
from onnxfn.settings import Settings
from tests.support.models import DIGIT, MODELS


def service_for(path) -> Service:
    return Service(Settings(model_uri=str(path), baked_bundle="", threads=1))


def test_predict_answers_with_its_figures_apart_for_the_log():
    service = service_for(MODELS / "digits-cnn")
    first = service.predict(DIGIT, "image/png")
    again = service.predict(DIGIT, "image/png")
    assert first.body["result"]["label"] == "7" and first.cold is True and again.cold is False
    assert again.timings_ms is again.body["timings_ms"] and again.timings_ms["load"] == 0.0
    assert set(first.timings_ms) >= {"load", "decode", "preprocess", "inference", "postprocess", "total",
                                     "load_fetch", "load_session"}  # a cold call says where its load went
    assert first.body["image"] == {"format": "png", "width": 8, "height": 8, "channels": 1, "bits": 8}


def test_a_tensor_model_refuses_images_and_infer_names_unknown_outputs(bundles):
    service = service_for(bundles["adder"])
    with pytest.raises(BadRequest, match="tensor model") as refused:
        service.predict(DIGIT, "image/png")
    assert refused.value.code == "tensor_model"
    document = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                           {"name": "b", "datatype": "FP32", "shape": [1, 3], "data": [1, 1, 1]},
                           {"name": "count", "datatype": "INT32", "shape": [2], "data": [4, 5]}],
                "outputs": [{"name": "sum"}, {"name": "nope"}]}
    with pytest.raises(BadRequest, match="'nope' do not exist") as unknown:
        service.infer(document)
    assert unknown.value.code == "unknown_output"
    document["outputs"] = [{"name": "sum"}]
    answer = service.infer(document, "adder")
    assert answer.body["outputs"] == [{"name": "sum", "datatype": "FP32", "shape": [1, 3], "data": [2.0, 3.0, 4.0]}]
    assert answer.body["parameters"]["timings_ms"] is answer.timings_ms


def test_a_name_or_version_not_served_is_a_404():
    service = service_for(MODELS / "digits-cnn")
    with pytest.raises(NotFound) as name:
        service.metadata("other")
    with pytest.raises(NotFound) as version:
        service.metadata("digits-cnn", "0.0.1")
    assert (name.value.code, version.value.code) == ("model_not_found", "version_not_found")
    meta = service.metadata("digits-cnn")
    assert meta["outputs"][0]["datatype"] == "FP32" and meta["parameters"]["task"] == "classification"


def test_timer_steps_add_up_and_the_total_covers_them():
    timer = Timer()
    for _ in range(2):
        with timer.step("decode"):
            time.sleep(0.01)
    total = timer.total()
    assert total["decode"] >= 20 and total["total"] >= total["decode"]
    assert np.isclose(total["decode"], round(total["decode"], 3))


@pytest.fixture
def image_tensor_bundle(tmp_path):
    from onnxfn.tools.package import Options, build
    from tests.support.models import image_scaler
    return build(image_scaler(tmp_path / "scaler.onnx"), tmp_path / "bundle",
                 Options(name="scaler", image_input=True, image={"size": [6, 10]})).root


def expected_outputs(root, picture: bytes) -> dict:
    """What onnxruntime answers on the input as the bundle pre-processes it."""
    from onnxfn.bundles import bundle as bundles
    from onnxfn.codecs import payload
    from onnxfn.runtime import session as sessions
    from onnxfn.tasks import preprocess
    b = bundles.load(root)
    spec = b.manifest.inputs[0]
    feed, _ = preprocess.prepare(payload.decode_image(payload.classify(picture, "image/png", 1 << 30), 1 << 30), spec)
    session = sessions.create(b.root / "model.onnx", 1)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {spec.name: feed})))


def test_a_tensor_bundle_with_an_image_input_answers_images_with_oip_outputs(image_tensor_bundle):
    from tests.support.images import png
    picture = png(np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3))
    answer = service_for(image_tensor_bundle).predict(picture, "image/png")
    body = answer.body
    assert body["task"] == "tensor" and body["model"]["name"] == "scaler" and answer.tensors == []
    assert set(body) >= {"result", "image", "model", "runtime", "cold", "timings_ms"}
    assert body["image"]["width"] == 12 and body["image"]["height"] == 8
    expected = expected_outputs(image_tensor_bundle, picture)
    outputs = body["result"]["outputs"]
    assert [o["name"] for o in outputs] == ["scaled", "mean"]
    for o in outputs:
        assert o["datatype"] == "FP32" and o["shape"] == list(expected[o["name"]].shape)
        assert np.array_equal(np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]), expected[o["name"]])
    assert outputs[0]["shape"] == [1, 3, 6, 10]


def test_a_tensor_bundle_answers_binary_outputs_when_asked(image_tensor_bundle):
    from tests.support.images import png
    picture = png(np.full((6, 10, 3), 200, dtype=np.uint8))
    answer = service_for(image_tensor_bundle).predict(picture, "image/png", binary_output=True)
    expected = expected_outputs(image_tensor_bundle, picture)
    outputs = answer.body["result"]["outputs"]
    assert len(answer.tensors) == 2
    for o, data in zip(outputs, answer.tensors):
        assert "data" not in o and o["parameters"]["binary_data_size"] == len(data)
        assert np.array_equal(np.frombuffer(data, "<f4").reshape(o["shape"]), expected[o["name"]])


def test_a_tensor_bundle_without_an_image_input_still_refuses_images(bundles):
    with pytest.raises(BadRequest) as e:
        service_for(bundles["adder"]).predict(DIGIT, "image/png")
    assert e.value.code == "tensor_model" and "--image-input" in e.value.message


def test_an_answer_over_the_response_limit_is_refused_before_it_is_built(bundles):
    from onnxfn.errors import ResponseTooLarge
    service = Service(Settings(model_uri=str(bundles["adder"]), baked_bundle="", threads=1, max_response_bytes=4000))

    def request(n: int) -> dict:
        return {"inputs": [{"name": "a", "datatype": "FP32", "shape": [n, 3], "data": [0.1] * (3 * n)},
                           {"name": "b", "datatype": "FP32", "shape": [n, 3], "data": [0.2] * (3 * n)},
                           {"name": "count", "datatype": "INT32", "shape": [2], "data": [4, 5]}]}
    answer = service.infer(request(50))  # 150 sums of ~19 characters: under 4,000 bytes
    assert answer.body["outputs"][0]["shape"] == [50, 3]
    with pytest.raises(ResponseTooLarge, match=r"about [\d,]+ bytes .*ONNXFN_MAX_RESPONSE_BYTES.*binary") as refused:
        service.infer(request(100))
    assert (refused.value.status, refused.value.code) == (413, "response_too_large")
    small = request(100)
    small["outputs"] = [{"name": "sum", "parameters": {"binary_data": True}}]
    assert service.infer(small).tensors[0].__len__() == 100 * 3 * 4  # as binary data it fits


def test_check_answer_estimates_json_and_binary_sizes():
    import json
    from onnxfn.codecs import tensor
    from onnxfn.errors import ResponseTooLarge
    from onnxfn.service import check_answer
    values = {"x": np.random.default_rng(0).standard_normal((50, 40)).astype(np.float32)}
    exact = len(json.dumps(tensor.encode("x", values["x"])["data"], separators=(",", ":")))
    check_answer(values, lambda _: False, int(exact * 1.1))
    with pytest.raises(ResponseTooLarge):
        check_answer(values, lambda _: False, int(exact * 0.9))
    check_answer(values, lambda _: True, 50 * 40 * 4)  # binary: exactly its bytes
    with pytest.raises(ResponseTooLarge):
        check_answer(values, lambda _: True, 50 * 40 * 4 - 1)


# -- DICOM results ------------------------------------------------------------------------------

PHANTOM = (MODELS.parent / "samples" / "phantom.dcm").read_bytes()


def mask_of(answer) -> np.ndarray:
    import base64
    import io
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.body["result"]["mask"]["data"]))))


def test_a_dicom_input_answers_a_seg_whose_pixels_are_the_json_mask():
    import io
    import highdicom as hd
    import pydicom
    from onnxfn.service import DICOM_REQUIRED
    service = service_for(MODELS / "lesion-unet")
    plain = service.predict(PHANTOM, "application/dicom")
    assert plain.dicom is None and "dicom" not in plain.timings_ms
    answer = service.predict(PHANTOM, "application/dicom", dicom=DICOM_REQUIRED)
    assert answer.dicom.suffix == ".seg.dcm" and answer.dicom.media_type == "application/dicom"
    assert answer.timings_ms["dicom"] > 0 and answer.body["task"] == "segmentation"  # the JSON is still there
    mask = mask_of(answer)
    assert mask.any()  # the phantom has a lesion: an empty mask would prove nothing
    source = pydicom.dcmread(io.BytesIO(PHANTOM))
    seg = hd.seg.segread(io.BytesIO(answer.dicom.data))
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    assert np.array_equal(pixels[0, :, :, 0], (mask == 1).astype(pixels.dtype))
    assert seg.StudyInstanceUID == source.StudyInstanceUID


def test_a_dicom_classification_answers_an_sr():
    import highdicom as hd
    import io
    from onnxfn.service import DICOM_REQUIRED
    from tests.support.images import pydicom_file
    service = service_for(MODELS / "digits-cnn")
    answer = service.predict(pydicom_file("CT_small.dcm").read_bytes(), None, dicom=DICOM_REQUIRED)
    assert answer.dicom.suffix == ".sr.dcm"
    best = hd.sr.srread(io.BytesIO(answer.dicom.data)).content.get_image_measurement_groups()[0]
    assert best.finding_type.meaning == answer.body["result"]["label"]
    assert best.get_measurements()[0].value == pytest.approx(answer.body["result"]["probability"])


def test_a_required_dicom_result_is_refused_before_the_model_runs(bundles):
    from onnxfn.errors import NotAcceptable
    from onnxfn.service import DICOM_REQUIRED
    from tests.support.images import pydicom_file
    service = service_for(MODELS / "digits-cnn")
    with pytest.raises(NotAcceptable, match="needs a DICOM input.*png.*application/json") as png:
        service.predict(DIGIT, "image/png", dicom=DICOM_REQUIRED)
    assert (png.value.status, png.value.code) == (406, "not_acceptable")
    assert service.predict(DIGIT, "image/png").cold is True  # the refusal did not even load the model
    tensor = service_for(bundles["adder"])
    with pytest.raises(NotAcceptable, match="answers tensor, which has no DICOM form"):
        tensor.predict(pydicom_file("CT_small.dcm").read_bytes(), None, dicom=DICOM_REQUIRED)


def test_an_optional_dicom_result_says_why_it_was_not_made():
    from onnxfn.service import DICOM_OPTIONAL
    service = service_for(MODELS / "digits-cnn")
    answer = service.predict(DIGIT, "image/png", dicom=DICOM_OPTIONAL)
    assert answer.dicom is None and answer.dicom_skipped == "the input is not DICOM"
    assert answer.body["result"]["label"] == "7"
    import io
    import pydicom
    from tests.support.images import pydicom_file
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del ds.StudyInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    incomplete = service.predict(buffer.getvalue(), "application/dicom", dicom=DICOM_OPTIONAL)
    assert incomplete.dicom is None and "lacks StudyInstanceUID" in incomplete.dicom_skipped
    assert incomplete.body["task"] == "classification"  # the JSON answer stands


# -- multi-frame images: the manifest's `frames` --------------------------------------------------

@pytest.fixture(scope="module")
def framed(tmp_path_factory) -> dict:
    """Bundles that take multi-frame images: the linear classifier with frames first and each, the identity
    segmenter with each (window from the file: a pixel is marked where its HU > 0), and the 3-D bundles."""
    from onnxfn.tools.package import Options, build
    from tests.support.models import identity_segmenter, linear_classifier
    from tests.support.volumes import volume_bundles
    root = tmp_path_factory.mktemp("framed")
    out = volume_bundles(root / "volumes")
    for frames in ("first", "each"):
        out[f"cls-{frames}"] = build(linear_classifier(root / f"cls-{frames}.onnx"), root / f"cls-{frames}",
                                     Options(name=f"cls-{frames}", task="classification", activation="softmax",
                                             image={"frames": frames, "scaling": "window",
                                                    "window_source": "file"})).root
    out["seg-each"] = build(identity_segmenter(root / "seg.onnx"), root / "seg-each",
                            Options(name="seg-each", task="segmentation", activation="sigmoid", decision="threshold",
                                    labels=["dense"], image={"frames": "each", "scaling": "window",
                                                             "window_source": "file"})).root
    return out


def hounsfield(stored, rescales) -> list[np.ndarray]:
    return [stored[i].astype(np.float64) * slope + intercept for i, (slope, intercept) in enumerate(rescales)]


def masks_of(result: dict) -> list[np.ndarray]:
    import base64
    import io
    from PIL import Image
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(f["mask"]["data"])))) for f in result["frames"]]


def test_a_multi_frame_file_is_refused_unless_the_manifest_says_how_to_serve_it():
    from tests.support.volumes import enhanced_ct
    data, _, _ = enhanced_ct([0.0, 1.0, 2.0])
    with pytest.raises(BadRequest, match='3 frames.*"frames" option') as e:
        service_for(MODELS / "digits-cnn").predict(data, "application/dicom")
    assert (e.value.status, e.value.code) == (400, "multi_frame")


def test_each_frame_is_classified_in_file_order_and_first_answers_frame_0(framed):
    from tests.support.volumes import enhanced_ct
    data, _, _ = enhanced_ct([0.0, 3.0, 1.0, 2.0], size=8)
    each = service_for(framed["cls-each"]).predict(data, "application/dicom").body
    first = service_for(framed["cls-first"]).predict(data, "application/dicom").body
    frames = each["result"]["frames"]
    assert [f["frame"] for f in frames] == [0, 1, 2, 3] and "volume" not in each
    assert each["image"] == {"format": "dicom", "width": 8, "height": 8, "channels": 1, "bits": 16, "frames": 4}
    assert len({json_of(f["top"]) for f in frames}) == 4  # four frames, four rescales, four answers
    assert first["result"] == {k: v for k, v in frames[0].items() if k != "frame"}
    assert first["image"]["frames"] == 4
    single = service_for(framed["cls-each"]).predict((MODELS.parent / "samples" / "phantom.dcm").read_bytes(),
                                                     "application/dicom").body
    assert "frames" not in single["result"] and "frames" not in single["image"]  # one frame: the usual answer


def json_of(value) -> str:
    import json
    return json.dumps(value, sort_keys=True)


def test_each_frame_is_segmented_with_its_own_rescale(framed):
    from tests.support.volumes import enhanced_ct
    data, stored, rescales = enhanced_ct([0.0, 1.0, 2.0])
    answer = service_for(framed["seg-each"]).predict(data, "application/dicom").body
    masks = masks_of(answer["result"])
    assert len(masks) == 3
    for mask, hu, entry in zip(masks, hounsfield(stored, rescales), answer["result"]["frames"]):
        np.testing.assert_array_equal(mask, (hu > 0).astype(np.uint8))
        assert entry["classes"][0]["pixels"] == int((hu > 0).sum())


def test_a_volume_is_ordered_by_position_and_its_mask_mapped_back_per_frame(framed):
    from tests.support.volumes import enhanced_ct
    positions = [5.0, -5.0, 0.0, 10.0]
    data, stored, rescales = enhanced_ct(positions)
    answer = service_for(framed["shifter"]).predict(data, "application/dicom").body
    assert answer["volume"] == {"depth": 4, "order": [1, 2, 0, 3], "spacing": [5.0, 0.5, 0.75]}
    assert answer["image"]["frames"] == 4
    hu = hounsfield(stored, rescales)
    order = answer["volume"]["order"]
    masks = masks_of(answer["result"])
    assert [f["frame"] for f in answer["result"]["frames"]] == [0, 1, 2, 3]
    for frame, mask in enumerate(masks):
        depth = order.index(frame)  # the model marks a slice where the next slice along the normal has HU > 0
        expected = (hu[order[depth + 1]] > 0) if depth + 1 < len(order) else np.zeros_like(mask, dtype=bool)
        np.testing.assert_array_equal(mask, expected.astype(np.uint8))
    assert masks[3].sum() == 0 and masks[0].sum() > 0


def test_a_volume_classifier_sees_the_frames_stacked_in_position_order(framed, tmp_path):
    from tests.support.volumes import enhanced_ct, volume_classifier
    _, weights = volume_classifier(tmp_path / "same-weights.onnx")
    data, stored, rescales = enhanced_ct([3.0, 1.0, 2.0, 0.0])
    service = service_for(framed["volume-cls"])
    answer = service.predict(data, "application/dicom").body
    hu = hounsfield(stored, rescales)
    stacked = np.stack([hu[i] for i in (3, 1, 2, 0)])
    unit = (stacked - stacked.min()) / (stacked.max() - stacked.min())  # minmax over the whole volume
    logits = unit.reshape(1, -1) @ weights.astype(np.float64)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert answer["result"]["probability"] == pytest.approx(float(probabilities.max()), abs=1e-5)
    assert answer["result"]["label"] == "abc"[int(probabilities.argmax())]
    assert [t["probability"] for t in answer["result"]["top"]] == pytest.approx(
        sorted(probabilities[0].tolist(), reverse=True), abs=1e-5)
    five, _, _ = enhanced_ct([0.0, 1.0, 2.0, 3.0, 4.0])
    with pytest.raises(BadRequest, match=r"takes 4 frame\(s\) on its depth axis \(D\); this image holds 5") as e:
        service.predict(five, "application/dicom")
    assert e.value.code == "wrong_shape"


def test_frames_times_pixels_count_against_the_pixel_limit(framed):
    from onnxfn.errors import PayloadTooLarge
    from tests.support.volumes import enhanced_ct
    data, _, _ = enhanced_ct([0.0, 1.0, 2.0, 3.0])  # 4 frames of 16x16: 1,024 pixels
    service = Service(Settings(model_uri=str(framed["seg-each"]), baked_bundle="", threads=1, max_pixels=1000))
    with pytest.raises(PayloadTooLarge, match="16x16x4 frames = 1,024 pixels") as e:
        service.predict(data, "application/dicom")
    assert (e.value.status, e.value.code) == (413, "too_many_pixels")
    single, _, _ = enhanced_ct([0.0, 1.0, 2.0])  # 768 pixels fit
    assert len(service.predict(single, "application/dicom").body["result"]["frames"]) == 3


def test_a_dicom_result_of_a_multi_frame_input_is_a_406_before_decoding_or_skipped(framed):
    from onnxfn.errors import NotAcceptable
    from onnxfn.service import DICOM_OPTIONAL, DICOM_REQUIRED
    from tests.support.volumes import enhanced_ct
    data, _, _ = enhanced_ct([0.0, 1.0, 2.0])
    service = service_for(framed["seg-each"])
    truncated = data[:-600]  # the pixel data is short: decoding it would be a 400 invalid_dicom
    with pytest.raises(NotAcceptable, match="multi-frame inputs are not supported yet.*application/json.*3 frames") \
            as e:
        service.predict(truncated, "application/dicom", dicom=DICOM_REQUIRED)
    assert (e.value.status, e.value.code) == (406, "not_acceptable")
    with pytest.raises(BadRequest) as damaged:
        service.predict(truncated, "application/dicom")
    assert damaged.value.code == "invalid_dicom"
    optional = service.predict(data, "application/dicom", dicom=DICOM_OPTIONAL)
    assert optional.dicom is None and "multi-frame inputs are not supported" in optional.dicom_skipped
    assert len(optional.body["result"]["frames"]) == 3


def test_a_manifest_asking_for_fractional_segmentation_gets_the_probabilities(tmp_path):
    import io
    import json
    import shutil
    import highdicom as hd
    import pydicom
    from onnxfn.service import DICOM_REQUIRED
    bundle = tmp_path / "fractional"
    shutil.copytree(MODELS / "lesion-unet", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["outputs"][0]["segmentation_type"] = "fractional"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    answer = service_for(bundle).predict(PHANTOM, "application/dicom", dicom=DICOM_REQUIRED)
    mask = mask_of(answer)
    source = pydicom.dcmread(io.BytesIO(PHANTOM))
    seg = hd.seg.segread(io.BytesIO(answer.dicom.data))
    assert seg.SegmentationType == "FRACTIONAL"
    fractions = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1],
                                                  rescale_fractional=True)[0, :, :, 0]
    assert fractions.shape == mask.shape and 0.0 <= fractions.min() and fractions.max() <= 1.0
    assert len(np.unique(fractions)) > 10  # probabilities, not a binary mask
    agree = ((fractions > 0.5) == (mask == 1)).mean()
    assert agree > 0.99, agree  # the mask is the probabilities thresholded (at model size: edges may differ)
