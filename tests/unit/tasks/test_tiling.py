"""tiling.py: sliding-window inference blended into the whole image's output, checked against whole-image
inference through onnxruntime (pointwise models exactly, the demo U-Net within a measured tolerance)."""
from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from onnxfn.bundles import bundle as bundles
from onnxfn.bundles import manifest
from onnxfn.bundles.images import Tiling
from onnxfn.codecs.image import Image
from onnxfn.errors import InferenceError
from onnxfn.runtime import session as sessions
from onnxfn.tasks import postprocess, preprocess, tiling
from tests.support.models import MODELS, onnx_model

SHAPES = {"NCHW": ["N", "C", "H", "W"], "NHWC": ["N", "H", "W", "C"], "CHW": ["C", "H", "W"],
          "HWC": ["H", "W", "C"], "NHW": ["N", "H", "W"], "HW": ["H", "W"]}


def spec(layout: str = "NCHW", dtype: str = "float32", tile=(64, 64), overlap: float = 0.25,
         blend: str = "gaussian", **image) -> manifest.InputSpec:
    """A segmentation model's image input with tiling, parsed (and so validated) as a bundle's manifest is."""
    image.setdefault("scaling", "raw")
    channels = 3 if image.get("color") == "RGB" else 1
    document = {"name": "m", "version": "1", "task": "segmentation",
                "inputs": [{"name": "image", "dtype": dtype, "layout": layout,
                            "shape": [channels if d == "C" else d for d in SHAPES[layout]],
                            "image": {**image, "tiling": {"tile": list(tile), "overlap": overlap, "blend": blend}}}],
                "outputs": [{"name": "out", "decision": "argmax"}],
                "artifacts": [{"path": "model.onnx", "sha256": "0" * 64, "size": 1}]}
    return manifest.parse(document).inputs[0]


def grey(h: int, w: int, seed: int = 0, bits: int = 16) -> Image:
    rng = np.random.default_rng(seed)
    return Image(rng.integers(0, 2 ** bits, (h, w), dtype=np.uint16 if bits == 16 else np.uint8), bits, "png")


def session_runner(path, spec_: manifest.InputSpec):
    session = sessions.create(path, 1)
    name = session.get_outputs()[0].name
    return lambda feed: session.run([name], {spec_.name: feed})[0]


# --- the window grid ---------------------------------------------------------------------------------------

def test_windows_step_by_the_stride_and_the_last_is_flush_with_the_edge():
    assert tiling.windows(512, 256, 192) == [0, 192, 256]
    assert tiling.windows(512, 256, 256) == [0, 256]
    assert tiling.windows(100, 256, 192) == [0]
    assert tiling.windows(260, 256, 192) == [0, 4]


def test_the_step_is_rounded_down_to_pad_multiple_and_never_below_it():
    assert tiling.step(spec(tile=(64, 64), overlap=0.25, pad_multiple=8), 64) == 48
    assert tiling.step(spec(tile=(72, 72), overlap=0.3, pad_multiple=8), 72) == 48  # 50.4 -> 48
    assert tiling.step(spec(tile=(16, 16), overlap=0.99, pad_multiple=4), 16) == 4
    assert tiling.step(spec(tile=(64, 64), overlap=0.0), 64) == 64


@settings(max_examples=300, deadline=None)
@given(m=st.sampled_from([1, 2, 4, 8, 16]), tiles=st.integers(1, 40), cells=st.integers(1, 200),
       overlap=st.floats(0.0, 0.95))
def test_the_grid_covers_every_pixel_with_tiles_overlapping_as_asked(m, tiles, cells, overlap):
    tile, size = -(-max(8, tiles * m) // m) * m, cells * m  # tiles are multiples of pad_multiple, 8 or more
    s = spec(tile=(tile, tile), overlap=overlap, pad_multiple=m)
    t = tiling.tile_size(s, size, size)[0]
    stride = tiling.step(s, t)
    starts = tiling.windows(size, t, stride)
    assert t == min(tile, size) and stride % m == 0 and stride >= m
    assert stride <= max(m, t * (1 - overlap))  # neighbours overlap by at least `overlap` of a tile
    assert starts[0] == 0 and starts[-1] + t == size  # the last tile is flush with the edge
    assert all(s0 % m == 0 for s0 in starts)
    gaps = np.diff(starts)
    assert np.all(gaps > 0) and np.all(gaps[:-1] == stride) and (gaps.size == 0 or gaps[-1] <= stride)
    covered = np.zeros(size, dtype=bool)
    for s0 in starts:
        covered[s0:s0 + t] = True
    assert covered.all()
    assert np.all(tiling.coverage(starts, tiling.profile(t, s), size) > 0)


def test_the_gaussian_profile_is_monai_s_importance_map_along_one_axis():
    w = tiling.profile(256, spec(tile=(256, 256)))
    assert w.dtype == np.float32 and w.shape == (256,)
    assert np.allclose(w, w[::-1]) and w.max() == w[127] and w.max() > 0.99
    sigma = 0.125 * 256
    assert w[127 - 32] == pytest.approx(np.exp(-((32.5 / sigma) ** 2) / 2), rel=1e-6)  # 32.5 px from the centre
    assert w.min() == pytest.approx(1e-3) and w[0] == w.min()  # exp(-8) at the edge, clipped at 1e-3
    assert np.all(tiling.profile(64, spec(tile=(64, 64), blend="constant")) == 1.0)


def test_tile_shape_follows_the_layout():
    assert tiling.tile_shape(spec("NCHW", tile=(64, 32))) == (1, 1, 64, 32)
    assert tiling.tile_shape(spec("NHWC", tile=(64, 32), color="RGB")) == (1, 64, 32, 3)
    assert tiling.tile_shape(spec("HW", tile=(16, 24))) == (16, 24)


# --- pointwise models: tiled is whole-image inference up to float rounding -----------------------------------

def pointwise(path, layout: str, dtype: str, channels: int, classes: int = 3):
    """out = W x (cast to float) pixel + b per pixel, in the input's layout: 1x1 Conv (NCHW) or MatMul (NHWC)."""
    rng = np.random.default_rng(7)
    weights, bias = rng.normal(size=(classes, channels)).astype(np.float32), rng.normal(size=classes).astype(np.float32)
    kinds = {"float32": 1, "uint8": 2, "float16": 10}

    def graph(helper, T, nh):
        cast = helper.make_node("Cast", ["image"], ["x"], to=T.FLOAT)
        if layout == "NCHW":
            nodes = [cast, helper.make_node("Conv", ["x", "W", "B"], ["out"])]
            inits = [nh.from_array(weights[:, :, None, None], "W"), nh.from_array(bias, "B")]
            shapes = (["N", channels, "H", "W"], ["N", classes, "H", "W"])
        else:
            nodes = [cast, helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["out"])]
            inits = [nh.from_array(weights.T.copy(), "W"), nh.from_array(bias, "B")]
            shapes = (["N", "H", "W", channels], ["N", "H", "W", classes])
        return helper.make_graph(nodes, "pointwise", [helper.make_tensor_value_info("image", kinds[dtype], shapes[0])],
                                 [helper.make_tensor_value_info("out", T.FLOAT, shapes[1])], inits)
    return onnx_model(path, graph)


@pytest.mark.parametrize("layout, dtype, color", [("NCHW", "float32", "L"), ("NHWC", "float32", "RGB"),
                                                  ("NCHW", "float16", "L"), ("NHWC", "uint8", "RGB")])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_a_pointwise_model_tiled_is_the_whole_image_up_to_rounding(tmp_path, layout, dtype, color, blend):
    channels = 3 if color == "RGB" else 1
    extra = {"mean": [0.5] * channels, "std": [0.25] * channels} if dtype == "float32" else {}
    s = spec(layout, dtype, tile=(48, 32), overlap=0.3, blend=blend, color=color, pad_multiple=4,
             scaling="raw" if dtype == "uint8" else "unit", pad_value=3.0, **extra)
    rng = np.random.default_rng(1)
    image = Image(rng.integers(0, 256, (203, 157, channels)[:2 if channels == 1 else 3], dtype=np.uint8), 8, "png")
    infer = session_runner(pointwise(tmp_path / "p.onnx", layout, dtype, channels), s)
    feed, geometry = preprocess.prepare(image, s)
    whole = infer(feed)
    tiled, tiled_geometry = tiling.run(image, s, infer)
    assert tiled_geometry == geometry == preprocess.Geometry((203, 157), (203, 157), (0, 0), (204, 160))
    assert tiled.shape == whole.shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)


def test_blending_weights_neighbouring_tiles_as_asked():
    """A fake model whose every tile answers its own index: the blend is the tiles' weighted mean."""
    s_const, s_gauss = spec(tile=(16, 16), overlap=0.5, blend="constant"), spec(tile=(16, 16), overlap=0.5)
    calls = []

    def infer(feed):
        calls.append(feed.shape)
        return np.full((1, 1) + feed.shape[2:], float(len(calls)), dtype=np.float32)
    out = tiling.assemble(np.zeros((16, 24, 1), np.float32), s_const, infer)  # tiles at x = 0 and 8
    assert calls == [(1, 1, 16, 16)] * 2
    assert np.all(out[..., :8] == 1) and np.all(out[..., 8:16] == 1.5) and np.all(out[..., 16:] == 2)
    calls.clear()
    out = tiling.assemble(np.zeros((16, 24, 1), np.float32), s_gauss, infer)
    w = tiling.profile(16, s_gauss)
    expected = (1 * w[8:] + 2 * w[:8]) / (w[8:] + w[:8])
    np.testing.assert_allclose(out[0, 0, 3, 8:16], expected, rtol=1e-6)
    assert np.all(np.diff(out[0, 0, 3]) >= 0)  # moves from tile 1 to tile 2 monotonically


def test_an_image_no_larger_than_a_tile_is_run_whole():
    s = spec(tile=(64, 64), pad_multiple=4)
    feeds = []

    def infer(feed):
        feeds.append(feed)
        return feed * 2
    out, geometry = tiling.run(grey(50, 61), s, infer)
    whole, _ = preprocess.prepare(grey(50, 61), s)
    assert len(feeds) == 1 and feeds[0].shape == (1, 1, 52, 64) and np.array_equal(out, whole * 2)


def test_an_output_without_batch_and_channel_axes_is_blended_as_h_x_w():
    s = spec(tile=(32, 32), overlap=0.5, pad_multiple=4)
    image = grey(70, 90)
    out, _ = tiling.run(image, s, lambda feed: feed[0, 0] * 3.0)
    whole, _ = preprocess.prepare(image, s)
    assert out.shape == (72, 92)
    np.testing.assert_allclose(out, whole[0, 0] * 3.0, rtol=1e-6)


# --- bad models ------------------------------------------------------------------------------------------------

def test_an_output_that_does_not_keep_the_tile_s_size_is_a_bad_output():
    s = spec(tile=(32, 32))
    with pytest.raises(InferenceError) as e:
        tiling.run(grey(64, 64), s, lambda feed: feed[..., ::2, ::2])
    assert e.value.code == "bad_output" and "[1, 1, 16, 16] for a 32x32 tile" in str(e.value)
    with pytest.raises(InferenceError) as e:
        tiling.run(grey(64, 64), s, lambda feed: feed[0, 0, 0])
    assert e.value.code == "bad_output" and "does not follow the input's layout NCHW" in str(e.value)
    sizes = iter([3, 3, 4, 3])
    with pytest.raises(InferenceError, match="shape .1, 4, 32, 32. for one tile and .1, 3, 32, 32. for another"):
        tiling.run(grey(64, 64), s, lambda feed: np.repeat(feed, next(sizes), axis=1))


def test_an_input_without_tiling_cannot_be_tiled():
    s = spec()
    plain = dataclasses.replace(s, image=dataclasses.replace(s.image, tiling=None))
    with pytest.raises(ValueError, match="no image.tiling"):
        tiling.run(grey(64, 64), plain, lambda feed: feed)


# --- memory ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("color, channels_in, tile", [("L", 1, (128, 128)), ("L", 3, (128, 128)),
                                                      ("RGB", 3, (256, 64))])
def test_footprint_bounds_what_tiling_allocates_and_is_close_to_it(color, channels_in, tile):
    s = spec("NCHW", tile=tile, color=color, pad_multiple=8, scaling="unit")
    rng = np.random.default_rng(2)
    h, w = 1003, 777
    image = Image(rng.integers(0, 256, (h, w, channels_in) if channels_in == 3 else (h, w), dtype=np.uint8), 8, "png")
    classes = 2

    def infer(feed):  # a 2-class pointwise "model" allocating only its output, as onnxruntime's would
        out = np.empty((1, classes) + feed.shape[2:], dtype=np.float32)
        out[:, 0] = feed[:, 0]
        np.negative(feed[:, 0], out=out[:, 1])
        return out
    tracemalloc.start()
    try:
        out, _ = tiling.run(image, s, infer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    budget = tiling.footprint(h, w, channels_in, classes, s)
    assert out.shape == (1, classes, 1008, 784)
    # tracemalloc sees numpy's buffers; the image's own pixels were allocated before it started
    # measured: peak / footprint 0.993 (L from grey), 0.995 (L from colour), 0.996 (RGB)
    assert 0.95 * budget <= peak <= budget, (peak, budget)


# --- the demo U-Net: tiled against whole-image inference -------------------------------------------------------

@pytest.fixture(scope="module")
def unet():
    b = bundles.load(MODELS / "lesion-unet")
    return b.manifest, session_runner(b.root / "model.onnx", b.manifest.inputs[0])


def phantom(size) -> Image:
    from models.train import phantoms
    hu, _ = phantoms.make_phantom(900002, size)
    return Image((hu.astype(np.int32) + 1024).astype(np.uint16), 16, "png")  # as a 16-bit PNG of HU + 1024


def tiled_spec(m, tile, blend="gaussian", overlap=0.25):
    s = m.inputs[0]
    return dataclasses.replace(s, image=dataclasses.replace(s.image, tiling=Tiling(tile, overlap, blend)))


# Measured (tile 256, gaussian, overlap 0.25; logits span about -8.4..15.3): max |tiled - whole| 0.066 (512x384)
# and 0.054 (517x389), 99.9th percentile 0.022 and 0.017; masks agree on 100% of pixels. Constant blend, tile 128:
# max 13.7 and 14.7 at tile seams (zero padding inside the U-Net), masks agree on 99.959% and 99.939%.
@pytest.mark.parametrize("size", [(512, 384), (517, 389)])
def test_the_unet_tiled_answers_as_whole_image_inference(unet, size):
    m, infer = unet
    image = phantom(size)
    feed, geometry = preprocess.prepare(image, m.inputs[0])
    whole = infer(feed)
    s = tiled_spec(m, (256, 256))
    tiled, tiled_geometry = tiling.run(image, s, infer)
    assert tiled.shape == whole.shape and tiled_geometry == geometry
    error = np.abs(tiled - whole)
    assert error.max() < 0.1 and np.quantile(error, 0.999) < 0.03
    whole_answer = postprocess.segment(whole, m.primary_output, s, geometry)
    tiled_answer = postprocess.segment(tiled, m.primary_output, s, tiled_geometry)
    assert tiled_answer["mask"]["width"] == size[1] and tiled_answer["mask"]["height"] == size[0]
    lesion = whole_answer["classes"][0]["pixels"]
    assert lesion > 1000 and abs(tiled_answer["classes"][0]["pixels"] - lesion) <= lesion // 1000
    masks = [postprocess._labels(o, m.primary_output, s) for o in (whole, tiled)]
    assert (masks[0] == masks[1]).mean() >= 0.999


@pytest.mark.parametrize("size", [(512, 384), (517, 389)])
def test_the_unet_with_constant_blending_and_small_tiles_still_agrees(unet, size):
    m, infer = unet
    image = phantom(size)
    feed, geometry = preprocess.prepare(image, m.inputs[0])
    s = tiled_spec(m, (128, 128), "constant")
    tiled, _ = tiling.run(image, s, infer)
    masks = [postprocess._labels(o, m.primary_output, s) for o in (infer(feed), tiled)]
    assert (masks[0] == masks[1]).mean() >= 0.999


def test_the_unet_on_an_image_smaller_than_a_tile_is_whole_image_inference(unet):
    m, infer = unet
    image = phantom((100, 90))
    feed, geometry = preprocess.prepare(image, m.inputs[0])
    tiled, tiled_geometry = tiling.run(image, tiled_spec(m, (256, 256)), infer)
    assert tiled_geometry == geometry and np.array_equal(tiled, infer(feed))
