"""Sliding-window (tiled) inference for fully convolutional segmentation models, the MONAI
`sliding_window_inference` way: the image is pre-processed once, run through the model one tile at a time,
and the tiles' outputs are blended into one output shaped as whole-image inference would have shaped it.

Tiles are `tiling.tile` pixels (clamped to the padded image where it is smaller), step `tile x (1 - overlap)`
rounded down to `pad_multiple` (at least `pad_multiple`), the last tile of each row and column flush with the
image's edge. Blending weights are MONAI's importance map: a Gaussian with sigma = 0.125 x tile (`gaussian`),
or ones (`constant`). The Gaussian is the product of two 1-D profiles, each clipped at 1e-3 (MONAI clips the
2-D map there: the same values except the corners, which get 1e-6 instead of 1e-3); being separable, the
summed weights of the whole grid are the outer product of two 1-D sums, so no H x W weight map is held.

Memory (`footprint` counts it): the pre-processed image (H x W x C float32, the only whole-image input array),
the output accumulator (the output's size, float32), two 1-D weight sums, and per tile its input tensor, the
model's output, the weighted output and one tile-sized weight map. The model's own memory is one tile's.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from onnxfn.bundles.manifest import InputSpec
from onnxfn.codecs.image import Image
from onnxfn.errors import InferenceError
from onnxfn.tasks.preprocess import Geometry, layout, normalise

SIGMA_SCALE = 0.125  # MONAI's default: sigma = 0.125 x the tile's size
MIN_WEIGHT = 1e-3    # MONAI's floor: every output pixel keeps some weight
SLACK = 64 * 1024    # the Python objects around the arrays (headers, the window lists)

Infer = Callable[[np.ndarray], np.ndarray]
"""One tile's input tensor (batch 1, the input's layout and dtype) -> the model's primary output for it."""


def run(image: Image, spec: InputSpec, infer: Infer) -> tuple[np.ndarray, Geometry]:
    """The model's primary output for `image` (float32, shaped as whole-image inference on the image padded
    to `pad_multiple` would give it) computed tile by tile with `infer`, and the geometry `preprocess.prepare`
    would have returned; `postprocess.segment` takes both unchanged. The input's `image.tiling` says how."""
    values, geometry = normalise(image, spec.image)
    return assemble(values, spec, infer), geometry


def assemble(values: np.ndarray, spec: InputSpec, infer: Infer) -> np.ndarray:
    """Blend `infer`'s outputs over the tiles of `values` (`preprocess.normalise`'s H x W x C float32 array)."""
    height, width = values.shape[:2]
    th, tw = tile_size(spec, height, width)
    ys, xs = windows(height, th, step(spec, th)), windows(width, tw, step(spec, tw))
    if len(ys) == 1 and len(xs) == 1:  # one tile is the whole image: no blending
        out = np.asarray(infer(layout(values, spec)))
        _spatial_axes(out, spec, (th, tw))
        return out.astype(np.float32, copy=False)
    wy, wx = profile(th, spec), profile(tw, spec)
    acc = weight = first = axes = None
    for y in ys:
        for x in xs:
            out = np.asarray(infer(layout(values[y:y + th, x:x + tw], spec)))
            if acc is None:
                first, axes = out.shape, _spatial_axes(out, spec, (th, tw))
                shape = list(out.shape)
                shape[axes[0]], shape[axes[1]] = height, width
                acc = np.zeros(shape, dtype=np.float32)
                weight = _along(wy, axes[0], out.ndim) * _along(wx, axes[1], out.ndim)
            elif out.shape != first:
                raise InferenceError(f"tiled inference: the model's output has shape {list(out.shape)} for one tile "
                                     f"and {list(first)} for another of the same size", code="bad_output")
            region = [slice(None)] * out.ndim
            region[axes[0]], region[axes[1]] = slice(y, y + th), slice(x, x + tw)
            acc[tuple(region)] += out * weight
    acc /= _along(coverage(ys, wy, height), axes[0], acc.ndim)
    acc /= _along(coverage(xs, wx, width), axes[1], acc.ndim)
    return acc


def tile_size(spec: InputSpec, height: int, width: int) -> tuple[int, int]:
    """The (height, width) of the tiles of a padded `height` x `width` image: the manifest's tile, clamped to
    the image where it is smaller (such an axis is then a single tile)."""
    th, tw = _tiling(spec).tile
    return min(th, height), min(tw, width)


def step(spec: InputSpec, tile: int) -> int:
    """The stride between neighbouring tiles of size `tile`: tile x (1 - overlap) rounded down to
    `pad_multiple` (tiles then start where the whole image's down-sampling grid does), at least `pad_multiple`."""
    m = spec.image.pad_multiple
    return max(m, int(tile * (1.0 - _tiling(spec).overlap)) // m * m)


def windows(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of the tiles along one axis of `size` pixels: 0, stride, 2 x stride, ... while a tile
    stops short of the edge, the last one moved back to end flush with it (MONAI's `dense_patch_slices`)."""
    if tile >= size:
        return [0]
    count = -(-(size - tile) // stride) + 1
    return [min(i * stride, size - tile) for i in range(count)]


def profile(tile: int, spec: InputSpec) -> np.ndarray:
    """One axis's blending weights over a tile of `tile` pixels (float32): a Gaussian centred on the tile with
    sigma = 0.125 x tile, clipped at 1e-3, or ones for the `constant` blend."""
    if _tiling(spec).blend == "constant":
        return np.ones(tile, dtype=np.float32)
    x = np.arange(tile, dtype=np.float64) - (tile - 1) / 2.0
    sigma = SIGMA_SCALE * tile
    return np.maximum(np.exp(-x * x / (2.0 * sigma * sigma)), MIN_WEIGHT).astype(np.float32)


def coverage(starts: list[int], weights: np.ndarray, size: int) -> np.ndarray:
    """The summed weights along one axis of `size` pixels of tiles starting at `starts` (float32)."""
    total = np.zeros(size, dtype=np.float32)
    for s in starts:
        total[s:s + weights.size] += weights
    return total


def tile_shape(spec: InputSpec) -> tuple[int, ...]:
    """The model input's shape for one full tile (batch 1), to price one tile's inference."""
    th, tw = _tiling(spec).tile
    sizes = {"N": 1, "C": spec.image.channels, "H": th, "W": tw}
    return tuple(sizes[a] for a in spec.layout)


def footprint(height: int, width: int, channels_in: int, channels_out: int, spec: InputSpec) -> int:
    """The bytes tiling's own arrays hold at their peak for a `height` x `width` image of `channels_in`
    channels (as decoded: 1 grey, 3 colour) and a model of `channels_out` output channels: the pre-processing
    peak, or the pre-processed image plus the accumulator, the weight sums and one tile's input, output and
    weights, whichever is larger. The decoded pixels and the model's own memory are not included."""
    cfg = spec.image
    hp, wp = cfg.padded(height, width)
    image = hp * wp * cfg.channels * 4
    if channels_in == 3 and cfg.channels == 1:  # the float32 colour copy and its grey result
        prepare = max(height * width * 16, height * width * 4 + image)
    elif channels_in == 1 and cfg.channels == 3:  # the 8-bit grey repeated to three channels
        prepare = height * width * 3 + image
    else:
        prepare = image
    th, tw = tile_size(spec, hp, wp)
    feed = th * tw * cfg.channels * (np.dtype(spec.dtype).itemsize + (8 if spec.dtype == "uint8" else 0))
    tile = th * tw * (channels_out * 4 * 2 + 4)  # the model's output, the weighted output, the weight map
    blending = image + hp * wp * channels_out * 4 + (hp + wp) * 4 + feed + tile
    return max(prepare, blending) + SLACK


def _tiling(spec: InputSpec):
    if spec.image is None or spec.image.tiling is None:
        raise ValueError(f"input {spec.name!r} has no image.tiling section: it cannot be run tile by tile")
    return spec.image.tiling


def _spatial_axes(out: np.ndarray, spec: InputSpec, tile: tuple[int, int]) -> tuple[int, int]:
    """The output's height and width axes: it follows the input's layout, or is H x W; its height and width
    must be the tile's (as `postprocess.segment` expects them to be the input's)."""
    if out.ndim == len(spec.layout) and "H" in spec.layout:
        axes = (spec.layout.index("H"), spec.layout.index("W"))
    elif out.ndim == 2:
        axes = (0, 1)
    else:
        raise InferenceError(f"tiled inference: the model's output has shape {list(out.shape)}, which does not "
                             f"follow the input's layout {spec.layout}", code="bad_output")
    if (out.shape[axes[0]], out.shape[axes[1]]) != tuple(tile):
        raise InferenceError(f"tiled inference: the model's output has shape {list(out.shape)} for a "
                             f"{tile[0]}x{tile[1]} tile; a tiled model's output must keep its input's height "
                             f"and width", code="bad_output")
    return axes


def _along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """`vector` shaped to broadcast along `axis` of an `ndim`-dimensional array."""
    shape = [1] * ndim
    shape[axis] = vector.size
    return vector.reshape(shape)
