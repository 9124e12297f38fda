"""DICOM decoding through pydicom: stored values, modality rescale, the file's VOI window, MONOCHROME1,
colour (8- and 16-bit) and palette, one frame (`decode`) or every frame (`decode_frames`) with its rescale,
window and place along the slice normal from the functional groups. Compressed transfer syntaxes decode
through pydicom's plugins (pylibjpeg with libjpeg, openjpeg and rle; gdcm or pyjpegls where installed),
imported only when a compressed file arrives. Patient tags are never read into answers or logs."""
from __future__ import annotations

import importlib
import importlib.abc
import io
import re
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from onnxfn.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from onnxfn.codecs.image import Admit, Header, Image, check_pixels
from onnxfn.bundles.images import Window

DECODER_ADVICE = ("install a decoder for it next to pydicom: pylibjpeg with pylibjpeg-libjpeg "
                  "(JPEG lossless, JPEG-LS, 12-bit JPEG) or pylibjpeg-openjpeg (JPEG 2000), or gdcm; "
                  "or send the image uncompressed")
FRAMES_ADVICE = ('serve it with a bundle whose manifest sets the image\'s "frames" option ("each": one answer per '
                 'frame, "volume": the frames stacked for a 3-D model, "first"), or send a single-frame image')
# pydicom's decoder plugins -> the packages they import. pydicom imports them all with itself; they are held
# back until a compressed file arrives, so a cold start on uncompressed DICOM (or none) does not pay for them.
PLUGINS = {"gdcm": ("gdcm",), "pylibjpeg": ("pylibjpeg", "libjpeg", "openjpeg", "rle"), "pyjpegls": ("jpeg_ls",)}
# pydicom's own order of preference among the plugins of a transfer syntax (pixels/decoders/base.py)
PREFERENCE = ("gdcm", "pylibjpeg", "pyjpegls", "pillow", "pydicom")


@dataclass(frozen=True)
class _Attributes:
    """What the header says of the pixels, read before they are decoded."""
    rows: int
    columns: int
    frames: int
    samples: int
    bits: int
    allocated: int
    syntax: object      # the transfer syntax UID
    syntax_name: str


def decode(data: bytes, max_pixels: int, admit: Admit | None = None) -> Image:
    """Decode a single-frame DICOM file into an `Image` (stored values, rescale, VOI window, MONOCHROME1),
    refusing oversized images before decoding pixels; `admit` sees the header first and may refuse it too.
    A multi-frame file is refused (400 multi_frame): `decode_frames` reads it."""
    ds, attrs = _admitted(data, max_pixels, admit, single=True)
    return _frames(ds, _pixels(ds, attrs), attrs)[0]


def decode_frames(data: bytes, max_pixels: int, admit: Admit | None = None) -> list[Image]:
    """Decode every frame of a DICOM file (one `Image` for a single-frame file), in the file's order. Each frame
    has its stored values, its own rescale and window (Per-frame Functional Groups, else Shared, else the top
    level), `position` along the slice normal, `spacing` and `frame` (its index). frames x rows x columns is
    checked against `max_pixels` (413 too_many_pixels) and `admit` sees the header, before pixels are decoded."""
    ds, attrs = _admitted(data, max_pixels, admit)
    return _frames(ds, _pixels(ds, attrs), attrs)


def _admitted(data: bytes, max_pixels: int, admit: Admit | None, single: bool = False):
    """The dataset and its pixel attributes once frames x rows x columns is within `max_pixels` (413), a
    `single`-frame read has one frame (400 multi_frame) and `admit` took its header; no pixel is decoded yet."""
    ds, attrs = _open(data, max_pixels)
    check_pixels(attrs.columns, attrs.rows, attrs.frames, max_pixels, "the DICOM image")
    if single and attrs.frames > 1:
        raise BadRequest(f"the DICOM file holds {attrs.frames} frames; {FRAMES_ADVICE}", code="multi_frame")
    if admit is not None:
        admit(_header(attrs))
    return ds, attrs


def _header(attrs: _Attributes) -> Header:
    return Header(attrs.columns, attrs.rows, attrs.samples, max(1, -(-attrs.allocated // 8)), "dicom", attrs.frames)


#: the Deflated Explicit VR Little Endian transfer syntax: the dataset after the file meta is one deflate stream
DEFLATED = b"1.2.840.10008.1.2.1.99"


def _check_deflated(data: bytes, max_pixels: int) -> None:
    """A deflated dataset is inflated whole by pydicom, with no bound: a 6 MB body could inflate to gigabytes.
    Inflate it here first, stopping at what `max_pixels` of 16-bit colour could hold (413 beyond); a damaged
    stream is a 400."""
    import struct
    import zlib

    if data[128:132] != b"DICM" or DEFLATED not in data[132:4096]:
        return
    try:
        (meta_length,) = struct.unpack_from("<I", data, 132 + 8)  # (0002,0000) UL: the file meta's length
    except struct.error:
        return  # pydicom refuses it
    bound = max_pixels * 6 + (1 << 20)
    inflater, pending, inflated = zlib.decompressobj(-zlib.MAX_WBITS), data[132 + 12 + meta_length:], 0
    try:  # counted 1 MiB at a time and dropped: pydicom inflates it again for itself
        while inflated <= bound and not inflater.eof:
            chunk = inflater.decompress(pending, 1 << 20)
            pending = inflater.unconsumed_tail
            if not chunk and not pending:  # a truncated stream: pydicom says what is missing
                break
            inflated += len(chunk)
    except zlib.error as e:
        raise BadRequest(f"the deflated DICOM dataset is damaged: {e}", code="invalid_dicom") from None
    if inflated > bound:
        raise PayloadTooLarge(f"the deflated DICOM dataset inflates to more than {bound:,} bytes, more than "
                              f"{max_pixels:,} pixels (ONNXFN_MAX_PIXELS) of 16-bit colour could need",
                              code="too_many_pixels")


def _open(data: bytes, max_pixels: int):
    """The dataset and its pixel attributes; 400/415 when it is no readable image object."""
    _check_deflated(data, max_pixels)
    pydicom = _pydicom()
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
            _no_pixels(ds)
        bits = int(ds.get("BitsStored") or ds.BitsAllocated)
        syntax = ds.file_meta.TransferSyntaxUID
        attrs = _Attributes(int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames") or 1),
                            int(ds.get("SamplesPerPixel") or 1), bits, int(ds.get("BitsAllocated") or bits),
                            syntax, getattr(syntax, "name", None) or str(syntax))
    except corrupt as e:
        raise BadRequest(f"the DICOM file's image attributes are invalid: {_reason(e)}", code="invalid_dicom") from None
    return ds, attrs


def _no_pixels(ds) -> None:
    if "SOPClassUID" not in ds:  # every DICOM object has one: these bytes are cut short or no DICOM
        raise BadRequest("the body is not a readable DICOM file: it holds no SOP Class UID and no pixel "
                         "data; it is truncated or not DICOM", code="invalid_dicom")
    sop = getattr(ds.SOPClassUID, "name", None) or str(ds.SOPClassUID)
    if "Image Storage" in sop:  # pydicom stops quietly where a file ends early
        raise BadRequest(f"the DICOM file is a {sop} object without pixel data: it is truncated or damaged",
                         code="invalid_dicom")
    raise UnsupportedMediaType(f"the DICOM file holds no pixel data ({sop}); send an image object",
                               code="dicom_no_pixels")


def _pixels(ds, attrs: _Attributes) -> np.ndarray:
    """Every frame's pixels as pydicom gives them (colour as RGB), frames first (`_shaped`), after the plugins a
    compressed syntax needs."""
    if not getattr(attrs.syntax, "is_transfer_syntax", False):
        raise BadRequest(f"the DICOM file's TransferSyntaxUID ({attrs.syntax_name}) is not a transfer syntax",
                         code="invalid_dicom")
    if attrs.syntax.is_compressed:
        check_codestreams(ds, attrs)
        enable_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
        return _shaped(pixels, attrs)
    except (NotImplementedError, RuntimeError) as e:
        detail = _scrubbed(e, 600)
        if "exceptions were raised" in detail:
            raise UnsupportedMediaType(f"the installed decoders could not decode this file's pixel data in the "
                                       f"DICOM transfer syntax {attrs.syntax_name!r} ({detail}); it may be "
                                       "damaged, or need another decoder (gdcm); or send the image uncompressed",
                                       code="dicom_unsupported_syntax") from None
        raise UnsupportedMediaType(f"no installed decoder handles the DICOM transfer syntax {attrs.syntax_name!r}: "
                                   f"{DECODER_ADVICE} ({detail})", code="dicom_unsupported_syntax") from None
    except _corrupt() as e:
        raise BadRequest(f"the DICOM pixel data cannot be read (transfer syntax {attrs.syntax_name!r}): "
                         f"{_reason(e)}", code="invalid_dicom") from None
    except BaseException as e:  # a compiled decoder's panic (pyo3's PanicException is a BaseException)
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise BadRequest(f"the decoder failed on the DICOM pixel data (transfer syntax {attrs.syntax_name!r}): "
                         f"{_reason(e)}; the data is damaged", code="invalid_dicom") from None


def _shaped(pixels: np.ndarray, attrs: _Attributes) -> np.ndarray:
    """pydicom's array as (frames, rows, columns[, samples]), checked against the header: a damaged file can
    give another shape, which must not reach pre-processing."""
    expected = (attrs.rows, attrs.columns) + ((attrs.samples,) if attrs.samples > 1 else ())
    if attrs.frames > 1:
        expected = (attrs.frames,) + expected
    if tuple(pixels.shape) != expected:
        raise BadRequest(f"the DICOM pixel data decodes to shape {list(pixels.shape)}, but the header declares "
                         f"{list(expected)} (frames, rows, columns, samples): the file is damaged",
                         code="invalid_dicom")
    return pixels if attrs.frames > 1 else pixels[None]


def check_codestreams(ds, attrs: _Attributes) -> None:
    """Every frame's JPEG or JPEG 2000 codestream must declare no more rows, columns and components than the
    DICOM header (which the pixel limit and admission judged): a decoder allocates what its codestream declares,
    so a small file could otherwise make it allocate gigabytes. A 400 naming the frame otherwise. Codestreams
    whose header cannot be found are left to the decoder."""
    from pydicom.encaps import generate_fragmented_frames

    try:
        frames = generate_fragmented_frames(ds.PixelData, number_of_frames=attrs.frames)
        for index, fragments in enumerate(frames):
            size = codestream_size(fragments[0] if fragments else b"")
            if size is None:
                continue
            width, height, components = size
            if width > attrs.columns or height > attrs.rows or components > max(attrs.samples, 1):
                raise BadRequest(f"frame {index}'s compressed codestream declares {width}x{height} with {components} "
                                 f"component(s), but the DICOM header says {attrs.columns}x{attrs.rows} with "
                                 f"{attrs.samples}: the file is damaged or forged", code="invalid_dicom")
            if index + 1 >= attrs.frames:
                break
    except _corrupt() as e:
        raise BadRequest(f"the DICOM pixel data's fragments cannot be read: {_reason(e)}", code="invalid_dicom") from None


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic; JPEG-LS's SOF55)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def codestream_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) a JPEG, JPEG-LS or JPEG 2000 codestream declares in its header, or None where
    the bytes are none of these (RLE, or a header not found in this fragment)."""
    import struct

    if data[:2] == b"\xff\x4f" and data[2:4] == b"\xff\x51":  # JPEG 2000: SOC then SIZ
        if len(data) < 42:
            return None
        xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, 8)
        (components,) = struct.unpack_from(">H", data, 40)
        return max(0, xsiz - xosiz), max(0, ysiz - yosiz), components
    if data[:2] != b"\xff\xd8":  # not JPEG (SOI) either
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker in _SOF:
            if at + 10 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width, height, data[at + 9]
        if marker == 0xDA:  # start of scan before any frame header
            return None
        at += 2 + length
    return None


def _frames(ds, pixels: np.ndarray, attrs: _Attributes) -> list[Image]:
    """One `Image` per frame of `pixels` (frames first)."""
    try:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
        if photometric == "PALETTE COLOR":
            if attrs.samples != 1:
                raise BadRequest(f"the DICOM file is PALETTE COLOR with {attrs.samples} samples per pixel; a palette "
                                 "image has one (an index): the file is damaged", code="invalid_dicom")
            return [_palette(ds, pixels[i], i, attrs) for i in range(len(pixels))]
        if attrs.samples == 3:
            return [_colour(ds, pixels[i], i, attrs) for i in range(len(pixels))]
        if attrs.samples != 1:
            raise UnsupportedMediaType(f"DICOM images with {attrs.samples} samples per pixel are not supported",
                                       code="unsupported_pixels")
        pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
        lut = None
        if "ModalityLUTSequence" in ds:
            from pydicom.pixels import apply_modality_lut
            lut = apply_modality_lut(pixels, ds).astype(np.float32)
        return [_grey(ds, pixels[i] if lut is None else lut[i], i, attrs, photometric, lut is not None)
                for i in range(len(pixels))]
    except _corrupt() as e:
        raise BadRequest(f"the DICOM file's pixel attributes are invalid: {_reason(e)}", code="invalid_dicom") from None


def _grey(ds, pixels: np.ndarray, index: int, attrs: _Attributes, photometric: str, lut: bool) -> Image:
    rescale = None
    if not lut:
        slope, intercept = (_attribute(ds, index, "PixelValueTransformationSequence", k)
                            for k in ("RescaleSlope", "RescaleIntercept"))
        if slope is not None or intercept is not None:
            rescale = (float(slope if slope not in (None, "") else 1) or 1.0,
                       float(intercept if intercept not in (None, "") else 0))
    return _placed(ds, index, attrs, Image(pixels, None if lut else attrs.bits, "dicom", rescale=rescale,
                                           window=_window(ds, index), invert=photometric == "MONOCHROME1"))


def _colour(ds, pixels: np.ndarray, index: int, attrs: _Attributes) -> Image:
    """RGB as pydicom converts it (YBR_FULL, YBR_FULL_422, YBR_ICT/RCT, planar configuration); 16-bit colour
    keeps its values with `bits` = BitsStored, so scaling to [0, 1] divides by 2**bits - 1."""
    if pixels.dtype.kind != "u":
        raise UnsupportedMediaType(f"signed {attrs.bits}-bit colour DICOM images are not supported",
                                   code="unsupported_pixels")
    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))
    return _placed(ds, index, attrs, Image(pixels, 8 if pixels.dtype == np.uint8 else attrs.bits, "dicom"))


def _palette(ds, pixels: np.ndarray, index: int, attrs: _Attributes) -> Image:
    from pydicom.pixels import apply_color_lut
    rgb = apply_color_lut(pixels, ds)
    # palette entries are 8 or 16 bits whatever the index depth: keep the top 8
    rgb = np.ascontiguousarray(rgb >> 8 if rgb.dtype.itemsize > 1 else rgb, dtype=np.uint8)
    return _placed(ds, index, attrs, Image(rgb, 8, "dicom"))


def _placed(ds, index: int, attrs: _Attributes, image: Image) -> Image:
    """`image` with where its frame lies and the dataset it came from."""
    image.position = _position(ds, index)
    image.spacing = _pair(_attribute(ds, index, "PixelMeasuresSequence", "PixelSpacing"))
    image.frame = index if attrs.frames > 1 else None
    image.source = ds
    return image


# ------------------------------------------------------------------ functional groups and geometry

def _attribute(ds, index: int, group: str, keyword: str):
    """`keyword` from the frame's item of the Per-frame Functional Groups (in its `group` sequence), else the
    Shared Functional Groups, else the top level of the dataset; None where absent."""
    for groups, item in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        frame = _item(ds.get(groups), item)
        macro = _item(frame.get(group), 0) if frame is not None else None
        if macro is not None and keyword in macro:
            return macro.get(keyword)
    return ds.get(keyword)


def _item(sequence, index: int):
    return sequence[index] if sequence is not None and 0 <= index < len(sequence) else None


def _position(ds, index: int) -> float | None:
    """ImagePositionPatient projected on the slice normal (row direction x column direction), in mm."""
    origin = _floats(_attribute(ds, index, "PlanePositionSequence", "ImagePositionPatient"), 3)
    orientation = _floats(_attribute(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    if origin is None or orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.dot(origin, normal)) if np.any(normal) else None


def _pair(value) -> tuple[float, float] | None:
    values = _floats(value, 2)
    return (float(values[0]), float(values[1])) if values is not None and (values > 0).all() else None


def _floats(value, count: int) -> np.ndarray | None:
    """`count` finite floats from a multi-valued attribute, or None when absent or malformed."""
    try:
        values = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        return None
    return values if values is not None and len(values) == count and np.isfinite(values).all() else None


def _window(ds, index: int) -> Window | None:
    center, width = (_attribute(ds, index, "FrameVOILUTSequence", k) for k in ("WindowCenter", "WindowWidth"))
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


# ------------------------------------------------------------------ pydicom and its plugins

_LOCK = threading.Lock()
_enabled = False


_PLUGIN_PACKAGES = frozenset(p for packages in PLUGINS.values() for p in packages)


class _HoldBack(importlib.abc.MetaPathFinder):
    """Makes the plugins' packages look absent while pydicom is imported."""
    def find_spec(self, name, path=None, target=None):
        """Refuse the plugins' packages (pydicom then records its plugins as unavailable)."""
        if name.partition(".")[0] in _PLUGIN_PACKAGES:
            raise ModuleNotFoundError(f"{name} is imported when a compressed transfer syntax arrives", name=name)
        return None


@contextmanager
def _held_back():
    finder = _HoldBack()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def preload() -> None:
    """Import pydicom (without its decoder plugins), as the first `decode` would."""
    _pydicom()


def _pydicom():
    """pydicom, imported the first time with its decoder plugins held back."""
    module = sys.modules.get("pydicom")
    if module is not None:
        return module
    with _LOCK:
        if "pydicom" not in sys.modules:
            with _held_back():
                importlib.import_module("pydicom")
            from onnxfn import logs
            logs.silence()  # pydicom's import set its logger back to WARNING: its warnings quote values
    return sys.modules["pydicom"]


def enable_plugins() -> None:
    """Import the decoder plugins pydicom was imported without, and register those installed with each decoder
    in pydicom's order of preference; once per process (called when a compressed transfer syntax arrives)."""
    global _enabled
    if _enabled:
        return
    with _LOCK:
        if _enabled:
            return
        from pydicom.pixels.decoders import base
        modules = {label: importlib.reload(importlib.import_module(f"pydicom.pixels.decoders.{label}"))
                   for label in PLUGINS}
        rank = {label: i for i, label in enumerate(PREFERENCE)}
        for decoder, _ in base._PIXEL_DATA_DECODERS.values():
            for label in [label for label in decoder._unavailable if label in modules]:
                del decoder._unavailable[label]
                decoder.add_plugin(label, (modules[label].__name__, "_decode_frame"))
            decoder._available = dict(sorted(decoder._available.items(), key=lambda kv: rank.get(kv[0], 99)))
        _enabled = True


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
    import zlib
    from pydicom.errors import BytesLengthException, InvalidDicomError
    return (InvalidDicomError, BytesLengthException, EOFError, OSError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, OverflowError, NotImplementedError, struct.error, zlib.error)


def _reason(e: BaseException) -> str:
    """An exception's type and text without the values it quotes: they may hold patient data."""
    return f"{type(e).__name__}: {_scrubbed(e, 300)}"


def _scrubbed(e: BaseException, limit: int) -> str:
    """An exception's text on one line, quoted values replaced, cut at `limit` characters."""
    return _QUOTED.sub("<value>", " ".join(str(e).split()))[:limit]


_QUOTED = re.compile(r"(?<!\w)b?'[^']*'(?!\w)|(?<!\w)b?\"[^\"]*\"(?!\w)")
