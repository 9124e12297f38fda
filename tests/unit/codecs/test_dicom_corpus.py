"""dicom.py on every file of pydicom's own test corpus (one test per file): where pydicom decodes a file with
the installed decoders, every frame matches its `pixel_array` (colour as pydicom converts it to RGB, palette
through its colour LUT) and its modality LUT; where nothing installed decodes it, a 415 naming the transfer
syntax; anything else a clear 400 or 415, never a crash."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

from onnxfn.codecs import dicom
from onnxfn.errors import OnnxfnError

LIMIT = 100_000_000
ROOT = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted(Path(f) for f in get_testdata_files() if Path(f).is_file())


def read(path: Path):
    """pydicom's dataset and decoded pixels, or the exception pydicom raised on either."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            return ds, ds.pixel_array
        except Exception as e:  # noqa: BLE001 - what pydicom raised decides what onnxfn must answer
            return None, e


def expected_frames(ds, pixels: np.ndarray) -> list[np.ndarray]:
    """pydicom's values per frame: RGB as it converts colour, palette through its LUT, grey through its modality LUT."""
    frames = int(ds.get("NumberOfFrames") or 1)
    stack = pixels if frames > 1 else pixels[None]
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        return [np.asarray(apply_color_lut(f, ds)) >> 8 for f in stack]  # 16-bit entries, top 8 bits kept
    if ds.get("SamplesPerPixel", 1) == 3:
        return list(stack)
    return [np.asarray(apply_modality_lut(f, ds), dtype=np.float64) for f in stack]


def values(im) -> np.ndarray:
    """What an onnxfn `Image` says the values are: stored values through its rescale."""
    if im.pixels.ndim == 3 or im.rescale is None:
        return im.pixels.astype(np.float64) if im.pixels.ndim == 2 else im.pixels
    slope, intercept = im.rescale
    return im.pixels.astype(np.float64) * slope + intercept


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", FILES, ids=[str(f.relative_to(ROOT)) for f in FILES])
def test_corpus_file(path: Path):
    data = path.read_bytes()
    ds, pixels = read(path)
    if ds is None:
        if isinstance(pixels, (RuntimeError, NotImplementedError)) and "decode" in str(pixels):
            # nothing installed decodes it (pydicom neither): a 415 naming its transfer syntax
            with pytest.raises(OnnxfnError) as info:
                dicom.decode_frames(data, LIMIT)
            syntax = pydicom.dcmread(path, force=True).file_meta.TransferSyntaxUID.name
            if info.value.code == "invalid_dicom":  # refused before decoding: its codestream's header is damaged
                assert "compressed codestream declares" in info.value.message
                return
            assert (info.value.status, info.value.code) == (415, "dicom_unsupported_syntax")
            assert f"transfer syntax {syntax!r}" in info.value.message
            return
        # not DICOM, no pixels, truncated or damaged: a clear refusal
        with pytest.raises(OnnxfnError) as info:
            dicom.decode_frames(data, LIMIT)
        assert (info.value.status, info.value.code) in {(400, "invalid_dicom"), (415, "dicom_no_pixels")}
        return
    frames = dicom.decode_frames(data, LIMIT)
    expected = expected_frames(ds, pixels)
    assert len(frames) == len(expected)
    for i, (im, want) in enumerate(zip(frames, expected)):
        assert im.format == "dicom" and im.pixels.dtype.isnative
        assert im.frame == (i if len(frames) > 1 else None)
        np.testing.assert_array_equal(values(im), want, err_msg=f"frame {i}")
        if im.channels == 3:
            assert im.bits == (8 if im.pixels.dtype == np.uint8 else int(ds.BitsStored))
    if len(frames) == 1:
        single = dicom.decode(data, LIMIT)
        np.testing.assert_array_equal(single.pixels, frames[0].pixels)
        assert (single.rescale, single.window, single.invert) == (frames[0].rescale, frames[0].window,
                                                                  frames[0].invert)


def test_the_corpus_covers_what_the_decoders_are_for():
    syntaxes = {}
    for path in FILES:
        ds, pixels = read(path)
        if ds is not None:
            syntaxes.setdefault(ds.file_meta.TransferSyntaxUID.name, []).append(path.name)
    for name in ("JPEG-LS Lossless Image Compression", "JPEG-LS Lossy (Near-Lossless) Image Compression",
                 "JPEG 2000 Image Compression", "JPEG 2000 Image Compression (Lossless Only)",
                 "JPEG Extended (Process 2 and 4)", "JPEG Baseline (Process 1)", "RLE Lossless",
                 "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"):
        assert syntaxes.get(name), f"no decodable corpus file in {name}"


@pytest.mark.parametrize("name", ["SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm",
                                  "examples_ybr_color.dcm"])
def test_ybr_becomes_rgb_as_pydicom_converts_it(name):
    # pydicom's conversion spelled out: the stored YBR values through convert_color_space
    ds = pydicom.dcmread(ROOT / name)
    ds.pixel_array_options(as_rgb=False)
    ybr = ds.pixel_array
    rgb = convert_color_space(ybr, ds.PhotometricInterpretation, "RGB")
    frames = dicom.decode_frames((ROOT / name).read_bytes(), LIMIT)
    got = np.stack([im.pixels for im in frames]) if len(frames) > 1 else frames[0].pixels
    np.testing.assert_array_equal(got, rgb)
