"""Example inputs (`example.npz`): declared in the manifest, pinned by sha256, verified when read, locally
and through the remote cache; a damaged or mismatched one is a bundle error."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from tests.support.models import reshaper
from onnxfn.bundles import bundle as bundles
from onnxfn.bundles import manifest as mf
from onnxfn.bundles.cache import Cache
from onnxfn.errors import BundleError
from onnxfn.storage.store import open_store
from onnxfn.tools.package import Options, build

EXAMPLE = {"data": np.arange(6, dtype=np.float32), "shape": np.array([2, 3], dtype=np.int64)}


@pytest.fixture
def bundle(tmp_path):
    np.savez(tmp_path / "ex.npz", **EXAMPLE)
    return build(reshaper(tmp_path / "r.onnx"), tmp_path / "bundle", Options(example=tmp_path / "ex.npz"))


def test_the_example_is_declared_and_pinned(bundle):
    pinned = bundle.manifest.example
    assert pinned.path == "example.npz" and pinned.sha256 == bundles.sha256_file(bundle.root / "example.npz")
    assert json.loads((bundle.root / "manifest.json").read_text())["example"] == {
        "path": "example.npz", "sha256": pinned.sha256, "size": pinned.size}
    arrays = bundles.load(bundle.root).example()
    assert set(arrays) == {"data", "shape"}
    assert np.array_equal(arrays["shape"], [2, 3]) and arrays["data"].dtype == np.float32


@pytest.mark.parametrize("eager", [True, False])
def test_a_damaged_example_is_a_bundle_error(bundle, eager):
    path = bundle.root / "example.npz"
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        bundles.load(bundle.root, eager=eager)
    assert e.value.code == "checksum_mismatch" and "example.npz" in e.value.message


def repin(root) -> None:
    """Pin the bundle's manifest to its example.npz as it now is (so only its content can be at fault)."""
    document = json.loads((root / "manifest.json").read_text())
    pinned = bundles.artifact_for(root / "example.npz", "example.npz")
    document["example"].update(sha256=pinned.sha256, size=pinned.size)
    (root / "manifest.json").write_text(json.dumps(document))


def test_a_missing_example_is_a_bundle_error(bundle):
    (bundle.root / "example.npz").unlink()
    with pytest.raises(BundleError) as e:
        bundles.load(bundle.root)
    assert e.value.code == "artifact_missing"


def test_an_example_that_does_not_fit_the_inputs_is_a_bundle_error(bundle):
    np.savez(bundle.root / "example.npz", data=EXAMPLE["data"], shape=np.array([2, 3], dtype=np.int32))
    repin(bundle.root)
    with pytest.raises(BundleError) as e:
        bundles.load(bundle.root).example()
    assert e.value.code == "example_invalid" and "'shape'" in e.value.message and "int32" in e.value.message


def test_an_npz_that_is_no_npz_is_a_bundle_error(bundle):
    (bundle.root / "example.npz").write_bytes(b"not a zip file")
    repin(bundle.root)
    with pytest.raises(BundleError) as e:
        bundles.load(bundle.root).example()
    assert e.value.code == "example_invalid"


@pytest.mark.parametrize("example, words", [
    ({"path": "example.json", "sha256": "0" * 64, "size": 1}, ["example.path", ".npz"]),
    ({"path": "../example.npz", "sha256": "0" * 64, "size": 1}, ["example.path", "relative"]),
    ({"path": "example.npz", "sha256": "XYZ", "size": 1}, ["example.sha256"]),
    ({"path": "example.npz", "sha256": "0" * 64}, ["example.size"]),
    ({"path": "model.onnx", "sha256": "0" * 64, "size": 1}, ["example.path"]),
])
def test_the_manifest_checks_the_example_section(bundle, example, words):
    document = json.loads((bundle.root / "manifest.json").read_text())
    document["example"] = example
    with pytest.raises(BundleError) as e:
        mf.parse(document)
    for word in words:
        assert word in e.value.message


def test_a_remote_example_is_fetched_by_sha256_and_verified(tmp_path, served, bundle):
    shutil.rmtree(served.root)
    shutil.copytree(bundle.root, served.root)
    cache = Cache(tmp_path / "cache", 10 << 20)
    remote = cache.bundle(open_store(served.url), None, time.monotonic() + 20)
    assert (cache.blobs / bundle.manifest.example.sha256).is_file()  # fetched with the manifest
    assert np.array_equal(remote.example()["shape"], [2, 3])
    data = bytearray((served.root / "example.npz").read_bytes())
    data[-30] ^= 0xFF
    (served.root / "example.npz").write_bytes(bytes(data))
    fresh = Cache(tmp_path / "cache2", 10 << 20)
    with pytest.raises(BundleError) as e:
        fresh.bundle(open_store(served.url), None, time.monotonic() + 20)
    assert e.value.code == "checksum_mismatch" and "example.npz" in e.value.message
    assert list(fresh.blobs.iterdir()) == []


def test_a_tensor_model_takes_an_image_section_on_its_first_input_only(bundle):
    document = json.loads((bundle.root / "manifest.json").read_text())
    image = {"color": "L", "size": [2, 3]}
    first = {**document, "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 1, 2, 3], "layout": "NCHW",
                                     "image": image}, *document["inputs"]]}
    assert mf.parse(first).inputs[0].image.size == (2, 3)
    second = {**document, "inputs": [*document["inputs"], first["inputs"][0]]}
    with pytest.raises(BundleError) as e:
        mf.parse(second)
    assert "inputs[2].image" in e.value.message and "first input" in e.value.message
