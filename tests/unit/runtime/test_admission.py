"""runtime/admission.py: whole, tiled or refused, from the header and the model's measured cost."""
from __future__ import annotations

import pytest

from onnxfn.bundles.images import ImageSpec, Tiling
from onnxfn.bundles.manifest import InputSpec, MemoryCost
from onnxfn.codecs.image import Header
from onnxfn.errors import InsufficientMemory
from onnxfn.runtime import admission

MB = 1 << 20
UNET = InputSpec("image", "float32", (1, 1, "h", "w"), "NCHW", ImageSpec(pad_multiple=4))
TILED = InputSpec("image", "float32", (1, 1, "h", "w"), "NCHW",
                  ImageSpec(pad_multiple=4, tiling=Tiling((256, 256))))
FIXED = InputSpec("image", "float32", (1, 3, 224, 224), "NCHW", ImageSpec(color="RGB", size=(224, 224)))
COST = MemoryCost(fixed=20 * MB, per_element=250.0)


def header(side: int, sample_bytes: int = 2, channels: int = 1) -> Header:
    return Header(side, side, channels, sample_bytes, "png")


def test_the_estimate_grows_with_the_pixels_of_a_fully_convolutional_model():
    small = admission.whole(header(512), UNET, COST, 1, True)
    big = admission.whole(header(2048), UNET, COST, 1, True)
    assert 250 * 512 * 512 < small < 2 * (250 * 512 * 512 + 20 * MB)  # the model's cost dominates
    assert 12 < big / small < 16  # 16x the pixels, less the model's fixed part
    assert admission.model_elements(Header(517, 389, 1, 2, "png"), UNET) == 520 * 392  # padded to 4


def test_a_fixed_size_model_pays_for_the_image_before_it_is_resized():
    small = admission.whole(header(256, 1, 3), FIXED, COST, 1, False)
    big = admission.whole(header(4096, 1, 3), FIXED, COST, 1, False)
    assert big - small > 4096 * 4096 * 3 * 4  # at least one float32 copy of the full-size image
    assert admission.model_elements(header(4096), FIXED) == 224 * 224 * 3


def test_whole_when_it_fits_or_no_limit_is_known():
    plan = admission.decide(header(512), UNET, COST, 1, True, available=400 * MB)
    assert not plan.tiled and plan.need == plan.whole <= 400 * MB
    assert not admission.decide(header(4096), UNET, COST, 1, True, available=None).tiled


def test_tiled_when_whole_does_not_fit_and_the_bundle_allows_it():
    plan = admission.decide(header(2048), TILED, COST, 1, True, available=200 * MB, tiled=lambda: 120 * MB)
    assert plan.tiled and plan.need == 120 * MB and plan.whole > 200 * MB


def test_refused_with_the_figures_and_what_to_do():
    with pytest.raises(InsufficientMemory) as refused:
        admission.decide(header(4096), UNET, COST, 1, True, available=180 * MB, limit=256 * MB)
    message = refused.value.message
    assert (refused.value.status, refused.value.code) == (413, "insufficient_memory")
    for words in ("4096x4096 16-bit", "180 MB free of its 256 MB", "downscale it to about", "raise the function's memory",
                  "tiling"):
        assert words in message, message
    with pytest.raises(InsufficientMemory, match=r"even tiled \(256x256\) it needs 300 MB.*smaller tiles"):
        admission.decide(header(4096), TILED, COST, 1, True, available=180 * MB, tiled=lambda: 300 * MB)


def test_the_suggested_size_fits():
    with pytest.raises(InsufficientMemory) as refused:
        admission.decide(header(3000), UNET, COST, 1, True, available=300 * MB)
    side = int(refused.value.message.split("downscale it to about ")[1].split("x")[0])
    assert admission.whole(header(side), UNET, COST, 1, True) <= 300 * MB < admission.whole(header(side + 8), UNET,
                                                                                            COST, 1, True)


def test_frames_are_paid_for_once_decoded_and_per_frame_after_unless_a_volume_holds_them_all():
    from dataclasses import replace
    one, cine = header(512), replace(header(512), frames=30)
    each = admission.whole(cine, UNET, COST, 1, True) - admission.whole(one, UNET, COST, 1, True)
    assert each == admission.decoded(cine) - admission.decoded(one)  # only the decoded frames add up
    volume = InputSpec("image", "float32", (1, 1, "d", "h", "w"), "NCDHW", ImageSpec(pad_multiple=4, frames="volume"))
    assert admission.whole(cine, volume, COST, 1, True) > 20 * admission.whole(one, volume, COST, 1, True)  # less the fixed part
