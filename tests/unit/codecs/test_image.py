"""image.py: Pillow decoding of PNG, JPEG, TIFF and BMP into stored pixel values, and the
pixel limit checked from the header before any pixel is decoded."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image as PILImage

from tests.support.images import damage, encode, png
from onnxfn.codecs import image
from onnxfn.errors import BadRequest, OnnxfnError, PayloadTooLarge, UnsupportedMediaType

LIMIT = 10_000_000


def saved(im: PILImage.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_header(width: int, height: int, body: bytes = b"not a zlib stream") -> bytes:
    """A PNG whose IHDR declares width x height 8-bit grey pixels, followed by a broken IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def gradient(h: int = 6, w: int = 7) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 5).astype(np.uint8)


# ------------------------------------------------------------------ formats and modes

def test_grey_8bit_png_keeps_values():
    pixels = gradient()
    im = image.decode(png(pixels), "png", LIMIT)
    assert (im.bits, im.format, im.channels) == (8, "png", 1)
    assert (im.height, im.width) == (6, 7)
    assert im.pixels.dtype == np.uint8
    np.testing.assert_array_equal(im.pixels, pixels)
    assert im.rescale is None and im.window is None and im.invert is False


def test_grey_16bit_png_keeps_full_range():
    pixels = np.array([[0, 1, 255, 256], [1000, 40000, 65534, 65535]], dtype=np.uint16)
    data = png(pixels)
    assert PILImage.open(io.BytesIO(data)).mode == "I;16"
    im = image.decode(data, "png", LIMIT)
    assert im.bits == 16 and im.pixels.dtype == np.uint16
    np.testing.assert_array_equal(im.pixels, pixels)


def test_rgb_png_keeps_values():
    pixels = np.random.default_rng(1).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    im = image.decode(png(pixels), "png", LIMIT)
    assert im.channels == 3 and im.bits == 8 and (im.height, im.width) == (5, 4)
    np.testing.assert_array_equal(im.pixels, pixels)


def test_rgba_png_drops_alpha_without_premultiplying():
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7  # nearly transparent
    im = image.decode(png(rgba), "png", LIMIT)
    assert im.pixels.shape == (3, 4, 3)
    np.testing.assert_array_equal(im.pixels, rgba[..., :3])


def test_palette_png_becomes_rgb_from_the_palette():
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    pal = PILImage.fromarray(indices, mode="L").convert("P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    pal.putdata(indices.reshape(-1).tolist())
    im = image.decode(saved(pal, "PNG"), "png", LIMIT)
    assert im.channels == 3 and im.bits == 8
    np.testing.assert_array_equal(im.pixels, [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]])


def test_palette_png_with_transparency_drops_alpha():
    pal = PILImage.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5)).convert("P")
    im = image.decode(saved(pal, "PNG", transparency=0), "png", LIMIT)
    assert im.pixels.shape == (4, 5, 3) and im.pixels.dtype == np.uint8
    np.testing.assert_array_equal(im.pixels[..., 0], np.arange(20).reshape(4, 5))


def test_one_bit_png_becomes_0_and_255():
    bits = np.eye(4, dtype=bool)
    im = image.decode(saved(PILImage.fromarray(bits), "PNG"), "png", LIMIT)
    assert im.bits == 8 and im.channels == 1
    np.testing.assert_array_equal(im.pixels, np.where(bits, 255, 0))


def test_grey_alpha_png_keeps_the_grey_channel():
    la = np.stack([gradient(3, 3), np.full((3, 3), 100, np.uint8)], axis=-1)
    im = image.decode(saved(PILImage.fromarray(la, mode="LA"), "PNG"), "png", LIMIT)
    assert im.channels == 1
    np.testing.assert_array_equal(im.pixels, la[..., 0])


def test_jpeg_decodes_close_to_its_source():
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 200, 120, 40
    im = image.decode(encode(pixels, "JPEG", quality=95), "jpeg", LIMIT)
    assert (im.format, im.bits, im.pixels.shape) == ("jpeg", 8, (16, 16, 3))
    assert np.abs(im.pixels.astype(int) - pixels).max() <= 3


def test_grey_jpeg_stays_grey():
    im = image.decode(encode(np.full((8, 8), 77, np.uint8), "JPEG", quality=95), "jpeg", LIMIT)
    assert im.channels == 1 and abs(int(im.pixels.mean()) - 77) <= 1


def test_cmyk_jpeg_becomes_rgb():
    data = saved(PILImage.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=95)
    im = image.decode(data, "jpeg", LIMIT)
    assert im.pixels.shape == (4, 4, 3) and im.bits == 8
    red, green, blue = (int(v) for v in im.pixels.reshape(-1, 3).mean(axis=0))
    assert red > 200 and green < 50 and blue < 50


@pytest.mark.parametrize("array", [gradient(), np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)],
                         ids=["grey", "rgb"])
@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_adobe_deflate"])
def test_tiff_8bit_keeps_values(array, compression):
    data = encode(array, "TIFF", **({"compression": compression} if compression else {}))
    im = image.decode(data, "tiff", LIMIT)
    assert im.format == "tiff" and im.bits == 8
    np.testing.assert_array_equal(im.pixels, array)


@pytest.mark.parametrize("pixels, bits, dtype", [
    (np.array([[0, 4095], [40000, 65535]], dtype=np.uint16), 16, np.uint16),
    (np.array([[1.5, -2.25], [0.0, 1e6]], dtype=np.float32), None, np.float32),  # floating point: no bits
    (np.array([[0, 7000], [65535, 3]], dtype=np.int32), 16, np.uint16),          # 32-bit integers within 16 bits
], ids=["uint16-full-range", "float32", "int32-within-16-bits"])
def test_wide_tiffs_keep_their_values(pixels, bits, dtype):
    im = image.decode(encode(pixels, "TIFF"), "tiff", LIMIT)
    assert im.bits == bits and im.pixels.dtype == dtype
    np.testing.assert_array_equal(im.pixels, pixels)


@pytest.mark.parametrize("value", [70000, -1])
def test_32bit_integer_tiff_beyond_16_bits_is_refused(value):
    data = encode(np.array([[1, value]], dtype=np.int32), "TIFF")
    with pytest.raises(UnsupportedMediaType) as info:
        image.decode(data, "tiff", LIMIT)
    assert (info.value.status, info.value.code) == (415, "unsupported_pixels")
    assert "32-bit integer TIFF" in info.value.message


@pytest.mark.parametrize("array", [gradient(), np.random.default_rng(3).integers(0, 256, (3, 5, 3), dtype=np.uint8)],
                         ids=["grey", "rgb"])
def test_bmp_keeps_values(array):
    im = image.decode(encode(array, "BMP"), "bmp", LIMIT)
    assert im.format == "bmp" and im.bits == 8
    np.testing.assert_array_equal(im.pixels, array)


# ------------------------------------------------------------------ damaged files

def assert_bad(data: bytes, fmt: str, code: str = "invalid_image", *words: str, limit: int = LIMIT) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        image.decode(data, fmt, limit)
    assert (info.value.status, info.value.code) == (400, code)
    assert fmt.upper() in info.value.message
    for word in words:
        assert word in info.value.message
    return info.value


def noisy(h=64, w=64, channels=None) -> np.ndarray:
    shape = (h, w) if channels is None else (h, w, channels)
    return np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8)


def test_truncated_png_is_invalid():
    data = png(noisy())
    assert_bad(data[: len(data) // 2], "png")


def test_png_cut_inside_its_header_is_invalid():
    assert_bad(png(noisy())[:20], "png")


def test_truncated_jpeg_is_invalid():
    data = encode(noisy(channels=3), "JPEG")
    assert_bad(data[: len(data) // 2], "jpeg")


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_tiff_is_invalid(keep):
    data = encode(noisy(), "TIFF")
    assert_bad(data[: int(len(data) * keep)], "tiff")


def test_truncated_bmp_is_invalid():
    data = encode(noisy(channels=3), "BMP")
    assert_bad(data[: len(data) // 2], "bmp")


def test_another_format_is_named_as_not_readable():
    error = assert_bad(png(gradient()), "jpeg")
    assert "not a readable JPEG" in error.message


def test_garbage_is_invalid():
    assert_bad(b"definitely not an image", "png")


def test_png_with_broken_pixel_stream_is_invalid():
    assert_bad(png_header(8, 8), "png")


# ------------------------------------------------------------------ the pixel limit

def test_pixel_limit_is_checked_from_the_png_header_before_decoding():
    # the body after IHDR is garbage: a 413 proves the pixels were never decoded
    data = png_header(5000, 5000)
    with pytest.raises(PayloadTooLarge) as info:
        image.decode(data, "png", 1_000_000)
    assert (info.value.status, info.value.code) == (413, "too_many_pixels")
    assert "5000x5000" in info.value.message and "25,000,000" in info.value.message
    assert "1,000,000" in info.value.message and "ONNXFN_MAX_PIXELS" in info.value.message
    # and under a larger limit the same bytes reach the decoder, which finds them broken
    assert_bad(data, "png", limit=30_000_000)


def test_absurd_png_header_is_413_not_a_crash():
    # 100000 x 100000 trips Pillow's own decompression-bomb guard inside Image.open
    with pytest.raises(PayloadTooLarge) as info:
        image.decode(png_header(100_000, 100_000), "png", LIMIT)
    assert (info.value.status, info.value.code) == (413, "too_many_pixels")
    assert "ONNXFN_MAX_PIXELS" in info.value.message


def test_pixel_limit_is_checked_from_the_jpeg_header_before_decoding():
    data = bytearray(encode(noisy(16, 16, 3), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", 4000, 3000)  # height, width
    del data[data.index(b"\xff\xda") + 20:]  # and almost no scan data
    with pytest.raises(PayloadTooLarge) as info:
        image.decode(bytes(data), "jpeg", 1_000_000)
    assert (info.value.status, info.value.code) == (413, "too_many_pixels")
    assert "3000x4000" in info.value.message


def test_pixel_limit_is_checked_from_the_bmp_header_before_decoding():
    data = bytearray(encode(noisy(4, 4, 3), "BMP"))
    data[18:26] = struct.pack("<ii", 3000, 3000)
    with pytest.raises(PayloadTooLarge) as info:
        image.decode(bytes(data), "bmp", 1_000_000)
    assert info.value.code == "too_many_pixels" and "3000x3000" in info.value.message


def test_pixel_limit_is_inclusive():
    data = png(np.zeros((10, 10), np.uint8))
    assert image.decode(data, "png", 100).pixels.shape == (10, 10)
    with pytest.raises(PayloadTooLarge):
        image.decode(data, "png", 99)


def test_check_pixels_counts_frames():
    image.check_pixels(10, 10, 3, 300, "the thing")
    with pytest.raises(PayloadTooLarge) as info:
        image.check_pixels(10, 10, 4, 300, "the thing")
    assert info.value.message.startswith("the thing declares 10x10x4 frames = 400 pixels")


@pytest.mark.parametrize("width,height", [(0, 5), (5, 0), (-1, 5)])
def test_check_pixels_refuses_empty_images(width, height):
    with pytest.raises(BadRequest) as info:
        image.check_pixels(width, height, 1, LIMIT, "the image")
    assert info.value.code == "invalid_image" and f"{width}x{height}" in info.value.message


def test_multi_frame_tiff_is_refused():
    frames = [PILImage.fromarray(np.full((4, 4), i, np.uint8)) for i in range(3)]
    data = saved(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(BadRequest) as info:
        image.decode(data, "tiff", LIMIT)
    assert (info.value.status, info.value.code) == (400, "multi_frame")
    assert "3 frames" in info.value.message


# ------------------------------------------------------------------ robustness

SEEDS = {
    "png": png(noisy(12, 12, 3)),
    "jpeg": encode(noisy(12, 12, 3), "JPEG"),
    "tiff": encode(noisy(12, 12, 3), "TIFF"),
    "bmp": encode(noisy(12, 12, 3), "BMP"),
}
SEEDS["tiff16"] = encode((noisy(12, 12).astype(np.uint16) * 200), "TIFF")


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(SEEDS)), edits=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.sampled_from(["set", "cut", "insert"])),
    min_size=1, max_size=6))
def test_damaged_images_only_raise_onnxfn_errors(seed, edits):
    data = damage(SEEDS[seed], edits, insert=3)
    fmt = "tiff" if seed.startswith("tiff") else seed
    try:
        decoded = image.decode(data, fmt, 1_000_000)
    except OnnxfnError as e:
        assert e.status in (400, 413, 415)
    else:
        assert decoded.pixels.ndim in (2, 3) and decoded.pixels.size > 0


def test_tiff_whose_second_page_has_no_size_is_invalid_not_a_crash():
    # counting the pages reads the second IFD; without ImageWidth/ImageLength Pillow raises TypeError
    pages = [PILImage.fromarray(np.full((4, 4), i, np.uint8)) for i in range(2)]
    data = bytearray(saved(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    first = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[first:first + 2])[0]
    second = struct.unpack("<I", data[first + 2 + 12 * entries: first + 6 + 12 * entries])[0]
    assert second > 0
    for i in range(struct.unpack("<H", data[second:second + 2])[0]):
        entry = second + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] in (256, 257):  # ImageWidth, ImageLength
            data[entry:entry + 2] = struct.pack("<H", 65000)  # an unknown private tag now
    with pytest.raises(BadRequest) as info:
        image.decode(bytes(data), "tiff", LIMIT)
    assert (info.value.status, info.value.code) == (400, "invalid_image")
    assert "TIFF image is corrupt" in info.value.message
