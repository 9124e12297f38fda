"""preprocess.py: Image -> model tensor as the manifest declares it (colour, intensity,
geometry, mean/std, channel order, layout, dtype), and masks mapped back to the image."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.support.images import pydicom_file
from onnxfn.codecs import dicom
from onnxfn.bundles import images, manifest
from onnxfn.tasks import preprocess
from onnxfn.errors import BadRequest
from onnxfn.codecs.image import Image
from onnxfn.bundles.images import Window
from onnxfn.tasks.preprocess import Geometry

SHAPES = {"NCHW": ["N", "C", "H", "W"], "NHWC": ["N", "H", "W", "C"], "CHW": ["C", "H", "W"],
          "HWC": ["H", "W", "C"], "NHW": ["N", "H", "W"], "HW": ["H", "W"], "NF": ["N", "F"]}


def spec(layout: str = "NCHW", dtype: str = "float32", shape: list | None = None, **image) -> manifest.InputSpec:
    """An image input parsed (and so validated) like a bundle's manifest would be."""
    channels = 3 if image.get("color") == "RGB" else 1
    if shape is None:
        shape = [channels if d == "C" else d for d in SHAPES[layout]]
        if layout == "NF":
            h, w = image["size"]
            shape = ["N", h * w * channels]
    document = {"name": "m", "version": "1", "task": "tensor",
                "inputs": [{"name": "image", "dtype": dtype, "shape": shape, "layout": layout, "image": image}],
                "outputs": [{"name": "out"}],
                "artifacts": [{"path": "model.onnx", "sha256": "0" * 64, "size": 1}]}
    return manifest.parse(document).inputs[0]


def grey(values, bits=8, fmt="png", **kwargs) -> Image:
    dtype = {8: np.uint8, 16: np.uint16, 12: np.uint16, None: np.float32}[bits]
    return Image(np.asarray(values, dtype=dtype), bits, fmt, **kwargs)


RGB = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # distinct values per pixel and channel


def rgb() -> Image:
    return Image(RGB.copy(), 8, "png")


# ------------------------------------------------------------------ layouts

@pytest.mark.parametrize("layout,shape,arrange", [
    ("NCHW", (1, 3, 2, 3), lambda a: a.transpose(2, 0, 1)[None]),
    ("NHWC", (1, 2, 3, 3), lambda a: a[None]),
    ("CHW", (3, 2, 3), lambda a: a.transpose(2, 0, 1)),
    ("HWC", (2, 3, 3), lambda a: a),
])
def test_colour_layouts(layout, shape, arrange):
    tensor, geometry = preprocess.prepare(rgb(), spec(layout, color="RGB"))
    assert tensor.shape == shape and tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor, arrange(RGB / 255.0), rtol=1e-6)
    assert geometry == Geometry((2, 3), (2, 3), (0, 0), (2, 3))


@pytest.mark.parametrize("layout,shape", [("NCHW", (1, 1, 2, 3)), ("NHWC", (1, 2, 3, 1)), ("CHW", (1, 2, 3)),
                                          ("HWC", (2, 3, 1)), ("NHW", (1, 2, 3)), ("HW", (2, 3))])
def test_grey_layouts(layout, shape):
    pixels = [[0, 51, 102], [153, 204, 255]]
    tensor, _ = preprocess.prepare(grey(pixels), spec(layout))
    assert tensor.shape == shape
    np.testing.assert_allclose(tensor.reshape(2, 3), np.asarray(pixels) / 255.0, rtol=1e-6)


def test_flat_features_are_row_major_height_width_channel():
    tensor, _ = preprocess.prepare(rgb(), spec("NF", color="RGB", size=[2, 3]))
    assert tensor.shape == (1, 18)
    np.testing.assert_allclose(tensor[0], RGB.reshape(-1) / 255.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_float_dtypes(dtype):
    tensor, _ = preprocess.prepare(grey([[0, 255]]), spec("HW", dtype=dtype))
    assert tensor.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(tensor, [[0.0, 1.0]])


def test_uint8_model_gets_rounded_clipped_values():
    image = grey([[0, 10, 100, 200]])
    tensor, _ = preprocess.prepare(image, spec("HW", dtype="uint8", scaling="raw", rescale=[1.5, -20.2]))
    assert tensor.dtype == np.uint8
    # 1.5v - 20.2 = -20.2, -5.2, 129.8, 279.8 -> clipped and rounded
    np.testing.assert_array_equal(tensor, [[0, 0, 130, 255]])


def test_uint8_model_keeps_8bit_values_exactly():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    tensor, _ = preprocess.prepare(Image(values, 8, "png"), spec("NHW", dtype="uint8", scaling="raw"))
    np.testing.assert_array_equal(tensor[0], values)


def test_the_image_is_not_modified():
    image = rgb()
    preprocess.prepare(image, spec("NCHW", color="RGB", scaling="raw", mean=[1, 2, 3], std=[2, 2, 2]))
    np.testing.assert_array_equal(image.pixels, RGB)


# ------------------------------------------------------------------ intensity

@pytest.mark.parametrize("bits,top", [(8, 255), (12, 4095), (16, 65535)])
def test_unit_scaling_divides_by_the_largest_stored_value(bits, top):
    tensor, _ = preprocess.prepare(grey([[0, top // 2, top]], bits=bits), spec("HW"))
    np.testing.assert_allclose(tensor, [[0.0, (top // 2) / top, 1.0]], rtol=1e-6)


def test_16bit_png_values_reach_the_model_unclipped():
    tensor, _ = preprocess.prepare(grey([[0, 1000, 40000, 65535]], bits=16), spec("HW", scaling="raw"))
    np.testing.assert_array_equal(tensor, [[0, 1000, 40000, 65535]])


def test_unit_scaling_refuses_floating_point_pixels():
    with pytest.raises(BadRequest) as info:
        preprocess.prepare(grey([[0.5, 2.0]], bits=None, fmt="tiff"), spec("HW"))
    assert (info.value.status, info.value.code) == (400, "unsupported_pixels")
    assert "floating-point" in info.value.message


def test_raw_scaling_applies_the_manifest_rescale_to_files_without_one():
    tensor, _ = preprocess.prepare(grey([[0, 1000, 40000]], bits=16), spec("HW", scaling="raw", rescale=[0.5, -100]))
    np.testing.assert_allclose(tensor, [[-100, 400, 19900]])


def test_raw_scaling_prefers_the_dicom_file_rescale():
    image = grey([[0, 1024, 2048]], bits=16, fmt="dicom", rescale=(1.0, -1024.0))
    tensor, _ = preprocess.prepare(image, spec("HW", scaling="raw", rescale=[2, 5]))
    np.testing.assert_array_equal(tensor, [[-1024, 0, 1024]])


def test_raw_scaling_of_dicom_without_rescale_keeps_stored_values():
    # the manifest's rescale is for PNG/TIFF; a DICOM file without one is already in its units
    image = grey([[0, 100]], bits=16, fmt="dicom")
    tensor, _ = preprocess.prepare(image, spec("HW", scaling="raw", rescale=[2, 5]))
    np.testing.assert_array_equal(tensor, [[0, 100]])


def test_window_scaling_maps_the_window_to_0_1_and_clips():
    image = grey([[0, 1, 50, 100, 150, 200, 300]], bits=16)
    tensor, _ = preprocess.prepare(image, spec("HW", scaling="window", window={"center": 100, "width": 200}))
    np.testing.assert_allclose(tensor, [[0, 0.005, 0.25, 0.5, 0.75, 1, 1]], rtol=1e-6)


def test_window_applies_after_the_file_rescale():
    # stored 1064 at slope 1, intercept -1024 is 40 HU: the middle of a 40/400 window
    image = grey([[1064, 864, 1264]], bits=16, fmt="dicom", rescale=(1.0, -1024.0))
    tensor, _ = preprocess.prepare(image, spec("HW", scaling="window", window={"center": 40, "width": 400}))
    np.testing.assert_allclose(tensor, [[0.5, 0.0, 1.0]], atol=1e-6)


FILE_WINDOW = Window(100.0, 100.0)   # 50..150
MANIFEST_WINDOW = {"center": 100, "width": 200}  # 0..200


def test_window_source_manifest_uses_the_manifest_window():
    image = grey([[50, 150]], fmt="dicom", window=FILE_WINDOW)
    tensor, _ = preprocess.prepare(image, spec("HW", scaling="window", window=MANIFEST_WINDOW))
    np.testing.assert_allclose(tensor, [[0.25, 0.75]])


def test_window_source_file_uses_the_file_window():
    image = grey([[50, 150]], fmt="dicom", window=FILE_WINDOW)
    tensor, _ = preprocess.prepare(image, spec("HW", scaling="window", window=MANIFEST_WINDOW, window_source="file"))
    np.testing.assert_allclose(tensor, [[0.0, 1.0]])


def test_window_source_file_falls_back_to_the_manifest_window():
    tensor, _ = preprocess.prepare(grey([[50, 150]]),
                                   spec("HW", scaling="window", window=MANIFEST_WINDOW, window_source="file"))
    np.testing.assert_allclose(tensor, [[0.25, 0.75]])


def test_window_source_file_without_any_window_is_400():
    with pytest.raises(BadRequest) as info:
        preprocess.prepare(grey([[50, 150]]), spec("HW", scaling="window", window_source="file"))
    assert (info.value.status, info.value.code) == (400, "no_window")
    assert "VOI window" in info.value.message


def test_minmax_scaling():
    tensor, _ = preprocess.prepare(grey([[10, 20, 30]]), spec("HW", scaling="minmax"))
    np.testing.assert_allclose(tensor, [[0, 0.5, 1]])


def test_minmax_of_a_flat_image_is_zero_not_nan():
    tensor, _ = preprocess.prepare(grey([[7, 7], [7, 7]]), spec("HW", scaling="minmax"))
    np.testing.assert_array_equal(tensor, np.zeros((2, 2)))


@pytest.mark.parametrize("scaling,extra,expected", [
    ("unit", {}, [[1.0, 0.8, 0.0]]),
    ("minmax", {}, [[1.0, 0.8, 0.0]]),
    ("window", {"window": {"center": 127.5, "width": 255}}, [[1.0, 0.8, 0.0]]),
    ("raw", {}, [[255, 204, 0]]),
])
def test_monochrome1_is_inverted(scaling, extra, expected):
    image = grey([[0, 51, 255]], fmt="dicom", invert=True)
    tensor, _ = preprocess.prepare(image, spec("HW", scaling=scaling, **extra))
    np.testing.assert_allclose(tensor, expected, atol=1e-6)


def test_monochrome1_raw_inverts_within_the_image_range():
    image = grey([[100, 150, 200]], bits=16, fmt="dicom", invert=True)
    tensor, _ = preprocess.prepare(image, spec("HW", scaling="raw"))
    np.testing.assert_array_equal(tensor, [[200, 150, 100]])


def test_real_ct_with_a_window():
    image = dicom.decode(pydicom_file("CT_small.dcm").read_bytes(), 1_000_000)
    tensor, geometry = preprocess.prepare(image, spec("NCHW", scaling="window", size=[64, 64],
                                                      window={"center": 40, "width": 400}))
    assert tensor.shape == (1, 1, 64, 64) and geometry.original == (128, 128)
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert 0.0 < float(tensor.mean()) < 1.0


# ------------------------------------------------------------------ mean, std, channel order

def test_mean_and_std_per_channel():
    tensor, _ = preprocess.prepare(rgb(), spec("NHWC", color="RGB", mean=[0.5, 0.4, 0.3], std=[0.1, 0.2, 0.5]))
    expected = (RGB / 255.0 - [0.5, 0.4, 0.3]) / [0.1, 0.2, 0.5]
    np.testing.assert_allclose(tensor[0], expected, rtol=1e-5, atol=1e-6)


def test_mean_alone_and_std_alone():
    tensor, _ = preprocess.prepare(grey([[0, 255]]), spec("HW", mean=[0.5]))
    np.testing.assert_allclose(tensor, [[-0.5, 0.5]])
    tensor, _ = preprocess.prepare(grey([[0, 255]]), spec("HW", std=[0.25]))
    np.testing.assert_allclose(tensor, [[0.0, 4.0]])


def test_bgr_reverses_the_channels_after_mean_and_std():
    tensor, _ = preprocess.prepare(rgb(), spec("NCHW", color="RGB", scaling="raw", channel_order="BGR",
                                               mean=[1, 2, 3]))
    np.testing.assert_array_equal(tensor[0, 0], RGB[..., 2] - 3.0)
    np.testing.assert_array_equal(tensor[0, 1], RGB[..., 1] - 2.0)
    np.testing.assert_array_equal(tensor[0, 2], RGB[..., 0] - 1.0)


# ------------------------------------------------------------------ channels

def test_rgb_image_to_grey_model_uses_luma():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    tensor, _ = preprocess.prepare(Image(pixels, 8, "png"), spec("HW"))
    np.testing.assert_allclose(tensor, [[0.299, 0.587, 0.114, 1.0]], rtol=1e-5)


def test_grey_image_to_rgb_model_is_replicated():
    tensor, _ = preprocess.prepare(grey([[0, 51], [102, 255]]), spec("NCHW", color="RGB"))
    assert tensor.shape == (1, 3, 2, 2)
    for c in range(3):
        np.testing.assert_allclose(tensor[0, c], [[0, 0.2], [0.4, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("image,depth", [
    (grey([[0, 65535]], bits=16), "16-bit"),
    (grey([[0.0, 1.5]], bits=None, fmt="tiff"), "floating-point"),
    (grey([[0, 200]], fmt="dicom", rescale=(1.0, -1024.0)), "8-bit"),
    (grey([[0, 200]], fmt="dicom", invert=True), "8-bit"),
])
def test_grey_that_8bit_colour_cannot_hold_is_refused_for_an_rgb_model(image, depth):
    with pytest.raises(BadRequest) as info:
        preprocess.prepare(image, spec("NCHW", color="RGB", scaling="raw"))
    assert (info.value.status, info.value.code) == (400, "channels_mismatch")
    assert f"{depth} greyscale" in info.value.message and "3 colour channels" in info.value.message


def test_8bit_dicom_grey_without_rescale_is_replicated():
    tensor, _ = preprocess.prepare(grey([[0, 255]], fmt="dicom"), spec("HWC", color="RGB"))
    np.testing.assert_allclose(tensor, [[[0, 0, 0], [1, 1, 1]]])


def test_16bit_colour_to_grey_is_its_luma_in_the_16bit_range():
    pixels = np.array([[[65535, 65535, 65535], [65535, 0, 0]]], np.uint16)
    tensor, _ = preprocess.prepare(Image(pixels, 16, "dicom"), spec("HW"))
    np.testing.assert_allclose(tensor, [[1.0, 0.299]], rtol=1e-6)  # unit scaling divides by 2**16 - 1


def test_floating_point_colour_to_grey_is_refused():
    image = Image(np.zeros((2, 2, 3), np.float32), None, "tiff")
    with pytest.raises(BadRequest) as info:
        preprocess.prepare(image, spec("HW", scaling="raw"))
    assert info.value.code == "channels_mismatch" and "floating-point colour" in info.value.message


# ------------------------------------------------------------------ geometry

def ramp(h: int, w: int) -> Image:
    return Image((np.arange(h * w) % 256).astype(np.uint8).reshape(h, w), 8, "png")


def test_keep_size_without_padding():
    tensor, geometry = preprocess.prepare(ramp(5, 7), spec("HW"))
    assert tensor.shape == (5, 7) and geometry == Geometry((5, 7), (5, 7), (0, 0), (5, 7))


def test_keep_size_pads_bottom_right_to_a_multiple():
    image = ramp(5, 7)
    tensor, geometry = preprocess.prepare(image, spec("NCHW", scaling="raw", pad_multiple=4, pad_value=-1))
    assert geometry == Geometry((5, 7), (5, 7), (0, 0), (8, 8))
    assert tensor.shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(tensor[0, 0, :5, :7], image.pixels)
    assert (tensor[0, 0, 5:, :] == -1).all() and (tensor[0, 0, :, 7:] == -1).all()


def test_keep_size_already_a_multiple_is_unchanged():
    _, geometry = preprocess.prepare(ramp(8, 12), spec("HW", pad_multiple=4))
    assert geometry.model == (8, 12)


def test_stretch_resizes_both_axes():
    image = grey(np.full((4, 8), 200))
    tensor, geometry = preprocess.prepare(image, spec("HW", scaling="raw", size=[2, 2]))
    assert geometry == Geometry((4, 8), (2, 2), (0, 0), (2, 2))
    np.testing.assert_allclose(tensor, np.full((2, 2), 200.0), rtol=1e-5)


def test_pad_keeps_aspect_and_centres():
    image = ramp(4, 8)
    tensor, geometry = preprocess.prepare(image, spec("HW", scaling="raw", size=[8, 8], fit="pad", pad_value=-1))
    assert geometry == Geometry((4, 8), (4, 8), (2, 0), (8, 8))
    assert (tensor[:2] == -1).all() and (tensor[6:] == -1).all()
    np.testing.assert_array_equal(tensor[2:6], image.pixels)


def test_pad_with_downscaling():
    _, geometry = preprocess.prepare(ramp(10, 20), spec("HW", size=[5, 5], fit="pad"))
    assert geometry == Geometry((10, 20), (2, 5), (1, 0), (5, 5))  # 10 * 0.25 = 2.5 rounds to 2


def test_crop_keeps_aspect_and_centres():
    image = ramp(4, 8)
    tensor, geometry = preprocess.prepare(image, spec("HW", scaling="raw", size=[4, 4], fit="crop"))
    assert geometry == Geometry((4, 8), (4, 8), (0, -2), (4, 4))
    np.testing.assert_array_equal(tensor, image.pixels[:, 2:6])


def test_crop_with_upscaling():
    _, geometry = preprocess.prepare(ramp(10, 20), spec("HW", size=[40, 20], fit="crop"))
    assert geometry == Geometry((10, 20), (40, 80), (0, -30), (40, 20))


def test_a_thin_image_keeps_at_least_one_pixel():
    _, geometry = preprocess.prepare(ramp(1, 300), spec("HW", size=[16, 16], fit="pad"))
    assert geometry.resized == (1, 16) and geometry.offset == (7, 0)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic", "lanczos", "area"])
def test_every_resample_method_resizes_and_keeps_a_flat_image_flat(method):
    tensor, _ = preprocess.prepare(grey(np.full((9, 13), 120)), spec("HW", scaling="raw", size=[4, 6],
                                                                      resample=method))
    assert tensor.shape == (4, 6)
    np.testing.assert_allclose(tensor, 120.0, rtol=1e-4)


def test_nearest_upscaling_repeats_pixels():
    tensor, _ = preprocess.prepare(grey([[0, 255]]), spec("HW", scaling="raw", size=[2, 4], resample="nearest"))
    np.testing.assert_array_equal(tensor, [[0, 0, 255, 255], [0, 0, 255, 255]])


def test_resize_of_uint8_masks_and_float_channels():
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(preprocess.resize(mask, (4, 4), "nearest"), np.kron(mask, np.ones((2, 2), int)))
    values = np.random.default_rng(0).random((3, 5, 3), dtype=np.float32)
    assert preprocess.resize(values, (6, 10), "bilinear").shape == (6, 10, 3)
    assert preprocess.resize(values, (3, 5), "bilinear") is values


# ------------------------------------------------------------------ restore

def test_restore_undoes_pad():
    geometry = Geometry((4, 8), (4, 8), (2, 0), (8, 8))
    mask = np.zeros((8, 8), np.uint8)
    mask[3, 5] = 7
    restored = preprocess.restore(mask, geometry)
    assert restored.shape == (4, 8) and restored[1, 5] == 7 and restored.sum() == 7


def test_restore_undoes_crop_leaving_the_cut_edges_empty():
    geometry = Geometry((4, 8), (4, 8), (0, -2), (4, 4))
    restored = preprocess.restore(np.ones((4, 4), np.uint8), geometry)
    assert restored.shape == (4, 8)
    np.testing.assert_array_equal(restored[:, 2:6], 1)
    assert restored[:, :2].sum() == 0 and restored[:, 6:].sum() == 0


def test_restore_undoes_stretch():
    mask = np.array([[1, 0], [0, 2]], dtype=np.uint8)
    restored = preprocess.restore(mask, Geometry((4, 6), (2, 2), (0, 0), (2, 2)))
    np.testing.assert_array_equal(restored, np.kron(mask, np.ones((2, 3), np.uint8)))


def test_restore_drops_the_padding_of_keep_size():
    mask = np.full((8, 8), 3, np.uint8)
    restored = preprocess.restore(mask, Geometry((5, 7), (5, 7), (0, 0), (8, 8)))
    np.testing.assert_array_equal(restored, np.full((5, 7), 3))


FITS = st.sampled_from(["stretch", "pad", "crop", "keep"])


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 60), w=st.integers(1, 60), th=st.integers(1, 40), tw=st.integers(1, 40),
       fit=FITS, multiple=st.integers(1, 8))
def test_content_mask_maps_back_over_the_image(h, w, th, tw, fit, multiple):
    """Pad with -1, mark where the tensor holds image content, and map that mask back."""
    options = {"pad_multiple": multiple} if fit == "keep" else {"size": [th, tw], "fit": fit}
    tensor, g = preprocess.prepare(ramp(h, w), spec("HW", pad_value=-1, **options))
    assert tensor.shape == g.model and g.original == (h, w)
    if fit == "stretch":
        assert g.resized == g.model == (th, tw) and g.offset == (0, 0)
    if fit == "keep":
        assert g.model[0] % multiple == 0 and g.model[1] % multiple == 0 and g.model[0] - h < multiple
    content = tensor >= 0  # unit-scaled content is in [0, 1]; padding is -1
    if fit in ("pad", "keep"):
        top, left = g.offset
        assert content.sum() == g.resized[0] * g.resized[1]
        assert content[top:top + g.resized[0], left:left + g.resized[1]].all()
    else:
        assert content.all()  # stretch and crop fill the model input
    restored = preprocess.restore(content.astype(np.uint8), g)
    assert restored.shape == (h, w)
    if fit != "crop":
        assert restored.all()
        return
    # crop: what was visible maps back to ones, within a pixel of the cut edges; the rest to zeros
    (rows, cols), _ = preprocess._overlap(g.resized, g.offset, g.model)
    spans = [(cut.start * original / size, cut.stop * original / size)
             for cut, size, original in ((rows, g.resized[0], h), (cols, g.resized[1], w))]
    (top, bottom), (left, right) = spans
    inner = restored[int(np.ceil(top)) + 1:int(np.floor(bottom)) - 1, int(np.ceil(left)) + 1:int(np.floor(right)) - 1]
    assert inner.all()
    outer = np.ones((h, w), bool)
    outer[max(0, int(np.floor(top)) - 1):int(np.ceil(bottom)) + 1,
          max(0, int(np.floor(left)) - 1):int(np.ceil(right)) + 1] = False
    assert not restored[outer].any()


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 30), w=st.integers(1, 30), th=st.integers(1, 30), tw=st.integers(1, 30),
       fit=st.sampled_from(["stretch", "pad", "crop"]))
def test_a_model_sized_label_mask_restores_to_the_image_size(h, w, th, tw, fit):
    g = preprocess.prepare(ramp(h, w), spec("NCHW", size=[th, tw], fit=fit))[1]
    labels = (np.arange(th * tw) % 5).astype(np.uint8).reshape(th, tw)
    restored = preprocess.restore(labels, g)
    assert restored.shape == (h, w) and restored.dtype == np.uint8
    assert set(np.unique(restored)) <= set(range(5))


# ------------------------------------------------------------------ integer resize first (8-bit, shrinking, linear)

def float_order(image: Image, cfg: images.ImageSpec):
    """normalise with the integer path turned off: colour, intensity, then the float32 resize."""
    return preprocess.normalise(image, cfg, integer_first=False)


def noise(shape, dtype=np.uint8, high=256) -> np.ndarray:
    return np.random.default_rng(7).integers(0, high, shape).astype(dtype)


def test_a_shrunk_8bit_image_is_pillows_8bit_resize_then_scaled():
    """What the hand-written handler and torchvision's PIL pipeline compute, to the float32 bit."""
    from PIL import Image as PILImage
    pixels = noise((90, 70))
    cfg = spec("HW", size=[32, 24], mean=[0.5], std=[0.25]).image
    values, geometry = preprocess.normalise(grey(pixels), cfg)
    small = np.asarray(PILImage.fromarray(pixels).resize((24, 32), PILImage.BILINEAR), dtype=np.float32)
    np.testing.assert_allclose(values[..., 0], (small / 255 - 0.5) / 0.25, rtol=0, atol=1e-6)
    assert geometry == Geometry((90, 70), (32, 24), (0, 0), (32, 24))


@pytest.mark.parametrize("color,shape", [("L", (120, 90)), ("RGB", (120, 90, 3))])
@pytest.mark.parametrize("method", ["bilinear", "area"])
@pytest.mark.parametrize("scaling", ["unit", "raw"])
def test_the_integer_path_differs_from_the_float_order_by_at_most_one_level(color, shape, method, scaling):
    image = Image(noise(shape), 8, "png")
    cfg = spec("NCHW", color=color, size=[40, 50], resample=method, scaling=scaling, rescale=[2.0, -10.0]).image
    assert preprocess._resizes_first(image, cfg)
    new, g_new = preprocess.normalise(image, cfg)
    old, g_old = float_order(image, cfg)
    level = 1 / 255 if scaling == "unit" else 2.0
    assert g_new == g_old and new.shape == old.shape and new.dtype == np.float32
    assert np.abs(new - old).max() <= level * 1.0001
    assert np.abs(new - old).max() > 0  # the integer path did run: Pillow rounds


def test_nearest_on_the_integer_path_picks_the_same_pixels():
    image = Image(noise((101, 77, 3)), 8, "png")
    cfg = spec("NHWC", color="RGB", size=[33, 20], resample="nearest", channel_order="BGR").image
    assert preprocess._resizes_first(image, cfg)
    np.testing.assert_array_equal(preprocess.normalise(image, cfg)[0], float_order(image, cfg)[0])


@settings(max_examples=80, deadline=None)
@given(h=st.integers(2, 60), w=st.integers(2, 60), th=st.integers(1, 40), tw=st.integers(1, 40),
       fit=st.sampled_from(["stretch", "pad", "crop"]))
def test_the_integer_path_keeps_the_geometry_and_the_restored_masks(h, w, th, tw, fit):
    image = Image(noise((h, w)), 8, "png")
    cfg = spec("HW", size=[th, tw], fit=fit, pad_value=-1).image
    new, g_new = preprocess.normalise(image, cfg)
    old, g_old = float_order(image, cfg)
    assert g_new == g_old and new.shape == old.shape
    assert ((new == -1) == (old == -1)).all()  # the same padding: the content sits where it sat
    labels = (np.arange(th * tw) % 5).astype(np.uint8).reshape(th, tw)
    np.testing.assert_array_equal(preprocess.restore(labels, g_new), preprocess.restore(labels, g_old))


@pytest.mark.parametrize("why,image,options", [
    ("window is clipped", Image(noise((60, 60)), 8, "png"), {"scaling": "window", "window": {"center": 128, "width": 64}}),
    ("minmax is data-dependent", Image(noise((60, 60)), 8, "png"), {"scaling": "minmax"}),
    ("raw inverts by min + max", Image(noise((60, 60)), 8, "dicom", invert=True), {"scaling": "raw"}),
    ("bicubic overshoots, 8-bit clips", Image(noise((60, 60)), 8, "png"), {"resample": "bicubic"}),
    ("lanczos overshoots, 8-bit clips", Image(noise((60, 60)), 8, "png"), {"resample": "lanczos"}),
    ("16-bit", Image(noise((60, 60), np.uint16, 65536), 16, "png"), {}),
    ("1-bit stored in uint8", Image(noise((60, 60), high=2), 1, "dicom"), {}),
    ("upscaling", Image(noise((10, 10)), 8, "png"), {"size": [30, 30]}),
    ("colour made grey", Image(noise((60, 60, 3)), 8, "png"), {}),
])
def test_the_float_order_is_kept_where_an_integer_resize_would_change_more_than_rounding(why, image, options):
    cfg = spec("HW", **{"size": [20, 20], **options}).image
    assert not preprocess._resizes_first(image, cfg), why
    np.testing.assert_array_equal(preprocess.normalise(image, cfg)[0], float_order(image, cfg)[0])


def test_a_1bit_image_shrinks_to_fractions_not_to_rounded_levels():
    pixels = np.tile(np.array([[0, 1], [1, 0]], np.uint8), (10, 10))
    values, _ = preprocess.normalise(Image(pixels, 1, "dicom"), spec("HW", size=[10, 10], resample="area").image)
    np.testing.assert_allclose(values, 0.5, atol=1e-6)
