"""The /tmp cache, against a real HTTP server (PAR-style): verified downloads, retries,
partial files, eviction."""
from __future__ import annotations

import json
import sys
import time

import pytest

from tests.support.models import MODELS
from onnxfn.bundles import bundle as bundles
from onnxfn.bundles.cache import Cache, retrying
from onnxfn.errors import BundleError, ConfigError, StorageUnavailable
from onnxfn.storage.store import open_store


def later(seconds=20.0):
    return time.monotonic() + seconds


def test_download_is_verified_and_reused(tmp_path, served):
    cache = Cache(tmp_path / "cache", 10 << 20)
    store = open_store(served.url)
    first = cache.bundle(store, None, later())
    path = first.fetch(first.manifest.portable)
    assert path.parent == cache.blobs and path.name == first.manifest.portable.sha256
    assert bundles.sha256_file(path) == first.manifest.portable.sha256
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert first.version and first.manifest_sha256
    gets = sum(r.startswith("GET") and r.endswith("model.onnx") for r in served.faults.requests)
    cache.bundle(store, None, later())
    assert sum(r.startswith("GET") and r.endswith("model.onnx") for r in served.faults.requests) == gets == 1
    assert list(cache.partial.iterdir()) == []


def test_a_cached_artifact_damaged_since_is_downloaded_again(tmp_path, served):
    """A blob of the right size whose bytes changed after it was cached (a second load in the same process, or a
    process sharing the folder) is never handed out: it is hashed, removed and downloaded again."""
    cache = Cache(tmp_path / "cache", 10 << 20)
    store = open_store(served.url)
    first = cache.bundle(store, None, later())
    path = first.fetch(first.manifest.portable)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    again = cache.bundle(store, None, later())
    assert again.fetch(again.manifest.portable) == path
    assert bundles.sha256_file(path) == first.manifest.portable.sha256
    assert sum(r.startswith("GET") and r.endswith("model.onnx") for r in served.faults.requests) == 2


def test_pin_must_match_the_manifest(tmp_path, served):
    cache = Cache(tmp_path / "cache", 10 << 20)
    with pytest.raises(BundleError, match="MODEL_SHA256") as e:
        cache.bundle(open_store(served.url), "0" * 64, later())
    assert e.value.code == "pin_mismatch"
    good = bundles.load(MODELS / "digits-cnn").manifest_sha256
    assert cache.bundle(open_store(served.url), good, later()).manifest_sha256 == good


def test_a_damaged_artifact_is_never_kept(tmp_path, served):
    model = served.root / "model.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    cache = Cache(tmp_path / "cache", 10 << 20)
    bundle = cache.bundle(open_store(served.url), None, later())  # the manifest only
    with pytest.raises(BundleError) as e:
        bundle.fetch(bundle.manifest.portable)  # the artifact is fetched when it is asked for
    assert e.value.code == "checksum_mismatch" and "model.onnx" in e.value.message
    assert list(cache.blobs.iterdir()) == [] and list(cache.partial.iterdir()) == []
    assert sys.getswitchinterval() == pytest.approx(0.005)  # the download's short interval is undone


def test_transient_failures_are_retried(tmp_path, served):
    served.faults.fail_503 = 2
    bundle = Cache(tmp_path / "cache", 10 << 20).bundle(open_store(served.url), None, later())
    assert bundle.manifest.name == "digits-cnn"


def test_a_cut_connection_mid_download_is_retried_and_leaves_nothing(tmp_path, served):
    served.faults.cut_after = 1000
    cache = Cache(tmp_path / "cache", 10 << 20)
    store = open_store(served.url)
    manifest_first = cache.bundle  # the manifest is small: cut it too, then the artifact
    bundle = manifest_first(store, None, later())
    assert bundles.sha256_file(bundle.fetch(bundle.manifest.portable)) == bundle.manifest.portable.sha256
    assert list(cache.partial.iterdir()) == []


def test_retries_stop_at_the_deadline(tmp_path, served):
    served.faults.fail_503 = 1000
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="deadline") as e:
        Cache(tmp_path / "cache", 10 << 20).bundle(open_store(served.url), None, time.monotonic() + 1.0)
    assert time.monotonic() - started < 1.5 and e.value.status == 503


def test_refused_and_missing(tmp_path, served):
    served.faults.forbidden = True
    with pytest.raises(ConfigError, match="expired or been revoked"):
        Cache(tmp_path / "cache", 10 << 20).bundle(open_store(served.url), None, later())
    served.faults.forbidden = False
    with pytest.raises(BundleError, match="does not exist") as e:
        Cache(tmp_path / "cache", 10 << 20).bundle(open_store(served.url + "nope/"), None, later())
    assert e.value.code == "bundle_not_found"


def test_a_dead_server_is_storage_unavailable(tmp_path, served):
    url = served.url
    served.stop()
    with pytest.raises(StorageUnavailable, match="unreachable"):
        Cache(tmp_path / "cache", 10 << 20).bundle(open_store(url), None, time.monotonic() + 0.5)


def test_lru_eviction_keeps_the_cap(tmp_path):
    cache = Cache(tmp_path / "cache", 3000)
    for i, name in enumerate("abcd"):
        blob = cache.blobs / (name * 64)
        blob.write_bytes(b"x" * 1000)
        t = time.time() - 100 + i
        import os
        os.utime(blob, (t, t))
    removed = cache.evict(1000, keep={"a" * 64})
    assert removed == ["b" * 64, "c" * 64]  # oldest first, the kept one spared
    assert sorted(p.name[0] for p in cache.blobs.iterdir()) == ["a", "d"]


def test_too_large_for_the_cache(tmp_path, served):
    with pytest.raises(BundleError, match="ONNXFN_CACHE_BYTES"):
        Cache(tmp_path / "cache", 1000).bundle(open_store(served.url), None, later())


def test_partial_files_from_a_dead_process_are_removed(tmp_path):
    (tmp_path / "cache" / "tmp").mkdir(parents=True)
    stale = tmp_path / "cache" / "tmp" / ("f" * 64 + ".x.part")
    stale.write_bytes(b"half")
    Cache(tmp_path / "cache", 1000)
    assert not stale.exists()


def test_retrying_returns_the_first_success():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise StorageUnavailable("down")
        return "ok"
    assert retrying(flaky, time.monotonic() + 5, "x") == "ok" and len(attempts) == 3


def test_only_the_artifacts_asked_for_are_fetched(tmp_path, served):
    manifest = json.loads((served.root / "manifest.json").read_text())
    extra = dict(manifest["artifacts"][0], path="model.big.onnx", kind="optimized",
                 requires={"arch": "aarch64"})
    (served.root / "model.big.onnx").write_bytes((served.root / "model.onnx").read_bytes())
    manifest["artifacts"].append(extra)
    (served.root / "manifest.json").write_text(json.dumps(manifest))
    bundle = Cache(tmp_path / "cache", 10 << 20).bundle(open_store(served.url), None, later())
    bundle.fetch(bundle.manifest.portable)
    assert not any(r.endswith("model.big.onnx") for r in served.faults.requests)
