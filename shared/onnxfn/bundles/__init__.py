"""Model bundles: the manifest, the bundle on disk, the /tmp cache of remote bundles and where a bundle comes from."""
