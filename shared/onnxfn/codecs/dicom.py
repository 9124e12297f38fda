"""DICOM decoding through pydicom: one frame, modality rescale, the file's VOI window
and MONOCHROME1. Patient tags are never read into answers or logs."""
from __future__ import annotations

import io
import re
import warnings

import numpy as np

from onnxfn.errors import BadRequest, UnsupportedMediaType
from onnxfn.codecs.image import Admit, Header, Image, check_pixels
from onnxfn.bundles.manifest import Window

DECODER_ADVICE = ("install a decoder for it next to pydicom: pylibjpeg with pylibjpeg-libjpeg "
                  "(JPEG lossless, JPEG-LS, 12-bit JPEG) or pylibjpeg-openjpeg (JPEG 2000), or gdcm; "
                  "or send the image uncompressed")


def decode(data: bytes, max_pixels: int, admit: Admit | None = None) -> Image:
    """Decode a single-frame DICOM file into an `Image` (stored values, rescale, VOI window, MONOCHROME1),
    refusing oversized images before decoding pixels; `admit` sees the header first and may refuse it too."""
    import pydicom

    corrupt = _corrupt()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except corrupt as e:
        raise BadRequest(f"the body is not a readable DICOM file: {_reason(e)}", code="invalid_dicom") from None
    try:  # pydicom converts elements lazily: a damaged one fails when first read
        _transfer_syntax(ds)
        if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            if "SOPClassUID" not in ds:  # every DICOM object has one: these bytes are cut short or no DICOM
                raise BadRequest("the body is not a readable DICOM file: it holds no SOP Class UID and no pixel "
                                 "data; it is truncated or not DICOM", code="invalid_dicom")
            sop = getattr(ds.SOPClassUID, "name", None) or str(ds.SOPClassUID)
            if "Image Storage" in sop:  # pydicom stops quietly where a file ends early
                raise BadRequest(f"the DICOM file is a {sop} object without pixel data: it is truncated or damaged",
                                 code="invalid_dicom")
            raise UnsupportedMediaType(f"the DICOM file holds no pixel data ({sop}); send an image object",
                                       code="dicom_no_pixels")
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsStored") or ds.BitsAllocated)
        allocated = int(ds.get("BitsAllocated") or bits)
        syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
        syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown")
    except corrupt as e:
        raise BadRequest(f"the DICOM file's image attributes are invalid: {_reason(e)}", code="invalid_dicom") from None
    check_pixels(cols, rows, frames, max_pixels, "the DICOM image")
    if frames > 1:
        raise BadRequest(f"the DICOM file holds {frames} frames; send a single-frame image", code="multi_frame")
    if admit is not None:
        admit(Header(cols, rows, samples, max(1, -(-allocated // 8)), "dicom", frames))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        detail = " ".join(str(e).split())
        raise UnsupportedMediaType(f"no installed decoder handles the DICOM transfer syntax {syntax_name!r}: "
                                   f"{DECODER_ADVICE} ({detail})", code="dicom_unsupported_syntax") from None
    except corrupt as e:
        raise BadRequest(f"the DICOM pixel data cannot be read (transfer syntax {syntax_name!r}): {_reason(e)}",
                         code="invalid_dicom") from None
    try:
        return _image(ds, pixels, samples, bits)
    except corrupt as e:
        raise BadRequest(f"the DICOM file's pixel attributes are invalid: {_reason(e)}", code="invalid_dicom") from None


def _image(ds, pixels: np.ndarray, samples: int, bits: int) -> Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        rgb = apply_color_lut(pixels, ds)
        # palette entries are 8 or 16 bits whatever the index depth: keep the top 8
        return Image(np.ascontiguousarray(rgb >> 8 if rgb.dtype.itemsize > 1 else rgb, dtype=np.uint8), 8, "dicom")
    if samples == 3:
        if pixels.dtype != np.uint8:
            raise UnsupportedMediaType(f"{bits}-bit colour DICOM images are not supported; send 8-bit colour",
                                       code="unsupported_pixels")
        return Image(np.ascontiguousarray(pixels), 8, "dicom")
    if samples != 1:
        raise UnsupportedMediaType(f"DICOM images with {samples} samples per pixel are not supported",
                                   code="unsupported_pixels")

    pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
    rescale = None
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut
        pixels, bits = apply_modality_lut(pixels, ds).astype(np.float32), None
    elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
        rescale = (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    return Image(pixels, bits, "dicom", rescale=rescale, window=_window(ds),
                 invert=photometric == "MONOCHROME1")


def _transfer_syntax(ds) -> None:
    """A bare dataset (no preamble, no file meta) is read by guessing its encoding; pydicom needs
    that encoding as a transfer syntax to decode the pixels."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _corrupt() -> tuple[type[BaseException], ...]:
    """What pydicom raises on a damaged file."""
    import struct
    from pydicom.errors import BytesLengthException, InvalidDicomError
    return (InvalidDicomError, BytesLengthException, EOFError, OSError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, OverflowError, NotImplementedError, struct.error)


def _reason(e: BaseException) -> str:
    """An exception's text without the values it quotes: they may hold patient data."""
    text = _QUOTED.sub("<value>", " ".join(str(e).split()))
    return f"{type(e).__name__}: {text[:300]}"


_QUOTED = re.compile(r"(?<!\w)b?'[^']*'(?!\w)|(?<!\w)b?\"[^\"]*\"(?!\w)")


def _window(ds) -> Window | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c, w = _first(center), _first(width)
    except (TypeError, ValueError, IndexError):
        return None
    return Window(c, w) if w > 0 else None


def _first(value) -> float:
    """WindowCenter/WindowWidth may hold several windows: the first is the default."""
    from pydicom.multival import MultiValue
    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)
