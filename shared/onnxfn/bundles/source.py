"""Where the bundle to serve comes from: a bundle baked into the image first, then MODEL_URI
(a local folder used in place, or object storage through the /tmp cache)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from onnxfn import logs
from onnxfn.bundles import bundle as bundles
from onnxfn.bundles.bundle import Bundle
from onnxfn.errors import BundleError
from onnxfn.settings import Settings

if TYPE_CHECKING:
    from onnxfn.storage.store import Store

log = logging.getLogger("onnxfn")


def resolve(settings: Settings, deadline: float, store: Store | None = None) -> tuple[Bundle, str]:
    """The bundle to serve, and where it came from ("baked", "local" or "remote"). Artifacts are verified
    (and, for a remote bundle, downloaded) when `Bundle.fetch` first hands them out."""
    pin = settings.model_sha256 or None
    baked = Path(settings.baked_bundle) if settings.baked_bundle else None
    if baked is not None and (baked / bundles.MANIFEST).is_file():
        bundle = bundles.load(baked, eager=False)  # the artifact served is verified before its session
        if pin is None or bundle.manifest_sha256 == pin:
            return bundle, "baked"
        logs.event(log, "baked_bundle_ignored", logging.WARNING, path=str(baked), reason="does not match MODEL_SHA256")
    store = store or store_for(settings)
    if store.local is not None:
        bundle = bundles.load(store.local, eager=False)  # the artifact served is verified before its session
        if pin and bundle.manifest_sha256 != pin:
            raise BundleError(f"{store.describe(bundles.MANIFEST)} has sha256 {bundle.manifest_sha256} but "
                              f"MODEL_SHA256 pins {pin}", code="pin_mismatch")
        return bundle, "local"
    from onnxfn.bundles.cache import Cache, default_size  # a baked bundle needs no cache: kept off its cold start
    root = Path(settings.cache_dir)
    cache = Cache(root, settings.cache_bytes or default_size(root))
    return cache.bundle(store, pin, deadline), "remote"


def store_for(settings: Settings, uri: str | None = None) -> Store:
    """The store of `uri` (default MODEL_URI), opened with the settings' storage options."""
    from onnxfn.storage.store import open_store
    return open_store(uri or settings.model_uri, oci_region=settings.oci_region, oci_endpoint=settings.oci_endpoint,
                      timeout=settings.storage_timeout, s3_client=settings.s3_client,
                      oci_auth=settings.oci_auth)
