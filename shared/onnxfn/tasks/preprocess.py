"""Image -> model tensor, exactly as the bundle's manifest declares. Vectorised numpy and
Pillow's C resampling; no per-pixel Python.

Order: colour -> intensity (unit / raw / window / minmax, MONOCHROME1 inversion)
-> geometry (resize, fit, pad) -> mean/std -> channel order -> layout -> dtype.
An 8-bit (grey or RGB) image that shrinks, whose intensity step is linear per pixel (unit, or raw without
MONOCHROME1's data-dependent inversion) and whose resampling has no negative lobes (nearest, bilinear, area)
is resized first, as integers in one Pillow call, and the other steps run on the small image: what
torchvision's PIL pipeline does; the values differ from the float order by Pillow's rounding (at most one
level of 255: two passes, each rounded; nearest is identical), never by clipping.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from onnxfn.errors import BadRequest
from onnxfn.codecs.image import Image
from onnxfn.bundles.images import ImageSpec
from onnxfn.bundles.manifest import InputSpec

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "area": 4}  # PIL.Image.Resampling
# Kernels with no negative lobes: an integer resize only rounds. Bicubic and lanczos overshoot at edges, which
# an integer image clips (values change by more than rounding there), so they resize in float32.
INTEGER_RESAMPLE = frozenset({"nearest", "bilinear", "area"})


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits in the model's input, to map masks back."""
    original: tuple[int, int]  # (h, w) of the received image
    resized: tuple[int, int]   # (h, w) after resizing, before padding or cropping
    offset: tuple[int, int]    # model pixel (y, x) = resized pixel (y + top, x + left); negative = cropped
    model: tuple[int, int]     # (h, w) of the model input


def prepare(image: Image, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """The input tensor (batch of one) for `image`, and the geometry it went through."""
    values, geometry = normalise(image, spec.image)
    return layout(values, spec), geometry


def normalise(image: Image, cfg: ImageSpec, integer_first: bool = True) -> tuple[np.ndarray, Geometry]:
    """Every step but the layout: the image as HxWxC float32 at the model input's height and width (colour,
    intensity, geometry, mean/std, channel order), and the geometry it went through. `layout` of it, or of
    any window of it, is the model's tensor for that window. Holds one such array (plus the caller's
    pixels); a colour image made grey also holds its float32 colour copy while converting. An 8-bit image that
    `_resizes_first` is resized as integers first, unless `integer_first` is false: the float order, which that
    path is held to (tests, bench/handwritten/resize_order.py)."""
    if cfg.size is not None and integer_first and _resizes_first(image, cfg):
        values, geometry = _resized_first(image, cfg)
    elif cfg.size is None:
        values, geometry = _padded(image, _color(image, cfg), cfg)
    else:
        values, geometry = _geometry(_intensity(image, _color(image, cfg), cfg), cfg)
    return standardise(values, cfg), geometry


def standardise(values: np.ndarray, cfg: ImageSpec) -> np.ndarray:
    """float32 values, channels last, after mean/std (in place) and channel order: `normalise`'s last step."""
    if cfg.mean is not None:
        values -= np.asarray(cfg.mean, dtype=np.float32)
    if cfg.std is not None:
        values /= np.asarray(cfg.std, dtype=np.float32)
    if cfg.color == "RGB" and cfg.channel_order == "BGR":
        values = values[..., ::-1]
    return values


def _color(image: Image, cfg: ImageSpec) -> np.ndarray:
    """Stored pixels as HxWxC with the model's channel count."""
    pixels = image.pixels
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    have = pixels.shape[2]
    if have == cfg.channels:
        return pixels
    if cfg.channels == 1 and have == 3:
        if image.bits is None:
            raise BadRequest("the model takes one grey channel; floating-point colour cannot be converted",
                             code="channels_mismatch")
        return (pixels.astype(np.float32) @ LUMA)[..., None]  # luma keeps the stored range: 16-bit stays 16-bit
    if cfg.channels == 3 and have == 1:
        if image.bits != 8 or image.format == "dicom" and (image.rescale or image.invert):
            raise BadRequest(f"the model takes 3 colour channels, but this image is {_depth(image)} greyscale, "
                             "whose range cannot be shown in 8-bit colour without losing it: send an 8-bit "
                             "image or use a greyscale model", code="channels_mismatch")
        return np.repeat(pixels, 3, axis=2)
    raise BadRequest(f"the image has {have} channels and the model takes {cfg.channels}", code="channels_mismatch")


def _depth(image: Image) -> str:
    return "floating-point" if image.bits is None else f"{image.bits}-bit"


def _intensity(image: Image, pixels: np.ndarray, cfg: ImageSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Physical intensities as float32, computed in `out` (an HxWxC float32 view) when given."""
    if out is None:
        values = pixels.astype(np.float32)  # always a fresh array: later steps work in place
    else:
        out[...] = pixels
        values = out
    if cfg.scaling == "unit":
        if image.bits is None:
            raise BadRequest("the model expects integer pixels scaled to [0, 1], but the image holds "
                             "floating-point values", code="unsupported_pixels")
        values *= np.float32(1.0 / (2 ** image.bits - 1))
    else:
        slope, intercept = image.rescale or (cfg.rescale if image.format != "dicom" else (1.0, 0.0))
        if (slope, intercept) != (1.0, 0.0):
            values *= np.float32(slope)
            values += np.float32(intercept)
        if cfg.scaling == "window":
            window = image.window if (cfg.window_source == "file" and image.window) else cfg.window or image.window
            if window is None:
                raise BadRequest("the model needs a VOI window and neither the image nor the manifest gives one",
                                 code="no_window")
            low = window.center - window.width / 2
            values -= np.float32(low)
            values *= np.float32(1.0 / window.width)
            np.clip(values, 0.0, 1.0, out=values)
        elif cfg.scaling == "minmax":
            low, high = float(values.min()), float(values.max())
            values -= np.float32(low)
            if high > low:
                values *= np.float32(1.0 / (high - low))
    if image.invert:
        if cfg.scaling == "raw":
            np.subtract(np.float32(values.min() + values.max()), values, out=values)
        else:
            np.subtract(np.float32(1.0), values, out=values)
    return values


def _padded(image: Image, pixels: np.ndarray, cfg: ImageSpec) -> tuple[np.ndarray, Geometry]:
    """Intensities computed straight into the canvas padded to `pad_multiple`: one image-sized float32 array,
    not the image and then its padded copy."""
    h, w = pixels.shape[:2]
    target = cfg.padded(h, w)
    if target == (h, w):
        canvas = np.empty((h, w, pixels.shape[2]), dtype=np.float32)
    else:
        canvas = np.full((target[0], target[1], pixels.shape[2]), cfg.pad_value, dtype=np.float32)
    _intensity(image, pixels, cfg, out=canvas[:h, :w])
    return canvas, Geometry((h, w), (h, w), (0, 0), target)


def _resizes_first(image: Image, cfg: ImageSpec) -> bool:
    """Whether to resize the stored integers first: 8-bit grey or colour kept colour (Pillow's L or RGB; its
    I;16 resize is slower than float32 and its nearest picks other pixels), every step before the resize
    linear per pixel (then only rounding changes), and the image shrinks (the float steps then run on fewer
    pixels)."""
    pixels = image.pixels
    h, w = pixels.shape[:2]
    (th, tw), _ = _fit((h, w), cfg)
    # 8-bit only: a 1-bit image stored in uint8 (0/1) would round to its own full range. Colour made grey
    # converts first: then one channel is resized, not three.
    integer = pixels.dtype == np.uint8 and image.bits == 8 and (pixels.ndim == 2 or cfg.channels == 3)
    linear = cfg.scaling == "unit" or cfg.scaling == "raw" and not image.invert  # raw inverts by min + max
    return integer and linear and cfg.resample in INTEGER_RESAMPLE and th * tw < h * w


def _resized_first(image: Image, cfg: ImageSpec) -> tuple[np.ndarray, Geometry]:
    """The stored pixels resized as integers, then colour and intensity on the small image, then placed."""
    h, w = image.pixels.shape[:2]
    size, offset = _fit((h, w), cfg)
    small = replace(image, pixels=resize(image.pixels, size, cfg.resample))
    values = _intensity(small, _color(small, cfg), cfg)
    return _place(values, size, offset, cfg.size, cfg.pad_value), Geometry((h, w), size, offset, tuple(cfg.size))


def _fit(original: tuple[int, int], cfg: ImageSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    """The resized (h, w) of an `original`-sized image under the manifest's `size` and `fit`, and its offset."""
    (h, w), (th, tw) = original, cfg.size
    if cfg.fit == "stretch":
        size = (th, tw)
    else:
        scale = (min if cfg.fit == "pad" else max)(th / h, tw / w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return size, ((th - size[0]) // 2, (tw - size[1]) // 2)


def _geometry(values: np.ndarray, cfg: ImageSpec) -> tuple[np.ndarray, Geometry]:
    """Resize (and pad or crop) to the manifest's fixed `size`."""
    h, w = values.shape[:2]
    size, offset = _fit((h, w), cfg)
    resized = resize(values, size, cfg.resample)
    th, tw = cfg.size
    return _place(resized, size, offset, (th, tw), cfg.pad_value), Geometry((h, w), size, offset, (th, tw))


def _place(values: np.ndarray, size, offset, target, fill: float) -> np.ndarray:
    if tuple(size) == tuple(target) and offset == (0, 0):
        return values
    out = np.full((target[0], target[1], values.shape[2]), fill, dtype=np.float32)
    src, dst = _overlap(size, offset, target)
    out[dst] = values[src]
    return out


def _overlap(size, offset, target):
    """Slices of a (size) image and a (target) canvas that overlap when the image is shifted by offset."""
    top, left = offset
    y0, x0 = max(0, -top), max(0, -left)
    y1, x1 = min(size[0], target[0] - top), min(size[1], target[1] - left)
    return ((slice(y0, y1), slice(x0, x1)), (slice(y0 + top, y1 + top), slice(x0 + left, x1 + left)))


def resize(values: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """Resize to size=(h, w) with Pillow: HxW (uint8 masks and grey) or HxWx3 uint8 in one call, HxWxC float32
    channel by channel."""
    from PIL import Image as PILImage

    if values.shape[:2] == tuple(size):
        return values
    if values.ndim == 2 or values.dtype == np.uint8 and values.shape[2] == 3:
        return np.asarray(PILImage.fromarray(values).resize((size[1], size[0]), RESAMPLE[method]))
    channels = [np.asarray(PILImage.fromarray(np.ascontiguousarray(values[..., c], dtype=np.float32))
                           .resize((size[1], size[0]), RESAMPLE[method])) for c in range(values.shape[2])]
    return np.stack(channels, axis=2)


def restore(values: np.ndarray, geometry: Geometry, method: str = "nearest") -> np.ndarray:
    """Map model-sized values back onto the received image: the padding cropped, the resize undone with
    `method` (nearest for an HxW label mask; bilinear for HxWxC float32 probabilities)."""
    canvas = np.zeros(tuple(geometry.resized) + values.shape[2:], dtype=values.dtype)
    src, dst = _overlap(geometry.resized, geometry.offset, geometry.model)
    canvas[src] = values[dst]
    return resize(canvas, geometry.original, method)


def unmap(x: np.ndarray, y: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Model-input pixel coordinates (continuous: pixel edges at integers) -> the received image's, in float64:
    the offset undone, then the resize scaled back (x_image = (x_model - left) * width / resized_width).
    Not clipped: points in the padding land outside the image."""
    (h, w), (rh, rw), (top, left) = geometry.original, geometry.resized, geometry.offset
    x = (np.asarray(x, dtype=np.float64) - left) * w / rw
    y = (np.asarray(y, dtype=np.float64) - top) * h / rh
    return x, y


def layout(values: np.ndarray, spec: InputSpec) -> np.ndarray:
    """HxWxC float32 (`normalise`'s array, or a window of it) -> the input's layout with a batch axis, in its
    dtype, contiguous (a view of `values` where that needs no copy)."""
    axes = spec.layout
    if axes == "NF":
        tensor = values.reshape(1, -1)
    else:
        order = {"H": 0, "W": 1, "C": 2}
        if "C" not in axes:
            values = values[..., 0]
            order = {"H": 0, "W": 1}
        tensor = values.transpose([order[a] for a in axes if a != "N"])
        if "N" in axes:
            tensor = tensor[None]
    return cast(tensor, spec)


def cast(tensor: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A laid-out float32 tensor in the input's dtype (uint8 rounded and clipped), contiguous."""
    dtype = np.dtype(spec.dtype)
    if dtype == np.uint8:
        tensor = np.clip(np.rint(tensor), 0, 255)
    return np.ascontiguousarray(tensor, dtype=dtype)
