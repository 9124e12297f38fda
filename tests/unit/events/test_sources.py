"""events/sources.py: the allow-list of buckets and prefixes whose events are processed."""
from __future__ import annotations

import pytest

from onnxfn.errors import ConfigError
from onnxfn.events.envelopes import ObjectRef
from onnxfn.events.sources import Source, configured, parse
from onnxfn.settings import Settings


def ref(source="oci", bucket="scans", key="incoming/a.dcm", namespace="tenancy") -> ObjectRef:
    return ObjectRef("created", bucket, key, None, None, namespace if source == "oci" else None, None, source)


def test_entries_parse_with_their_prefixes():
    assert parse(" oci://scans@tenancy/incoming/ , s3://uploads ,") == (
        Source("oci", "scans", "tenancy", "incoming/"), Source("s3", "uploads", None, ""))
    assert str(Source("oci", "scans", "tenancy", "incoming/")) == "oci://scans@tenancy/incoming/"


def test_a_source_allows_its_bucket_namespace_and_prefix_only():
    oci = Source("oci", "scans", "tenancy", "incoming/")
    assert oci.allows(ref())
    assert not oci.allows(ref(key="elsewhere/a.dcm"))
    assert not oci.allows(ref(namespace="other"))
    assert not oci.allows(ref(bucket="scans2"))
    assert not oci.allows(ref(source="s3"))  # same bucket name, other service
    whole = Source("s3", "uploads", None, "")
    assert whole.allows(ref("s3", "uploads", "any/key.png")) and not whole.allows(ref("s3", "upload", "a.png"))


@pytest.mark.parametrize("text, words", [
    ("https://scans/", "must be oci://bucket@namespace/prefix/ or s3://bucket/prefix/"),
    ("oci://scans/incoming/", "must name the namespace"),
    ("s3://a@b/", "s3:// sources do not have"),
    ("s3://UPPER/", "not a valid S3 bucket name"),
    ("oci://scans@127.0.0.1:80/", "not a valid OCI namespace"),
    ("oci://scans@ns/p/?x=1", "must be"),
])
def test_malformed_entries_are_configuration_errors_naming_the_variable(text, words):
    with pytest.raises(ConfigError, match="ONNXFN_EVENT_SOURCES") as caught:
        parse(text)
    assert words in caught.value.message
    with pytest.raises(ConfigError, match="ONNXFN_EVENT_SOURCES"):
        Settings.from_env({"ONNXFN_EVENT_SOURCES": text})


def test_the_default_is_the_output_buckets_then_nothing():
    assert configured("", "s3://results-bucket/out/") == (Source("s3", "results-bucket", None, ""),)
    assert configured("", "oci://res@tenancy/out/") == (Source("oci", "res", "tenancy", ""),)
    assert configured("s3://inbox/", "s3://results-bucket/out/") == (Source("s3", "inbox", None, ""),)
    with pytest.raises(ConfigError, match="no event sources are configured: set ONNXFN_EVENT_SOURCES"):
        configured("", "")
