"""The `image` section of an input: how a decoded image becomes the input's tensor (colour, size, intensity,
normalisation, tiling, frames), parsed and validated field by field."""
from __future__ import annotations

from dataclasses import dataclass

from onnxfn.bundles.reader import Reader

FRAMES = ("first", "each", "volume")  # how a multi-frame image is served (None: refused)
COLORS = ("L", "RGB")
FITS = ("stretch", "pad", "crop")
RESAMPLES = ("nearest", "bilinear", "bicubic", "lanczos", "area")
SCALINGS = ("unit", "raw", "window", "minmax")
BLENDS = ("gaussian", "constant")


@dataclass(frozen=True)
class Window:
    """A VOI window in physical units (after rescale): center - width/2 maps to 0, center + width/2 to 1."""
    center: float
    width: float


@dataclass(frozen=True)
class Tiling:
    """Sliding-window inference for a fully convolutional model (the MONAI `sliding_window_inference` way):
    an image whose whole-image inference would not fit the function's memory is run tile by tile, `tile`
    (height, width) pixels at a time, neighbours overlapping by `overlap` of a tile, and the tiles' outputs
    blended (`gaussian`: weighted towards each tile's centre; `constant`: averaged)."""
    tile: tuple[int, int]
    overlap: float = 0.25
    blend: str = "gaussian"


@dataclass(frozen=True)
class ImageSpec:
    """How a decoded image becomes this input's tensor."""
    color: str = "L"
    size: tuple[int, int] | None = None  # (height, width); None keeps the image's size
    fit: str = "stretch"
    resample: str = "bilinear"
    pad_multiple: int = 1
    pad_value: float = 0.0
    scaling: str = "unit"
    rescale: tuple[float, float] = (1.0, 0.0)  # (slope, intercept) for non-DICOM images
    window: Window | None = None
    window_source: str = "manifest"  # or "file": a DICOM file's own VOI window wins
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"
    tiling: Tiling | None = None
    frames: str | None = None  # multi-frame images: "first", "each" (one answer per frame), "volume"; None refuses

    @property
    def channels(self) -> int:
        """The channel count the input takes: 1 for L (grey), 3 for RGB."""
        return 1 if self.color == "L" else 3

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """`height` x `width` rounded up to `pad_multiple`: a fully convolutional model's input for that image."""
        m = self.pad_multiple
        return -(-height // m) * m, -(-width // m) * m



def parse(r: Reader) -> ImageSpec:
    """An input's `image` section, validated (a `BundleError` naming the field at fault)."""
    size = r.get("size", list, None)
    if size is not None:
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise r.fail("size", f"must be [height, width] in pixels, got {size!r}")
        size = (size[0], size[1])
    window = None
    if r.data.get("window") is not None:
        w = Reader(r.data["window"], r.path("window"))
        window = Window(center=w.get("center", float), width=w.get("width", float))
        if window.width <= 0:
            raise w.fail("width", f"must be positive, got {window.width}")
    color = r.get("color", str, "L", choices=COLORS)
    channels = 1 if color == "L" else 3
    spec = ImageSpec(
        color=color, size=size,
        fit=r.get("fit", str, "stretch", choices=FITS),
        resample=r.get("resample", str, "bilinear", choices=RESAMPLES),
        pad_multiple=r.get("pad_multiple", int, 1),
        pad_value=r.get("pad_value", float, 0.0),
        scaling=r.get("scaling", str, "unit", choices=SCALINGS),
        rescale=r.numbers("rescale", (1.0, 0.0), length=2),
        window=window,
        window_source=r.get("window_source", str, "manifest", choices=("manifest", "file")),
        mean=r.numbers("mean", None, length=channels),
        std=r.numbers("std", None, length=channels),
        channel_order=r.get("channel_order", str, "RGB", choices=("RGB", "BGR")),
        tiling=_tiling(Reader(r.data["tiling"], r.path("tiling"))) if r.data.get("tiling") is not None else None,
        frames=r.get("frames", str, None, choices=FRAMES),
    )
    if spec.pad_multiple < 1:
        raise r.fail("pad_multiple", f"must be 1 or more, got {spec.pad_multiple}")
    if spec.std is not None and any(s == 0 for s in spec.std):
        raise r.fail("std", "must not contain 0")
    if spec.scaling == "window" and spec.window is None and spec.window_source == "manifest":
        raise r.fail("window", "is required when scaling is 'window' (or set window_source to 'file')")
    if spec.rescale[0] == 0:
        raise r.fail("rescale", "slope must not be 0")
    if spec.tiling is not None:
        if spec.size is not None:
            raise r.fail("tiling", "needs a fully convolutional model that keeps the image's size: remove `size` "
                                   "(the image is then only padded to `pad_multiple`)")
        for i, t in enumerate(spec.tiling.tile):
            if t % spec.pad_multiple:
                raise r.fail(f"tiling.tile[{i}]", f"is {t}, not a multiple of pad_multiple {spec.pad_multiple}")
    return spec


def _tiling(r: Reader) -> Tiling:
    tile = r.get("tile", list)
    if len(tile) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in tile):
        raise r.fail("tile", f"must be [height, width] in pixels, each 8 or more; got {tile!r}")
    spec = Tiling(tile=(tile[0], tile[1]), overlap=r.get("overlap", float, 0.25),
                  blend=r.get("blend", str, "gaussian", choices=BLENDS))
    if not 0.0 <= spec.overlap < 1.0:
        raise r.fail("overlap", f"must lie in [0, 1), a fraction of the tile; got {spec.overlap}")
    return spec
