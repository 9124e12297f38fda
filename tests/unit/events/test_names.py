"""events/names.py: Oracle's and S3's name rules, checked before any name is used."""
from __future__ import annotations

import pytest

from onnxfn.events import names


@pytest.mark.parametrize("namespace", ["examplens", "axaxnpcrorw5", "a", "my-tenancy1"])
def test_valid_namespaces(namespace):
    assert names.namespace_problem(namespace) is None


@pytest.mark.parametrize("namespace", [
    None, "", " ", "127.0.0.1:8333/x?", "127.0.0.1:8333/x#", "a@127.0.0.1:8333/#", "ns:443", "127.0.0.1",
    "ns.evil.example", "-ns", "ns-", "NS", "ns\n", "ňs", "x" * 64, "..",
])
def test_namespaces_that_could_steer_the_endpoint_host_are_refused(namespace):
    assert names.namespace_problem(namespace)


@pytest.mark.parametrize("scheme, bucket", [
    ("oci", "scans"), ("oci", "Scans_2026.v1-a"), ("oci", "b" * 256), ("s3", "abc"), ("s3", "my.bucket-1"),
    ("s3", "a" * 63),
])
def test_valid_buckets(scheme, bucket):
    assert names.bucket_problem(bucket, scheme) is None


@pytest.mark.parametrize("scheme, bucket", [
    ("oci", ""), ("oci", " "), ("oci", "a/b"), ("oci", "a b"), ("oci", "b" * 257), ("oci", "a@b"), ("oci", "ü"),
    ("s3", "ab"), ("s3", "a" * 64), ("s3", "Upper"), ("s3", "a..b"), ("s3", "192.168.1.1"), ("s3", "-ab"),
    ("s3", "ab-"), ("s3", "xn--ab"), ("s3", "ab-s3alias"), ("s3", "a_b"), ("s3", "127.0.0.1:80"),
])
def test_invalid_buckets(scheme, bucket):
    assert names.bucket_problem(bucket, scheme)


@pytest.mark.parametrize("key", ["a.png", "incoming/2026/chest 0001.dcm", "ü/ñ/患者.dcm", "../../x.png", "%2e%2e/x",
                                 "k" * 1024, "ü" * 512])
def test_valid_keys_are_data_whatever_they_hold(key):
    assert names.key_problem(key) is None


@pytest.mark.parametrize("key, words", [
    ("", "empty"), ("a\nb.png", "control"), ("a\rb", "control"), ("a\x00b", "control"), ("a\x7f", "control"),
    ("k" * 1025, "1,025 bytes"), ("ü" * 513, "1,026 bytes"), ("a\ud800b", "surrogate"),
])
def test_invalid_keys_say_why_without_repeating_the_name(key, words):
    problem = names.key_problem(key)
    assert words in problem and (len(key) < 3 or key not in problem)


def test_shown_quotes_and_truncates():
    assert names.shown("scans") == "'scans'"
    long = names.shown("x" * 500)
    assert len(long) == names.MAX_SHOWN + 3 and long.endswith("…'")
