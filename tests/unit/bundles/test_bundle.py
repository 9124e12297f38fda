"""Bundles on disk: reading, verifying, writing atomically."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from tests.support.models import MODELS
from onnxfn.bundles import bundle as bundles
from onnxfn.errors import BundleError


def test_demo_bundles_verify():
    for name in ("digits-cnn", "digits-sklearn", "lesion-unet"):
        b = bundles.load(MODELS / name)
        assert b.manifest.name == name
        assert bundles.sha256_file(b.fetch(b.manifest.portable)) == b.manifest.portable.sha256


@pytest.mark.parametrize("damage, code, words", [
    (lambda root: (root / "model.onnx").unlink(), "artifact_missing", ["'model.onnx'", "missing"]),
    (lambda root: (root / "model.onnx").write_bytes(b"x"), "checksum_mismatch", ["bytes"]),
    (lambda root: (root / "manifest.json").write_text("{"), "invalid_manifest", ["not valid JSON"]),
    (lambda root: (root / "manifest.json").unlink(), "invalid_manifest", ["no manifest.json"]),
])
def test_damage_is_named(tmp_path, damage, code, words):
    root = tmp_path / "b"
    shutil.copytree(MODELS / "digits-cnn", root)
    damage(root)
    with pytest.raises(BundleError) as e:
        bundles.load(root)
    assert e.value.code == code and e.value.status == 500
    for word in words:
        assert word in e.value.message


def test_same_size_different_bytes_fails_the_hash(tmp_path):
    root = tmp_path / "b"
    shutil.copytree(MODELS / "digits-cnn", root)
    data = bytearray((root / "model.onnx").read_bytes())
    data[-1] ^= 1
    (root / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        bundles.load(root)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 64 * 3, 1000])
def test_sha256_file_is_the_sha256_of_every_byte_across_block_edges(tmp_path, monkeypatch, size):
    monkeypatch.setattr(bundles, "HASH_BLOCK", 64)  # block edges at small sizes
    data = bytes(range(256)) * 4
    path = tmp_path / "f"
    path.write_bytes(data[:size])
    assert bundles.sha256_file(path) == hashlib.sha256(data[:size]).hexdigest()


def test_a_changed_last_byte_past_the_first_block_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bundles, "HASH_BLOCK", 1024)  # the artifact spans several blocks
    root = tmp_path / "b"
    shutil.copytree(MODELS / "digits-cnn", root)
    path = root / "model.onnx"
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 1024
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        bundles.load(root, eager=False).fetch(bundles.read_manifest(root)[0].portable)
    assert e.value.code == "checksum_mismatch"


def test_write_refuses_a_non_empty_folder_and_leaves_no_staging(tmp_path):
    source = bundles.load(MODELS / "digits-sklearn")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    files = {"model.onnx": source.fetch(source.manifest.portable)}
    with pytest.raises(BundleError, match="--force"):
        bundles.write(out, source.manifest, files)
    assert (out / "keep.txt").read_text() == "mine"
    written = bundles.write(out, source.manifest, files, force=True)
    assert not (out / "keep.txt").exists() and written.manifest == source.manifest
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    assert json.loads((out / "manifest.json").read_text())["name"] == "digits-sklearn"
