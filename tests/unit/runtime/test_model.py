"""`Model.warm_up`: on the bundle's example inputs when it has them, else on zeros; the probe that tells a
bad input from a broken artifact uses the same inputs."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.models import adder, reshaper
from onnxfn.errors import BundleError, InferenceError
from onnxfn.runtime import loader
from onnxfn.service import Service
from onnxfn.settings import Settings
from onnxfn.tools.package import Options, build


@pytest.fixture
def reshaping(tmp_path):
    np.savez(tmp_path / "ex.npz", data=np.arange(6, dtype=np.float32), shape=np.array([3, 2]))
    return build(reshaper(tmp_path / "r.onnx"), tmp_path / "bundle", Options(example=tmp_path / "ex.npz"))


class Recording:
    """A session wrapper that records the feeds of every run."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, names, feeds):
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_the_runtime_warm_up_runs_on_the_example(reshaping):
    model = loader.load(Settings(model_uri=str(reshaping.root), threads=1), warmup=False)
    model.session = Recording(model.session)
    model.warm_up()
    assert model.warmed_on == "example" and model.checked
    (feeds,) = model.session.feeds
    assert np.array_equal(feeds["shape"], [3, 2]) and np.array_equal(feeds["data"], np.arange(6))
    warmed = loader.load(Settings(model_uri=str(reshaping.root), threads=1))
    assert warmed.warmed and warmed.warmed_on == "example"


def test_without_an_example_the_warm_up_runs_on_zeros(tmp_path):
    b = build(adder(tmp_path / "a.onnx"), tmp_path / "bundle", Options())
    model = loader.load(Settings(model_uri=str(b.root), threads=1), warmup=False)
    model.session = Recording(model.session)
    model.warm_up()
    assert model.warmed_on == "zeros"
    assert all(not v.any() for v in model.session.feeds[0].values())


def test_the_probe_tells_a_bad_input_from_a_broken_artifact_with_the_example(reshaping):
    service = Service(Settings(model_uri=str(reshaping.root), threads=1))
    bad = {"inputs": [{"name": "data", "datatype": "FP32", "shape": [6], "data": list(range(6))},
                      {"name": "shape", "datatype": "INT64", "shape": [2], "data": [4, 4]}]}
    with pytest.raises(InferenceError):  # the input's fault (the example runs), not a BundleError
        service.infer(bad)
    model, _ = service.model()
    assert model.checked and model.warmed_on == "example"
    good = {"inputs": [bad["inputs"][0], {**bad["inputs"][1], "data": [1, 6]}]}
    assert service.infer(good).body["outputs"][0]["shape"] == [1, 6]


def test_a_damaged_example_is_never_served(reshaping):
    path = reshaping.root / "example.npz"
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        Service(Settings(model_uri=str(reshaping.root), threads=1)).model()
    assert e.value.code == "checksum_mismatch"


def test_only_a_large_call_of_a_model_whose_cost_grows_gives_memory_back():
    from onnxfn.bundles.manifest import MemoryCost
    from onnxfn.runtime.model import RELEASE_ABOVE, example
    from tests.support.models import MODELS
    digits = loader.load(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    feeds = {"image": example(digits.manifest.inputs[0])}
    digits.memory = MemoryCost(RELEASE_ABOVE * 2, 0.0)  # costly, but the same on every call: nothing to give back
    assert digits.cost(feeds) == RELEASE_ABOVE * 2 and not digits.large(feeds)
    digits.memory = None
    assert digits.cost(feeds) is None and not digits.large(feeds)
    unet = loader.load(Settings(model_uri=str(MODELS / "lesion-unet"), threads=1))
    unet.memory = MemoryCost(0, 100.0)
    small, big = (np.zeros((1, 1, n, n), np.float32) for n in (512, 1280))
    assert not unet.large({"image": small}) and unet.large({"image": big})
    unet.run({"image": small})
    assert unet.releases == 0
    unet.run({"image": big})
    assert unet.releases == 1
