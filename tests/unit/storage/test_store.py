"""MODEL_URI forms."""
from __future__ import annotations

import pytest

from tests.support.models import MODELS
from onnxfn.storage import store
from onnxfn.errors import BundleError, ConfigError


def test_paths_and_file_uris():
    folder = MODELS / "digits-cnn"
    assert store.locate(str(folder)) == folder
    assert store.locate(folder.as_uri()) == folder
    assert store.locate("file://localhost" + str(folder)) == folder


@pytest.mark.parametrize("uri, words", [
    ("", ["MODEL_URI is empty"]),
    ("s3:///prefix/", ["MODEL_URI", "no bucket"]),
    ("oci://bucket/prefix/", ["bucket@namespace"]),
    ("https://host/p/token/n/ns/b/bucket/o/model", ["must end with /"]),
    ("ftp://host/x", ["'ftp'"]),
    ("file://otherhost/x", ["otherhost"]),
])
def test_bad_uris_name_the_variable(uri, words):
    with pytest.raises(ConfigError) as e:
        store.locate(uri)
    assert all(w in e.value.message for w in words)


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        store.locate(str(tmp_path / "nope"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="is a file"):
        store.locate(str(tmp_path / "f"))
