"""dicom.py on pydicom's own test corpus: transfer syntaxes, rescale, VOI window,
MONOCHROME1, palette and RGB colour, the pixel limit, and errors that name what was wrong
without ever quoting patient data."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.images import damage, pydicom_file
from tests.support.volumes import group
from onnxfn.codecs import dicom
from onnxfn.errors import BadRequest, OnnxfnError, PayloadTooLarge, UnsupportedMediaType
from onnxfn.bundles.images import Window

LIMIT = 10_000_000


def raw(name: str) -> bytes:
    return pydicom_file(name).read_bytes()


def dataset(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(pydicom_file(name))


def written(ds: pydicom.Dataset, **kwargs) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, **kwargs)
    return buffer.getvalue()


def reference(name: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dataset(name).pixel_array


def refused(data: bytes, error=BadRequest, limit: int = LIMIT) -> OnnxfnError:
    with pytest.raises(error) as info:
        dicom.decode(data, limit)
    return info.value


# ------------------------------------------------------------------ grey images

def test_ct_reads_stored_values_rescale_and_no_window():
    im = dicom.decode(raw("CT_small.dcm"), LIMIT)
    assert (im.format, im.bits, im.pixels.shape, im.pixels.dtype) == ("dicom", 16, (128, 128), np.int16)
    assert im.rescale == (1.0, -1024.0)
    assert im.window is None  # CT_small has no VOI window of its own
    assert im.invert is False
    np.testing.assert_array_equal(im.pixels, reference("CT_small.dcm"))
    assert (int(im.pixels.min()), int(im.pixels.max())) == (128, 2191)


def test_ct_window_from_the_file_takes_the_first_of_several():
    ds = dataset("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = [40, 400], [400, 2000]
    im = dicom.decode(written(ds), LIMIT)
    assert im.window == Window(40.0, 400.0)


@pytest.mark.parametrize("width", [0, -10])
def test_a_window_without_positive_width_is_ignored(width):
    ds = dataset("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, width
    assert dicom.decode(written(ds), LIMIT).window is None


def test_mr_has_its_window_and_no_rescale():
    im = dicom.decode(raw("MR_small.dcm"), LIMIT)
    assert im.window == Window(600.0, 1600.0)
    assert im.rescale is None and im.bits == 16


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "MR_small_expb.dcm", "MR_small_jp2klossless.dcm", "MR_small_padded.dcm"])
def test_every_encoding_of_mr_small_gives_the_same_pixels(name):
    expected = dicom.decode(raw("MR_small.dcm"), LIMIT)
    im = dicom.decode(raw(name), LIMIT)
    assert im.pixels.shape == (64, 64)
    assert im.pixels.dtype.isnative  # big-endian data comes back in native byte order
    np.testing.assert_array_equal(im.pixels, expected.pixels)
    assert im.window == expected.window


def test_jpeg2000_decodes_through_pillow():
    im = dicom.decode(raw("693_J2KI.dcm"), LIMIT)
    assert im.pixels.shape == (512, 512) and im.bits == 14
    assert im.rescale == (1.0, -1024.0) and im.window == Window(40.0, 100.0)
    # a CT slice: air around the head at the low end, bone at the high end
    assert int(im.pixels.min()) < -1000 and int(im.pixels.max()) > 1000


def test_bare_dataset_without_preamble_or_file_meta_is_read(tmp_path):
    ds = dataset("CT_small.dcm")
    del ds.file_meta
    ds.preamble = None
    for implicit in (True, False):
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=False, implicit_vr=implicit, little_endian=True)
        data = buffer.getvalue()
        assert data[128:132] != b"DICM"
        im = dicom.decode(data, LIMIT)
        np.testing.assert_array_equal(im.pixels, reference("CT_small.dcm"))
        assert im.rescale == (1.0, -1024.0)


def test_monochrome1_sets_invert():
    ds = dataset("CT_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    im = dicom.decode(written(ds), LIMIT)
    assert im.invert is True
    np.testing.assert_array_equal(im.pixels, reference("CT_small.dcm"))


def test_modality_lut_sequence_gives_float_values_without_bits():
    ds = dataset("CT_small.dcm")
    stored = (np.arange(128 * 128) % 256).astype(np.int16).reshape(128, 128)
    ds.PixelData = stored.tobytes()
    del ds.RescaleSlope, ds.RescaleIntercept
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "HU"
    lut = np.arange(256, dtype=np.uint16) * 10 + 5
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUTData
    ds.ModalityLUTSequence = [item]
    im = dicom.decode(written(ds), LIMIT)
    assert im.bits is None and im.rescale is None and im.pixels.dtype == np.float32
    np.testing.assert_array_equal(im.pixels, lut[stored].astype(np.float32))


# ------------------------------------------------------------------ colour

def test_rgb_keeps_the_colours():
    im = dicom.decode(raw("SC_rgb_rle.dcm"), LIMIT)
    assert (im.pixels.shape, im.pixels.dtype, im.bits, im.channels) == ((100, 100, 3), np.uint8, 8, 3)
    bands = im.pixels[[5, 15, 25, 35, 45, 55, 65, 75, 85, 95], 50]
    np.testing.assert_array_equal(bands, [[255, 0, 0], [255, 128, 128], [0, 255, 0], [128, 255, 128],
                                          [0, 0, 255], [128, 128, 255], [0, 0, 0], [64, 64, 64],
                                          [192, 192, 192], [255, 255, 255]])
    assert im.rescale is None and im.window is None and im.invert is False


@pytest.mark.parametrize("name", ["SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "examples_rgb_color.dcm", "examples_jpeg2k.dcm"])
def test_colour_files_come_back_as_8bit_rgb(name):
    im = dicom.decode(raw(name), LIMIT)
    assert im.pixels.ndim == 3 and im.pixels.shape[2] == 3
    assert im.pixels.dtype == np.uint8 and im.bits == 8
    assert im.pixels.flags.c_contiguous


def test_palette_colour_becomes_8bit_rgb():
    from pydicom.pixels import apply_color_lut

    ds = dataset("examples_palette.dcm")
    assert ds.BitsStored == 8 and ds.RedPaletteColorLookupTableDescriptor[2] == 16  # 8-bit indices, 16-bit entries
    im = dicom.decode(raw("examples_palette.dcm"), LIMIT)
    assert (im.pixels.shape, im.pixels.dtype, im.bits) == ((350, 800, 3), np.uint8, 8)
    expected = (apply_color_lut(reference("examples_palette.dcm"), ds) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(im.pixels, expected)
    assert int(im.pixels.max()) == 255


def test_16bit_colour_keeps_its_values_with_bits_stored():
    im = dicom.decode(raw("SC_rgb_rle_16bit.dcm"), LIMIT)
    assert (im.pixels.shape, im.pixels.dtype, im.bits, im.channels) == ((100, 100, 3), np.uint16, 16, 3)
    np.testing.assert_array_equal(im.pixels, reference("SC_rgb_rle_16bit.dcm"))
    assert int(im.pixels.max()) == 65535  # the full 16-bit range: unit scaling divides by 2**16 - 1


def test_colour_with_fewer_bits_stored_keeps_them():
    ds = dataset("SC_rgb_rle_16bit.dcm")
    ds.decompress()
    stored = (reference("SC_rgb_rle_16bit.dcm") >> 4).astype(np.uint16)
    ds.PixelData, ds.BitsStored, ds.HighBit = stored.tobytes(), 12, 11
    im = dicom.decode(written(ds), LIMIT)
    assert (im.bits, im.pixels.dtype) == (12, np.uint16)
    np.testing.assert_array_equal(im.pixels, stored)


def test_16bit_colour_feeds_an_rgb_model_scaled_by_its_bits():
    from onnxfn.bundles.images import ImageSpec
    from onnxfn.bundles.manifest import InputSpec
    from onnxfn.tasks.preprocess import prepare

    im = dicom.decode(raw("SC_rgb_rle_16bit.dcm"), LIMIT)
    spec = InputSpec(name="x", dtype="float32", shape=(1, 3, 100, 100), layout="NCHW",
                     image=ImageSpec(color="RGB", scaling="unit"))
    tensor, _ = prepare(im, spec)
    np.testing.assert_allclose(tensor[0].transpose(1, 2, 0), im.pixels / 65535.0, atol=1e-6)


# ------------------------------------------------------------------ refusals

def unsupported_syntax(uid: str = "1.2.840.10008.1.2.4.100") -> bytes:
    """CT_small re-labelled as an encapsulated syntax pydicom has no decoder for (MPEG2 by default)."""
    from pydicom.encaps import encapsulate
    ds = dataset("CT_small.dcm")
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid
    return written(ds, enforce_file_format=True)


@pytest.mark.parametrize("uid,syntax", [("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level"),
                                        ("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile / Level 4.1")])
def test_syntax_without_a_decoder_is_415_naming_syntax_and_packages(uid, syntax):
    error = refused(unsupported_syntax(uid), UnsupportedMediaType)
    assert (error.status, error.code) == (415, "dicom_unsupported_syntax")
    assert f"transfer syntax '{syntax}" in error.message
    assert "pylibjpeg" in error.message and "gdcm" in error.message


def test_a_syntax_whose_plugins_are_missing_is_415_naming_the_packages(monkeypatch):
    from pydicom.pixels.decoders.base import JPEGLSLosslessDecoder as decoder
    dicom.enable_plugins()  # what a compressed file does first; then the plugins go missing
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    error = refused(raw("MR_small_jpeg_ls_lossless.dcm"), UnsupportedMediaType)
    assert (error.status, error.code) == (415, "dicom_unsupported_syntax")
    assert "no installed decoder handles the DICOM transfer syntax 'JPEG-LS Lossless" in error.message
    assert "pylibjpeg-libjpeg" in error.message and "gdcm" in error.message


@pytest.mark.parametrize("name,syntax", [("JPEG-lossy.dcm", "JPEG Extended (Process 2 and 4)")])
def test_data_the_installed_decoders_fail_on_is_415_naming_syntax_and_decoders(name, syntax):
    error = refused(raw(name), UnsupportedMediaType)
    assert (error.status, error.code) == (415, "dicom_unsupported_syntax")
    assert f"could not decode this file's pixel data in the DICOM transfer syntax '{syntax}'" in error.message
    assert "pylibjpeg:" in error.message and "gdcm" in error.message


def test_object_without_pixels_is_415():
    error = refused(raw("rtplan.dcm"), UnsupportedMediaType)
    assert (error.status, error.code) == (415, "dicom_no_pixels")
    assert "RT Plan Storage" in error.message


def test_truncated_pixel_data_is_400():
    error = refused(raw("MR_truncated.dcm"))
    assert (error.status, error.code) == (400, "invalid_dicom")
    assert "8130 vs 8192 bytes" in error.message and "Explicit VR Little Endian" in error.message


@pytest.mark.parametrize("cut", [300, 400, 1000, 5000])
def test_file_cut_before_its_pixels_is_400(cut):
    # pydicom reads a cut file quietly up to where it ends: no SOP class, or an image object without pixels
    error = refused(raw("CT_small.dcm")[:cut])
    assert (error.status, error.code) == (400, "invalid_dicom")
    assert "truncated" in error.message


@pytest.mark.parametrize("data", [b"hello world" * 10, b"\x00" * 300, b'{"image": "x"}'])
def test_bytes_that_are_not_dicom_are_400(data):
    error = refused(data)
    assert (error.status, error.code) == (400, "invalid_dicom")
    assert "not a readable DICOM file" in error.message


def test_multi_frame_is_400():
    error = refused(raw("examples_ybr_color.dcm"))
    assert (error.status, error.code) == (400, "multi_frame")
    assert "30 frames" in error.message
    assert '"frames" option ("each"' in error.message and '"volume"' in error.message and '"first"' in error.message


def test_pixel_limit_counts_rows_and_columns():
    dicom.decode(raw("CT_small.dcm"), 128 * 128)
    error = refused(raw("CT_small.dcm"), PayloadTooLarge, limit=128 * 128 - 1)
    assert (error.status, error.code) == (413, "too_many_pixels")
    assert "128x128" in error.message and "ONNXFN_MAX_PIXELS" in error.message


def test_pixel_limit_counts_frames():
    error = refused(raw("examples_ybr_color.dcm"), PayloadTooLarge, limit=1_000_000)
    assert "x30 frames" in error.message


def test_pixel_limit_is_checked_before_decoding():
    # Rows says 60000 but the pixel data is still 128x128: a 413, not a 400 about short pixel data
    data = raw("CT_small.dcm")
    rows = data.index(b"\x28\x00\x10\x00US\x02\x00")
    huge = data[:rows + 8] + (60000).to_bytes(2, "little") + data[rows + 10:]
    error = refused(huge, PayloadTooLarge, limit=1_000_000)
    assert error.code == "too_many_pixels" and "128x60000" in error.message


def test_unknown_value_representation_in_an_image_attribute_is_400():
    # pydicom converts elements lazily: the unknown VR surfaces (as NotImplementedError) when Rows is read
    data = raw("CT_small.dcm")
    rows = data.index(b"\x28\x00\x10\x00US\x02\x00")
    error = refused(data[:rows + 4] + b"ZZ" + data[rows + 6:])
    assert (error.status, error.code) == (400, "invalid_dicom")
    assert "image attributes are invalid" in error.message and "(0028,0010)" in error.message


# ------------------------------------------------------------------ patient data stays out of errors

PATIENT = [b"CompressedSamples^CT1", b"1CT1"]


def test_a_damaged_element_holding_patient_bytes_is_not_quoted():
    # Rows (US) whose 21-byte value is the patient's name: pydicom's error quotes the raw bytes
    data = raw("CT_small.dcm")
    rows = data.index(b"\x28\x00\x10\x00US\x02\x00")
    damaged = data[:rows] + b"\x28\x00\x10\x00US\x15\x00" + PATIENT[0] + data[rows + 10:]
    error = refused(damaged)
    assert (error.status, error.code) == (400, "invalid_dicom")
    assert "BytesLengthException" in error.message
    assert "CompressedSamples" not in error.message and "CT1" not in error.message


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_truncated.dcm", "JPGExtended.dcm", "rtplan.dcm"])
def test_refusals_do_not_mention_the_patient(name):
    ds = dataset(name)
    names = [str(ds.get(tag)) for tag in ("PatientName", "PatientID", "PatientBirthDate") if ds.get(tag)]
    assert names
    try:
        dicom.decode(raw(name), 100)
    except OnnxfnError as e:
        for value in names:
            assert value not in e.message
    else:
        pytest.fail("a 100-pixel limit must refuse every image")


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_small_odd.dcm"]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255),
                                st.sampled_from(["set", "cut", "insert"])), min_size=1, max_size=6))
def test_damaged_files_only_raise_onnxfn_errors_without_patient_data(name, edits):
    data = damage(raw(name), edits, insert=4)
    try:
        dicom.decode(data, 1_000_000)
    except OnnxfnError as e:
        assert e.status in (400, 413, 415)
        assert "CompressedSamples" not in e.message and "1CT1" not in e.message and "4MR1" not in e.message


# ------------------------------------------------------------------ multi-frame

def enhanced(frames: int = 3) -> tuple[bytes, np.ndarray]:
    """CT_small as an enhanced multi-frame object: per-frame rescale, window and position in the Per-frame
    Functional Groups, orientation, spacing and a default window in the Shared ones; the stored frames."""
    ds = dataset("CT_small.dcm")
    base = reference("CT_small.dcm")
    stored = np.stack([base + 10 * i for i in range(frames)]).astype(np.int16)
    ds.PixelData, ds.NumberOfFrames = stored.tobytes(), frames

    ds.SharedFunctionalGroupsSequence = [group(
        PlaneOrientationSequence={"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]},  # sagittal: normal = -x
        PixelMeasuresSequence={"PixelSpacing": [0.5, 0.75], "SliceThickness": 2},
        FrameVOILUTSequence={"WindowCenter": 50, "WindowWidth": 350})]
    per = []
    for i in range(frames):
        macros = {"PixelValueTransformationSequence": {"RescaleSlope": 1 + i, "RescaleIntercept": -1000 - i},
                  "PlanePositionSequence": {"ImagePositionPatient": [10.0 - 2.5 * i, 3, 4]}}
        if i != frames - 1:  # the last frame takes the shared window
            macros["FrameVOILUTSequence"] = {"WindowCenter": [40 + i, 99], "WindowWidth": [400 + i, 9]}
        per.append(group(**macros))
    ds.PerFrameFunctionalGroupsSequence = per
    ds.WindowCenter, ds.WindowWidth = 1, 2  # the top level loses to both
    return written(ds), stored


def test_enhanced_frames_take_per_frame_then_shared_then_top_level_values():
    data, stored = enhanced()
    frames = dicom.decode_frames(data, LIMIT)
    assert [im.frame for im in frames] == [0, 1, 2]
    for i, im in enumerate(frames):
        np.testing.assert_array_equal(im.pixels, stored[i])
        assert (im.bits, im.format, im.invert) == (16, "dicom", False)
        assert im.rescale == (1.0 + i, -1000.0 - i)
        assert im.spacing == (0.5, 0.75)
        assert im.position == pytest.approx(-(10.0 - 2.5 * i))  # along the normal (-1, 0, 0)
    assert [im.window for im in frames] == [Window(40.0, 400.0), Window(41.0, 401.0), Window(50.0, 350.0)]
    assert frames[0].source is frames[2].source and frames[0].source.NumberOfFrames == 3


def test_frames_fall_back_to_the_top_level_without_functional_groups():
    ds = dataset("CT_small.dcm")
    ds.PixelData, ds.NumberOfFrames = np.stack([reference("CT_small.dcm")] * 2).tobytes(), 2
    frames = dicom.decode_frames(written(ds), LIMIT)
    assert len(frames) == 2 and all(im.rescale == (1.0, -1024.0) for im in frames)
    normal = np.cross(np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float))
    assert frames[1].position == pytest.approx(float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))
    assert frames[1].spacing == tuple(float(v) for v in ds.PixelSpacing)


def test_geometry_is_none_where_absent_or_malformed():
    ds = dataset("CT_small.dcm")
    del ds.ImagePositionPatient
    ds.PixelSpacing = [0, 1]
    im = dicom.decode(written(ds), LIMIT)
    assert (im.position, im.spacing, im.frame) == (None, None, None)
    assert dicom.decode(raw("SC_rgb_rle.dcm"), LIMIT).position is None


def test_a_single_frame_file_is_one_frame():
    frames = dicom.decode_frames(raw("CT_small.dcm"), LIMIT)
    single = dicom.decode(raw("CT_small.dcm"), LIMIT)
    assert len(frames) == 1 and frames[0].frame is None
    np.testing.assert_array_equal(frames[0].pixels, single.pixels)
    fields = ("bits", "rescale", "window", "invert", "position", "spacing")
    assert [getattr(frames[0], f) for f in fields] == [getattr(single, f) for f in fields]


@pytest.mark.parametrize("name,count,bits", [("examples_ybr_color.dcm", 30, 8), ("SC_rgb_rle_2frame.dcm", 2, 8),
                                             ("SC_rgb_rle_16bit_2frame.dcm", 2, 16)])
def test_colour_frames(name, count, bits):
    frames = dicom.decode_frames(raw(name), 10**8)
    expected = reference(name)
    assert len(frames) == count
    for i, im in enumerate(frames):
        assert im.bits == bits and im.frame == i and im.pixels.flags.c_contiguous
        np.testing.assert_array_equal(im.pixels, expected[i])


def test_frame_limit_and_admission_see_the_frames_before_decoding():
    data, _ = enhanced(4)
    with pytest.raises(PayloadTooLarge) as info:
        dicom.decode_frames(data, 128 * 128 * 4 - 1)
    assert info.value.code == "too_many_pixels" and "128x128x4 frames" in info.value.message
    seen = []

    def admit(header):
        seen.append(header)
        raise PayloadTooLarge("no room", code="insufficient_memory")

    with pytest.raises(PayloadTooLarge):
        dicom.decode_frames(data, LIMIT, admit)
    assert [(h.width, h.height, h.frames, h.sample_bytes, h.pixels) for h in seen] == [(128, 128, 4, 2, 128 * 128 * 4)]


def test_source_is_the_dataset_and_kept_out_of_repr():
    im = dicom.decode(raw("CT_small.dcm"), LIMIT)
    assert im.source.SOPInstanceUID == dataset("CT_small.dcm").SOPInstanceUID
    assert "CompressedSamples" not in repr(im) and "source" not in repr(im)


# ------------------------------------------------------------------ plugins: imported only for compressed files

IMPORTS = """
import json, sys
from pathlib import Path
from onnxfn.codecs import dicom
folder = Path(dicom.__file__).parents[0]
import importlib.util
test_files = Path(importlib.util.find_spec("pydicom").origin).parent / "data" / "test_files"
plugins = ("pylibjpeg", "libjpeg", "openjpeg", "rle", "jpeg_ls", "gdcm")
out = {}
for name in sys.argv[1:]:
    dicom.decode((test_files / name).read_bytes(), 10**8)
    out[name] = sorted(p for p in plugins if p in sys.modules)
from pydicom.pixels.decoders.base import JPEG2000Decoder, RLELosslessDecoder
out["order"] = [list(JPEG2000Decoder._available), list(RLELosslessDecoder._available)]
print(json.dumps(out))
"""


def test_plugins_are_imported_only_when_a_compressed_file_arrives():
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[3]
    run = subprocess.run([sys.executable, "-c", IMPORTS, "CT_small.dcm", "MR_small_bigendian.dcm",
                          "MR_small_jpeg_ls_lossless.dcm"], cwd=root, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": f"{root / 'shared'}", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["CT_small.dcm"] == [] and seen["MR_small_bigendian.dcm"] == []
    assert {"pylibjpeg", "libjpeg", "openjpeg", "rle"} <= set(seen["MR_small_jpeg_ls_lossless.dcm"])
    # registered late, the plugins keep the order pydicom tries them in (available_plugins is sorted by name)
    assert seen["order"] == [["pylibjpeg", "pillow"], ["pylibjpeg", "pydicom"]]


def _deflated(ds) -> bytes:
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_deflated_dataset_decodes_and_a_deflate_bomb_is_refused_before_it_inflates():
    import pydicom
    from onnxfn.errors import PayloadTooLarge
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    im = dicom.decode(_deflated(ds), LIMIT)
    np.testing.assert_array_equal(im.pixels, ds.pixel_array)
    ds.Rows, ds.Columns = 4000, 4000  # 32 MB of zeros deflate to ~30 KB
    ds.PixelData = bytes(4000 * 4000 * 2)
    bomb = _deflated(ds)
    assert len(bomb) < 200_000
    with pytest.raises(PayloadTooLarge, match="inflates to more than") as refused:
        dicom.decode(bomb, 1_000_000)
    assert refused.value.code == "too_many_pixels"
    with pytest.raises(BadRequest, match="deflated DICOM dataset is damaged"):
        dicom.decode(bomb[:-20000] + bytes(20000), 1_000_000 * 1000)


def _forged(name: str, width: int, height: int) -> bytes:
    """A real compressed file whose first codestream declares another size than the DICOM header."""
    import struct
    data = raw(name)
    ds = pydicom.dcmread(pydicom_file(name))
    from pydicom.encaps import generate_fragmented_frames
    first = next(generate_fragmented_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))[0]
    at = data.index(first)
    if first[:2] == b"\xff\x4f":  # JPEG 2000 SIZ: Xsiz, Ysiz at 8, 12
        patch = struct.pack(">II", width, height)
        return data[:at + 8] + patch + data[at + 16:]
    sof = dicom.codestream_size(first)
    assert sof is not None
    i = next(i for i in range(2, len(first) - 1) if first[i] == 0xFF and first[i + 1] in dicom._SOF)
    return data[:at + i + 5] + struct.pack(">HH", height, width) + data[at + i + 9:]


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_a_codestream_declaring_more_than_the_header_is_refused_before_it_is_decoded(name):
    from pydicom.encaps import generate_fragmented_frames
    ds = pydicom.dcmread(pydicom_file(name))
    size = dicom.codestream_size(next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))[0])
    assert size == (ds.Columns, ds.Rows, ds.SamplesPerPixel)  # the real files agree with their header
    error = refused(_forged(name, 60000, 60000))  # a decoder would allocate 3.6 G samples for it
    assert error.code == "invalid_dicom" and "declares 60000x60000" in error.message
    assert f"DICOM header says {ds.Columns}x{ds.Rows}" in error.message
    damaged = refused(raw("JPEG2000-embedded-sequence-delimiter.dcm"))  # a real damaged codestream
    assert "compressed codestream declares" in damaged.message
