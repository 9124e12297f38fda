"""A model bundle: `manifest.json` plus artifacts, each pinned by sha256.

Every tool (packaging, serving, benchmarking) reads and writes bundles through here.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from onnxfn.bundles import manifest as mf
from onnxfn.errors import BundleError

if TYPE_CHECKING:
    import numpy as np

MANIFEST = "manifest.json"
#: where `onnxfn package --example` puts the example inputs, beside manifest.json
EXAMPLE = "example.npz"


@dataclass(frozen=True)
class Bundle:
    """A bundle read from `root` (a local folder, or the cache's blob folder for a remote one); `fetch` hands out
    its artifacts verified. `files` None: all were checked on load."""
    root: Path
    manifest: mf.Manifest
    files: dict[str, Path] | None = None  # artifact path -> verified file, filled on first use by `fetcher`
    manifest_sha256: str | None = None
    version: str | None = None  # the store's version of manifest.json (ETag), for revalidation
    fetcher: Callable[[mf.Artifact], Path] | None = field(default=None, compare=False)  # verifies (and downloads)

    def fetch(self, artifact: mf.Artifact) -> Path:
        """The artifact's verified file: the first time, a remote bundle downloads it from object storage into
        the cache and a local one checks its size and sha256; later calls hand out the same file."""
        if self.files is not None:
            if artifact.path not in self.files and self.fetcher is not None:
                self.files[artifact.path] = self.fetcher(artifact)
            return self.files[artifact.path]
        return self.root / artifact.path

    def example(self) -> dict[str, np.ndarray] | None:
        """The example inputs (one array per input name) when the manifest declares `example.npz`, read from
        its verified file and checked against the inputs; None without one. A damaged or mismatched file is
        a `BundleError` (example_invalid): the bundle is not served."""
        pinned = self.manifest.example
        if pinned is None:
            return None
        path = self.fetch(pinned)
        arrays = read_example(path, f"{pinned.path!r} of the bundle")
        problem = example_problem(arrays, self.manifest.inputs)
        if problem:
            raise BundleError(f"{pinned.path!r} of the bundle does not fit the model: {problem}; repackage it",
                              code="example_invalid")
        return arrays


#: sha256_file's read size: each block needs the GIL twice (read, update), so few and large blocks
HASH_BLOCK = 16 << 20


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 16 MiB blocks into one reused buffer.

    Large blocks, because each read and each update gives the GIL up and has to win it back: on a cold start
    the load thread hashes the artifact while the call's thread imports the core, holding the GIL, and with
    1 MiB blocks a 28 MB artifact took 317 ms beside a GIL-bound thread instead of 19 ms alone (50 ms in
    16 MiB blocks). Not a memory map: a file truncated while mapped kills the process with SIGBUS."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def read_manifest(root: Path) -> tuple[mf.Manifest, str]:
    """The parsed manifest and the sha256 of its bytes."""
    path = root / MANIFEST
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except FileNotFoundError:
        raise BundleError(f"bundle {str(root)!r} has no {MANIFEST}", code="invalid_manifest") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{MANIFEST} in {str(root)!r} is not valid JSON: {e}", code="invalid_manifest") from None
    return mf.parse(data), hashlib.sha256(raw).hexdigest()


def load(root: Path, eager: bool = True) -> Bundle:
    """Read and validate a bundle. Eager: check every artifact's size and sha256 now; else each artifact
    is checked the first time `Bundle.fetch` hands it out (a function checks only the one it serves)."""
    root = Path(root)
    manifest, digest = read_manifest(root)
    if not eager:
        bundle = Bundle(root, manifest, files={}, manifest_sha256=digest,
                        fetcher=lambda artifact: check_file(root / artifact.path, artifact))
        if manifest.example is not None:  # small, and checked now: a damaged one never serves
            bundle.fetch(manifest.example)
        return bundle
    bundle = Bundle(root, manifest, manifest_sha256=digest)
    for artifact in bundle.manifest.artifacts:
        verify_artifact(bundle, artifact)
    if manifest.example is not None:
        check_file(root / manifest.example.path, manifest.example)
    return bundle


def verify_artifact(bundle: Bundle, artifact: mf.Artifact) -> None:
    """Check one artifact's file against its manifest entry; `BundleError` when missing or its size or sha256 differ."""
    check_file(bundle.fetch(artifact), artifact)


def check_file(path: Path, artifact: mf.Artifact | mf.Example) -> Path:
    """`path`, once its size and sha256 are the manifest's for `artifact` (or the example inputs)."""
    if not path.is_file():
        raise BundleError(f"artifact {artifact.path!r} listed in {MANIFEST} is missing from the bundle",
                          code="artifact_missing")
    size = path.stat().st_size
    if size != artifact.size:
        raise BundleError(f"artifact {artifact.path!r} is {size} bytes but {MANIFEST} says {artifact.size}: "
                          "the bundle is damaged or was edited; repackage it", code="checksum_mismatch")
    actual = sha256_file(path)
    if actual != artifact.sha256:
        raise BundleError(f"artifact {artifact.path!r} has sha256 {actual} but {MANIFEST} says {artifact.sha256}: "
                          "the bundle is damaged or was edited; repackage it", code="checksum_mismatch")
    return path


def read_example(path: Path, what: str) -> dict[str, np.ndarray]:
    """The arrays of an example .npz (no pickled objects); `BundleError` (example_invalid) when it cannot be read."""
    import zipfile
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it holds one array, not an .npz of one array per input name")
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BundleError(f"{what} cannot be read as .npz: {e}", code="example_invalid") from None


def example_problem(arrays: dict[str, np.ndarray], inputs: tuple[mf.InputSpec, ...]) -> str | None:
    """What keeps `arrays` from being the model's example inputs (names, dtypes, ranks, fixed sizes), naming
    the input at fault; None when they fit."""
    names = [spec.name for spec in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        return f"no array for input(s) {', '.join(map(repr, missing))} (arrays: {', '.join(map(repr, arrays))})"
    extra = [n for n in arrays if n not in names]
    if extra:
        return f"array(s) {', '.join(map(repr, extra))} name no input; the inputs are {', '.join(map(repr, names))}"
    for spec in inputs:
        array = arrays[spec.name]
        fits = array.dtype.kind in "US" if spec.dtype == "string" else array.dtype.name == spec.dtype
        if not fits:
            return f"input {spec.name!r} takes {spec.dtype}, the example is {array.dtype.name}"
        if array.ndim != len(spec.shape) or any(isinstance(want, int) and want != got
                                                for want, got in zip(spec.shape, array.shape)):
            shape = [d if isinstance(d, int) else -1 for d in spec.shape]
            return f"input {spec.name!r} takes shape {shape}, the example is {list(array.shape)}"
    return None


def write(root: Path, manifest: mf.Manifest, files: dict[str, Path], force: bool = False) -> Bundle:
    """Write a bundle folder: copy `files` (artifact path -> source) and the manifest, atomically."""
    import shutil  # packaging only (like tempfile): kept off the function's cold start
    import tempfile
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not force:
        raise BundleError(f"{str(root)!r} exists and is not empty: choose another --out or pass --force",
                          code="bundle_exists")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=root.parent))
    try:
        for rel, source in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        text = json.dumps(manifest.to_dict(), indent=2) + "\n"
        mf.parse(json.loads(text))  # what we write must read back
        (staging / MANIFEST).write_text(text, encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load(root)


def artifact_for(path: Path, rel: str, kind: str = "portable") -> mf.Artifact:
    """The manifest entry for the file at `path`, stored in the bundle as `rel`: size and sha256 computed now."""
    return mf.Artifact(path=rel, sha256=sha256_file(path), size=path.stat().st_size, kind=kind)


def rewrite_manifest(root: Path, manifest: mf.Manifest) -> Bundle:
    """Replace a bundle's manifest.json atomically (a temporary file renamed over it). The bundle must
    then load and verify, else the old manifest is put back."""
    path = Path(root) / MANIFEST
    old = path.read_bytes()
    text = json.dumps(manifest.to_dict(), indent=2) + "\n"
    mf.parse(json.loads(text))  # what we write must read back
    _replace(path, text.encode("utf-8"))
    try:
        return load(Path(root))
    except BaseException:
        _replace(path, old)
        raise


def _replace(path: Path, data: bytes) -> None:
    import tempfile
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
