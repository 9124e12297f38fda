"""Decoded images, and decoding of PNG, JPEG, TIFF and BMP through Pillow.

An `Image` holds the stored pixel values as the file had them (8- or 16-bit, grey or
colour) plus what is needed to turn them into physical values; pre-processing reads it.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from onnxfn.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from onnxfn.bundles.images import Window

FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
# What Pillow raises on damaged files (TypeError and struct.error come from broken TIFF tags)
CORRUPT = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, ZeroDivisionError,
           struct.error)


@dataclass
class Image:
    """A decoded image: the stored pixel values as the file had them, and what turns them into physical values."""
    pixels: np.ndarray                 # HxW (grey) or HxWx3 (RGB), alpha already removed
    bits: int | None                   # stored bits per sample (8, 12, 16); None for float data
    format: str                        # png, jpeg, tiff, bmp, dicom
    rescale: tuple[float, float] | None = None  # (slope, intercept) from the file (DICOM)
    window: Window | None = None       # the file's own VOI window (DICOM)
    invert: bool = False               # MONOCHROME1: low values are bright
    # DICOM only (None otherwise). Where the frame lies: its position in mm along the slice normal
    # (ImagePositionPatient . (row x column direction of ImageOrientationPatient)), its PixelSpacing
    # (between rows, between columns; mm), and its 0-based index in a multi-frame file (None for one frame).
    position: float | None = None
    spacing: tuple[float, float] | None = None
    frame: int | None = None
    # The pydicom Dataset the pixels came from (to reference it from DICOM SEG/SR); holds patient data:
    # never logged, kept out of repr and comparisons.
    source: Any = field(default=None, repr=False, compare=False)

    @property
    def height(self) -> int:
        """Rows of pixels."""
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        """Columns of pixels."""
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        """1 for grey, 3 for colour (alpha is dropped on decoding)."""
        return 1 if self.pixels.ndim == 2 else self.pixels.shape[2]


@dataclass(frozen=True)
class Header:
    """What an image's header declares, read before its pixels are decoded: what admission decides on."""
    width: int
    height: int
    channels: int          # samples per pixel as stored (alpha included; a palette index is 1)
    sample_bytes: int      # bytes per stored sample (1 for 8-bit, 2 for 16-bit, 4 for 32-bit)
    format: str
    frames: int = 1

    @property
    def pixels(self) -> int:
        """Width x height x frames."""
        return self.width * self.height * max(self.frames, 1)


#: called with an image's header once its size is checked, before its pixels are decoded; raises to refuse it
Admit = Callable[[Header], None]


def check_pixels(width: int, height: int, frames: int, max_pixels: int, what: str) -> None:
    """Refuse an image from its header, before its pixels are decoded: `BadRequest` when empty,
    `PayloadTooLarge` when width x height x frames exceeds `max_pixels`; `what` names it in the message."""
    if width < 1 or height < 1:
        raise BadRequest(f"{what} declares an empty image ({width}x{height})", code="invalid_image")
    total = width * height * max(frames, 1)
    if total > max_pixels:
        raise PayloadTooLarge(f"{what} declares {width}x{height}" + (f"x{frames} frames" if frames > 1 else "") +
                              f" = {total:,} pixels, over the limit of {max_pixels:,} (ONNXFN_MAX_PIXELS): "
                              "downscale the image or raise the limit", code="too_many_pixels")


def preload(fmt: str) -> None:
    """Import Pillow and the plugin that opens `fmt`, as the first `decode` of it would."""
    from PIL import Image as PILImage
    PILImage.preinit()  # PNG, JPEG, BMP and a few others
    if FORMATS[fmt] not in PILImage.OPEN:
        PILImage.init()  # TIFF


def decode(data: bytes, fmt: str, max_pixels: int, admit: Admit | None = None) -> Image:
    """Decode a PNG, JPEG, TIFF or BMP file, refusing oversized images before decoding pixels; `admit` sees
    the header first and may refuse it too."""
    from PIL import Image as PILImage, UnidentifiedImageError

    name = fmt.upper()
    try:
        im = PILImage.open(io.BytesIO(data), formats=[FORMATS[fmt]])
    except PILImage.DecompressionBombError as e:  # beyond Pillow's own hard limit: refused at open
        raise PayloadTooLarge(f"the {name} image declares too many pixels ({e}); the limit is {max_pixels:,} "
                              "(ONNXFN_MAX_PIXELS): downscale the image", code="too_many_pixels") from None
    except UnidentifiedImageError:
        raise BadRequest(f"the body is not a readable {name} image: its header is damaged or it is another format",
                         code="invalid_image") from None
    except CORRUPT as e:
        raise BadRequest(f"the {name} image is corrupt: {e}", code="invalid_image") from None
    with im:
        check_pixels(im.width, im.height, 1, max_pixels, f"the {name} image")
        try:
            frames = getattr(im, "n_frames", 1)
        except CORRUPT as e:
            raise BadRequest(f"the {name} image is corrupt: {e}", code="invalid_image") from None
        if frames > 1:
            raise BadRequest(f"the {name} image holds {frames} frames; send one frame at a time",
                             code="multi_frame")
        if admit is not None:
            admit(Header(im.width, im.height, len(im.getbands()), _SAMPLE_BYTES.get(im.mode, 1), fmt))
        try:
            im.load()
        except CORRUPT as e:
            raise BadRequest(f"the {name} image is truncated or corrupt: {e}", code="invalid_image") from None
        return _from_pil(im, fmt)


_SAMPLE_BYTES = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}


def _from_pil(im, fmt: str) -> Image:
    mode = im.mode
    if _SAMPLE_BYTES.get(mode) == 2:  # the unsigned 16-bit modes
        return Image(np.asarray(im).astype(np.uint16, copy=False), 16, fmt)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise UnsupportedMediaType(f"32-bit integer {fmt.upper()} images are not supported; "
                                       "send 8- or 16-bit pixels", code="unsupported_pixels")
        return Image(arr.astype(np.uint16), 16, fmt)
    if mode == "F":
        return Image(np.asarray(im, dtype=np.float32), None, fmt)
    if mode == "1":
        im = im.convert("L")
    elif mode in ("LA", "La"):
        im = im.getchannel(0)
    elif mode not in ("L", "RGB"):
        # palette, RGBA, CMYK, YCbCr, LAB, HSV: Pillow's own conversions; alpha is dropped
        im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
        if im.mode == "RGBA":
            im = im.convert("RGB")
    return Image(np.asarray(im), 8, fmt)
