"""Admission: whether an image's inference fits the function's memory, decided from its header before its
pixels are decoded. It is run whole, run tile by tile (a segmentation model packaged with `tiling`), or
refused with 413 `insufficient_memory` naming the image's size, the memory it needs and the memory there is.

What a call holds at its peak is estimated from the header and the bundle: the decoded pixels, the
pre-processed float32 copies, the model's own peak (`MemoryCost`, measured at packaging or at the first
load) and the output with its post-processing copies. The estimate errs high; the figures behind each factor
are in docs/memory.md."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from onnxfn.bundles.manifest import InputSpec, MemoryCost
from onnxfn.codecs.image import Header
from onnxfn.errors import InsufficientMemory

#: float32 copies of the image at its own size alive at once while it is pre-processed (colour and intensity,
#: then the resize's channels or the padded canvas); the model-sized input and its layout copy come on top
PREPROCESS_COPIES = 2
#: float32 copies of a segmentation output alive at once (the output, its activation) besides the label masks
OUTPUT_COPIES = 2
#: uint8 masks of the image's size alive at once (labels, the restored canvas, the PNG encoder's rows)
MASK_COPIES = 3
MB = 1 << 20


@dataclass(frozen=True)
class Plan:
    """How an image will be run: `tiled` or whole, the bytes that way needs, the bytes whole-image inference
    would need, and the bytes the function had free (None: no limit known)."""
    tiled: bool
    need: int
    whole: int
    available: int | None


def model_elements(header: Header, spec: InputSpec) -> int:
    """The elements of the model's input tensor for this image: its fixed size, or the image padded to
    `pad_multiple` (a fully convolutional model); times the frames for a volume (a depth axis)."""
    cfg = spec.image
    depth = max(header.frames, 1) if spec.axis("D") is not None else 1  # a volume: every frame in one tensor
    if cfg.size is not None:
        return cfg.size[0] * cfg.size[1] * cfg.channels * depth
    height, width = cfg.padded(header.height, header.width)
    return height * width * cfg.channels * depth


def whole(header: Header, spec: InputSpec, cost: MemoryCost | None, out_channels: int, segmentation: bool) -> int:
    """Bytes at the peak of a whole-image call: decoding, pre-processing (float32 copies of the image before it
    is resized, then of the model's input), the model and, for segmentation, the output and its masks."""
    elements = model_elements(header, spec)
    # a volume pre-processes every frame at once; one image, the first frame or frame by frame ("each"), one
    plane = header.pixels if spec.axis("D") is not None else header.width * header.height
    need = (decoded(header) + plane * spec.image.channels * 4 * PREPROCESS_COPIES + elements * 4 * 2
            + (cost.bytes(elements) if cost else 0))
    if segmentation:
        need += (elements // spec.image.channels) * max(out_channels, 1) * 4 * OUTPUT_COPIES + plane * MASK_COPIES
    return need


def tiled(header: Header, spec: InputSpec, cost: MemoryCost | None, out_channels: int) -> int:
    """Bytes at the peak of a tile-by-tile call (a segmentation model packaged with `tiling`): decoding, one
    tile's inference, tiling's own arrays (`tiling.footprint`) and the masks."""
    from onnxfn.tasks import tiling  # tiled bundles only: kept off the cold start of the others
    elements = math.prod(tiling.tile_shape(spec))
    return (decoded(header) + (cost.bytes(elements) if cost else 0)
            + tiling.footprint(header.height, header.width, header.channels, out_channels, spec)
            + header.pixels * MASK_COPIES)


def decoded(header: Header) -> int:
    """Bytes the decoded pixels take: the decoder's buffer and the array made from it."""
    return header.pixels * max(header.channels, 1) * header.sample_bytes * 2


def decide(header: Header, spec: InputSpec, cost: MemoryCost | None, out_channels: int, segmentation: bool,
           available: int | None, tiled: Callable[[], int] | None = None, limit: int | None = None) -> Plan:
    """Whole when it fits (or no limit is known), else tiled when the bundle allows it and that fits (`tiled`
    gives the tiled path's bytes), else `InsufficientMemory` with the figures (`limit`: the function's memory)
    and what to do."""
    need = whole(header, spec, cost, out_channels, segmentation)
    if available is None or need <= available:
        return Plan(False, need, need, available)
    tiled_need = tiled() if tiled is not None else None
    if tiled_need is not None and tiled_need <= available:
        return Plan(True, tiled_need, need, available)
    fits = largest(header, lambda h: whole(h, spec, cost, out_channels, segmentation) <= available)
    raise InsufficientMemory(_message(header, need, tiled_need, available, limit, spec, fits))


def largest(header: Header, fits: Callable[[Header], bool]) -> Header | None:
    """The largest downscaled copy of `header` (aspect kept) that `fits`, found by bisection; None if none does."""
    low, high = 0.0, 1.0
    for _ in range(24):
        mid = (low + high) / 2
        if fits(_scaled(header, mid)):
            low = mid
        else:
            high = mid
    return _scaled(header, low) if low > 0 and fits(_scaled(header, low)) else None


def _scaled(header: Header, scale: float) -> Header:
    return replace(header, width=max(1, int(header.width * scale)), height=max(1, int(header.height * scale)))


def _message(header: Header, need: int, tiled_need: int | None, available: int, limit: int | None,
             spec: InputSpec, fits: Header | None) -> str:
    size = f"{header.width}x{header.height}" + (f"x{header.frames} frames" if header.frames > 1 else "")
    bits = f"{header.sample_bytes * 8}-bit"
    text = (f"the {size} {bits} image would need about {_mb(need)} to infer, and the function has {_mb(available)} "
            "free" + (f" of its {_mb(limit)}" if limit else ""))
    if tiled_need is not None:
        text += f"; even tiled ({spec.image.tiling.tile[0]}x{spec.image.tiling.tile[1]}) it needs {_mb(tiled_need)}"
    text += (f": downscale it to about {fits.width}x{fits.height}, or raise" if fits else
             ": even a small image does not fit now; raise") + " the function's memory"
    if spec.image.tiling is None and spec.image.size is None:
        text += ", or package the model with tiling (sliding-window inference: onnxfn package --tile)"
    elif spec.image.tiling is not None:
        text += ", or package the model with smaller tiles"
    return text


def _mb(n: int) -> str:
    return f"{n / MB:,.0f} MB"
