"""A multi-frame image as one volume for a 3-D model (manifest `frames: "volume"`, layout NCDHW or NDHWC): frames
ordered along the slice normal, each pre-processed as a 2-D image (`preprocess.normalise`, with its own rescale
and window), stacked on the depth axis; and the model's output split back into one 2-D output per frame."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from onnxfn.bundles.manifest import InputSpec
from onnxfn.codecs.image import Image
from onnxfn.errors import BadRequest, InferenceError
from onnxfn.tasks.preprocess import Geometry, cast, normalise, standardise


@dataclass(frozen=True)
class Volume:
    """How frames became the depth axis: `order` lists the frames' indices (file order) from the first depth
    slice to the last; `spacing` is (between slices, between rows, between columns) in mm, each None where the
    file does not say."""
    order: tuple[int, ...]
    spacing: tuple[float | None, float | None, float | None]

    def describe(self) -> dict:
        """What an answer reports of the volume: its depth, the frames in depth order and the spacing."""
        return {"depth": len(self.order), "order": list(self.order), "spacing": list(self.spacing)}


def order(images: list[Image]) -> tuple[int, ...]:
    """The frames' indices sorted by `position` along the slice normal (ties keep file order); file order when
    any frame has no position."""
    if any(image.position is None for image in images):
        return tuple(range(len(images)))
    return tuple(sorted(range(len(images)), key=lambda i: images[i].position))


def slice_spacing(images: list[Image], depth_order: tuple[int, ...]) -> float | None:
    """The distance between consecutive slices (the median of the position differences), mm; None with fewer
    than two frames or without positions. SpacingBetweenSlices is not read: it is often absent or wrong."""
    positions = [images[i].position for i in depth_order]
    if len(positions) < 2 or any(p is None for p in positions):
        return None
    return round(float(np.median(np.diff(positions))), 6)


def stack(images: list[Image], spec: InputSpec) -> tuple[np.ndarray, Geometry, Volume]:
    """The model's input tensor (batch of one, the input's layout and dtype) for `images` as one volume, the
    in-plane geometry every frame went through, and the volume's order and spacing. A fixed depth that differs
    from the frame count is a 400 wrong_shape. Holds the stacked float32 volume and one frame's array at a time
    (plus the caller's pixels)."""
    depth = spec.shape[spec.axis("D")]
    if isinstance(depth, int) and depth != len(images):
        raise BadRequest(f"model input {spec.name!r} takes {depth} frame(s) on its depth axis (D); this image "
                         f"holds {len(images)}", code="wrong_shape")
    cfg = spec.image
    minmax = cfg.scaling == "minmax"
    if minmax:  # across the volume, not slice by slice: per-slice stretching would change the slices' contrast
        cfg = replace(cfg, scaling="raw", mean=None, std=None, channel_order="RGB")
    depth_order = order(images)
    values = geometry = None
    for d, i in enumerate(depth_order):
        plane, geometry = normalise(images[i], cfg)
        if values is None:
            values = np.empty((len(images),) + plane.shape, dtype=np.float32)
        values[d] = plane
        del plane
    if minmax:
        _minmax(values)
        values = standardise(values, spec.image)
    spacing = images[0].spacing or (None, None)
    volume = Volume(depth_order, (slice_spacing(images, depth_order), spacing[0], spacing[1]))
    return layout(values, spec), geometry, volume


def _minmax(values: np.ndarray) -> None:
    low, high = float(values.min()), float(values.max())
    values -= np.float32(low)
    if high > low:
        values *= np.float32(1.0 / (high - low))


def layout(values: np.ndarray, spec: InputSpec) -> np.ndarray:
    """DxHxWxC float32 -> the input's layout (NCDHW or NDHWC) with a batch axis, in its dtype, contiguous."""
    order = {"D": 0, "H": 1, "W": 2, "C": 3}
    return cast(values.transpose([order[a] for a in spec.layout if a != "N"])[None], spec)


def planes(output: np.ndarray, spec: InputSpec, volume: Volume, name: str) -> list[tuple[np.ndarray, InputSpec]]:
    """A 3-D segmentation output split into one 2-D output per frame, in the file's frame order, each with the
    2-D input spec its layout follows (the input's, without D), ready for `postprocess.segment`. The output
    follows the input's layout, or that layout without its channel axis (one channel); its depth must be the
    input's (InferenceError bad_output otherwise)."""
    output = np.asarray(output)
    axes = spec.layout if output.ndim == len(spec.layout) else spec.layout.replace("C", "")
    if output.ndim != len(axes) or "D" not in axes:
        raise InferenceError(f"output {name!r} has shape {list(output.shape)}; a 3-D segmentation output must "
                             f"follow the input's layout {spec.layout}", code="bad_output")
    d = axes.index("D")
    if output.shape[d] != len(volume.order):
        raise InferenceError(f"output {name!r} has shape {list(output.shape)}: {output.shape[d]} slice(s) on its "
                             f"depth axis, but the input had {len(volume.order)}", code="bad_output")
    kept = [(a, s) for a, s in zip(spec.layout, spec.shape) if a in axes and a != "D"]
    flat = replace(spec, layout="".join(a for a, _ in kept), shape=tuple(s for _, s in kept))
    out: list = [None] * len(volume.order)
    for depth, frame in enumerate(volume.order):
        out[frame] = (np.take(output, depth, axis=d), flat)
    return out
