"""tasks/volume.py: frames ordered along the slice normal, pre-processed one by one as 2-D images and stacked on
the depth axis (NCDHW, NDHWC), the spacing reported, and a 3-D output split back into one plane per frame."""
from __future__ import annotations

import numpy as np
import pytest

from onnxfn.bundles import manifest
from onnxfn.codecs.image import Image
from onnxfn.errors import BadRequest, InferenceError
from onnxfn.tasks import preprocess, volume


def spec(layout: str = "NCDHW", shape=(1, 1, "D", "H", "W"), **image) -> manifest.InputSpec:
    document = {"name": "v", "version": "1", "task": "segmentation",
                "inputs": [{"name": "ct", "dtype": "float32", "shape": list(shape), "layout": layout,
                            "image": {"frames": "volume", **image}}],
                "outputs": [{"name": "mask", "activation": "sigmoid", "decision": "threshold"}],
                "artifacts": [{"path": "model.onnx", "sha256": "0" * 64, "size": 1}]}
    return manifest.parse(document).image_input


def frames(positions, shape=(6, 5), seed=0, channels=None) -> list[Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i, position in enumerate(positions):
        pixels = rng.integers(0, 4096, size=shape + ((channels,) if channels else ())).astype(np.uint16)
        out.append(Image(pixels, 12, "dicom", rescale=(1.0 + i, -100.0 * i), position=position,
                         spacing=(0.5, 0.8), frame=i))
    return out


def test_frames_are_ordered_by_position_else_kept_in_file_order():
    assert volume.order(frames([5.0, -5.0, 0.0, 10.0])) == (1, 2, 0, 3)
    assert volume.order(frames([1.0, 1.0, 0.0])) == (2, 0, 1)  # ties keep the file's order
    assert volume.order(frames([5.0, None, 0.0])) == (0, 1, 2)  # a frame without a position: file order
    images = frames([5.0, -5.0, 0.0, 12.5])
    assert volume.slice_spacing(images, volume.order(images)) == 5.0  # median of 5, 5, 12.5
    assert volume.slice_spacing(images[:1], (0,)) is None
    assert volume.slice_spacing(frames([0.0, None]), (0, 1)) is None


def test_stack_lays_each_frame_pre_processed_with_its_own_rescale_on_the_depth_axis():
    cfg = spec(scaling="window", window={"center": 1000, "width": 3000})
    images = frames([2.0, -2.0, 0.0])
    tensor, geometry, vol = volume.stack(images, cfg)
    assert tensor.shape == (1, 1, 3, 6, 5) and tensor.dtype == np.float32 and tensor.flags.c_contiguous
    assert vol.order == (1, 2, 0) and vol.spacing == (2.0, 0.5, 0.8)
    assert vol.describe() == {"depth": 3, "order": [1, 2, 0], "spacing": [2.0, 0.5, 0.8]}
    for depth, frame in enumerate(vol.order):
        expected, g = preprocess.normalise(images[frame], cfg.image)
        np.testing.assert_array_equal(tensor[0, 0, depth], expected[..., 0])
        assert g == geometry
    assert not np.array_equal(tensor[0, 0, 0], tensor[0, 0, 1])  # different frames, different rescales


def test_channels_last_colour_with_minmax_scales_across_the_volume():
    cfg = spec("NDHWC", (1, "D", 4, 4, 3), color="RGB", scaling="minmax", mean=[0.5, 0.4, 0.3],
               std=[0.2, 0.25, 0.5], channel_order="BGR", size=[4, 4], resample="nearest")
    images = frames([None, None], shape=(4, 4), channels=3)
    tensor, _, vol = volume.stack(images, cfg)
    assert tensor.shape == (1, 2, 4, 4, 3) and vol.order == (0, 1) and vol.spacing == (None, 0.5, 0.8)
    physical = np.stack([im.pixels * im.rescale[0] + im.rescale[1] for im in images]).astype(np.float64)
    unit = (physical - physical.min()) / (physical.max() - physical.min())  # one range for the whole volume
    expected = ((unit - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5])[..., ::-1]
    np.testing.assert_allclose(tensor[0], expected, rtol=1e-5, atol=1e-5)


def test_uint8_volumes_are_rounded_and_clipped():
    document_spec = spec(scaling="raw")
    cfg = manifest.InputSpec(document_spec.name, "uint8", document_spec.shape, document_spec.layout,
                             document_spec.image)
    images = [Image(np.array([[0, 300], [7, 8]], dtype=np.uint16), 16, "dicom")]
    tensor, _, _ = volume.stack(images, cfg)
    assert tensor.dtype == np.uint8 and tensor[0, 0, 0].tolist() == [[0, 255], [7, 8]]


def test_a_fixed_depth_other_than_the_frame_count_is_a_400():
    with pytest.raises(BadRequest, match=r"'ct' takes 4 frame\(s\) on its depth axis \(D\); this image holds 3") as e:
        volume.stack(frames([0.0, 1.0, 2.0]), spec(shape=(1, 1, 4, "H", "W")))
    assert (e.value.status, e.value.code) == (400, "wrong_shape")


@pytest.mark.parametrize("layout, shape", [("NCDHW", (1, 2, 3, 6, 5)), ("NDHWC", (1, 3, 6, 5, 2)),
                                           ("NCDHW", (1, 3, 6, 5))])  # the last: no channel axis
def test_planes_map_each_depth_slice_back_to_its_frame(layout, shape):
    cfg = spec(layout, (1, "C", "D", "H", "W") if layout == "NCDHW" else (1, "D", "H", "W", "C"))
    vol = volume.Volume((2, 0, 1), (1.0, 0.5, 0.5))
    d = (layout if len(shape) == 5 else layout.replace("C", "")).index("D")
    output = np.moveaxis(np.broadcast_to(np.arange(3, dtype=np.float32), shape[:d] + shape[d + 1:] + (3,)), -1, d)
    planes = volume.planes(output, cfg, vol, "mask")
    assert len(planes) == 3
    for frame, (plane, flat) in enumerate(planes):
        assert np.all(plane == vol.order.index(frame))  # frame 2 was the first slice, frame 0 the second
        assert "D" not in flat.layout and len(flat.layout) == plane.ndim == len(shape) - 1
    expected = {"NCDHW": "NCHW", "NDHWC": "NHWC"}[layout] if len(shape) == 5 else "NHW"
    assert planes[0][1].layout == expected


def test_planes_refuse_an_output_of_another_depth_or_rank():
    cfg, vol = spec(), volume.Volume((0, 1, 2), (None, None, None))
    with pytest.raises(InferenceError, match="2 slice\\(s\\) on its depth axis, but the input had 3") as e:
        volume.planes(np.zeros((1, 1, 2, 4, 4)), cfg, vol, "mask")
    assert e.value.code == "bad_output"
    with pytest.raises(InferenceError, match="must follow the input's layout NCDHW"):
        volume.planes(np.zeros((4, 4)), cfg, vol, "mask")
