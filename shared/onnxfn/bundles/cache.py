"""The /tmp cache of remote bundles: artifacts stored by content hash, downloaded once,
verified while streaming, renamed into place only when their sha256 matches, evicted
least-recently-used under a size cap. A partial download is never reused."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

from onnxfn.bundles import bundle as bundles
from onnxfn.bundles import manifest as mf
from onnxfn.errors import BundleError, StorageUnavailable
from onnxfn.storage.retry import retrying
from onnxfn.storage.store import Store

MANIFEST_LIMIT = 1 << 20
#: GIL switch interval while an artifact streams in (Python's default is 5 ms): on a cold start the
#: first call imports the core meanwhile, holding the GIL, and every socket read of the download has
#: to win it back. Measured: a 28 MB download beside the core's import, 8 fresh processes each, took a
#: median 141 ms at 0.5 ms vs 160 ms at 5 ms, the import unchanged
DOWNLOAD_SWITCH_INTERVAL = 0.0005
_switch = {"downloads": 0, "saved": 0.0}  # downloads under way; the interval to put back after the last
_switch_lock = threading.Lock()


@contextmanager
def _short_switch_interval():
    """The first download to start lowers the interval, the last to end puts the saved one back."""
    with _switch_lock:
        if _switch["downloads"] == 0:
            _switch["saved"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch["saved"], DOWNLOAD_SWITCH_INTERVAL))
        _switch["downloads"] += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch["downloads"] -= 1
            if _switch["downloads"] == 0:
                sys.setswitchinterval(_switch["saved"])


def default_size(root: Path) -> int:
    """A safe share of /tmp: 80% of FN_TMPSIZE, else of a quarter of FN_MEMORY (MB) as on Oracle
    Functions, else of the file system holding the cache, at most 2 GiB."""
    for variable, share in (("FN_TMPSIZE", 1.0), ("FN_MEMORY", 0.25)):
        raw = os.environ.get(variable, "")
        if raw.isdigit() and int(raw) > 0:
            return int(int(raw) * share * 0.8 * (1 << 20))
    try:
        usage = shutil.disk_usage(root if root.exists() else root.parent)
        return int(min(usage.total * 0.8, 2 << 30))
    except OSError:
        return 256 << 20


class Cache:
    """The cache folder: verified artifacts in blobs/ named by their sha256, downloads in progress in tmp/,
    blobs kept under `max_bytes` (files left in tmp/ by a dead process are removed on creation)."""

    def __init__(self, root: Path, max_bytes: int):
        self.root, self.max_bytes = Path(root), max_bytes
        self.blobs, self.partial = self.root / "blobs", self.root / "tmp"
        for folder in (self.blobs, self.partial):
            folder.mkdir(parents=True, exist_ok=True)
        for stale in self.partial.glob("*.part"):  # left by a process that died mid-download
            stale.unlink(missing_ok=True)

    def bundle(self, store: Store, pin: str | None, deadline: float) -> bundles.Bundle:
        """Fetch (or reuse) the bundle behind `store`, verified; with `pin`, the manifest's sha256 must match."""
        raw, version = retrying(lambda: store.read(bundles.MANIFEST, MANIFEST_LIMIT), deadline, "manifest.json")
        digest = hashlib.sha256(raw).hexdigest()
        if pin and digest != pin:
            raise BundleError(f"{store.describe(bundles.MANIFEST)} has sha256 {digest} but MODEL_SHA256 pins {pin}: "
                              "the bundle changed; update the pin or restore the bundle", code="pin_mismatch")
        try:
            manifest = mf.parse(json.loads(raw))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{store.describe(bundles.MANIFEST)} is not valid JSON: {e}",
                              code="invalid_manifest") from None
        pinned = [*manifest.artifacts, *([manifest.example] if manifest.example is not None else [])]
        largest = max(a.size for a in pinned)
        if largest > self.max_bytes:
            raise BundleError(f"an artifact of the bundle is {largest:,} bytes, more than the cache holds "
                              f"({self.max_bytes:,} bytes, ONNXFN_CACHE_BYTES): give the function more memory "
                              "(/tmp is a quarter of it) or ship the bundle in the image", code="too_large")
        keep = {a.sha256 for a in pinned}

        def fetch(artifact: mf.Artifact | mf.Example) -> Path:
            """Artifacts are fetched when the runner asks for them: only the one it chooses (and the portable
            one if that fails), not every CPU class's."""
            return self.artifact(store, artifact, deadline, keep)
        bundle = bundles.Bundle(self.blobs, manifest, {}, manifest_sha256=digest, version=version, fetcher=fetch)
        if manifest.example is not None:  # small: fetched and verified by sha256 now, so a damaged one never serves
            bundle.fetch(manifest.example)
        return bundle

    def artifact(self, store: Store, artifact: mf.Artifact | mf.Example, deadline: float, keep: set[str]) -> Path:
        """The cached file of `artifact`, downloaded and verified (retried until `deadline`) unless already there;
        room is made first by evicting least-recently-used blobs, never those in `keep`."""
        path = self.blobs / artifact.sha256
        if self._intact(path, artifact):
            os.utime(path)  # most recently used
            return path
        self.evict(artifact.size, keep)
        return retrying(lambda: self._download(store, artifact, path), deadline, artifact.path)

    @staticmethod
    def _intact(path: Path, artifact: mf.Artifact | mf.Example) -> bool:
        """Whether a cached file is the artifact: a file reused from an earlier load (a failed one, a process
        before this one, another process sharing the folder) is hashed again, as a local bundle's is, and one
        damaged since is removed, to be downloaded again."""
        try:
            if path.stat().st_size == artifact.size and bundles.sha256_file(path) == artifact.sha256:
                return True
            path.unlink(missing_ok=True)
        except OSError:  # missing (the usual case), or unreadable: downloaded again
            pass
        return False

    def _download(self, store: Store, artifact: mf.Artifact | mf.Example, path: Path) -> Path:
        part = self.partial / f"{artifact.sha256}.{uuid.uuid4().hex}.part"
        digest, size = hashlib.sha256(), 0
        try:
            with _short_switch_interval(), open(part, "wb") as out, store.open(artifact.path) as download:
                for chunk in download.chunks:
                    size += len(chunk)
                    if size > artifact.size:
                        raise BundleError(f"{store.describe(artifact.path)} is larger than the {artifact.size:,} "
                                          "bytes its manifest declares", code="checksum_mismatch")
                    digest.update(chunk)
                    out.write(chunk)
            if size != artifact.size or digest.hexdigest() != artifact.sha256:
                raise BundleError(f"{store.describe(artifact.path)} has sha256 {digest.hexdigest()} ({size:,} bytes) "
                                  f"but the manifest says {artifact.sha256} ({artifact.size:,} bytes): it was "
                                  "damaged or replaced; repackage the bundle", code="checksum_mismatch")
            os.replace(part, path)
            return path
        except OSError as e:  # the cache's own disk: full or unwritable
            raise StorageUnavailable(f"writing {artifact.path} to the cache failed: {e}", code="cache_failed") from None
        finally:
            part.unlink(missing_ok=True)

    def evict(self, incoming: int, keep: set[str]) -> list[str]:
        """Delete least-recently-used artifacts until `incoming` more bytes fit under the cap."""
        entries = []
        for path in self.blobs.iterdir():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        used = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in sorted(entries):
            if used + incoming <= self.max_bytes:
                break
            if path.name in keep:
                continue
            path.unlink(missing_ok=True)
            used -= size
            removed.append(path.name)
        return removed
