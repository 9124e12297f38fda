"""The syntax bucket, namespace and object names must have before anything is built from them.

An event's names come from whoever may invoke the function; they become URLs, endpoint hosts
and result names. Each is checked here, against Oracle's and S3's documented rules, before any
use, and a refusal never repeats a name that failed (it may hold anything).

    OCI namespace   1-63 lowercase letters, digits and hyphens, not starting or ending with a
                    hyphen (it becomes a DNS label of the S3-compatible endpoint)
    OCI bucket      1-256 letters, digits, hyphens, underscores and periods
    S3 bucket       3-63 lowercase letters, digits, hyphens and periods, starting and ending with a
                    letter or digit, no "..", not an IPv4 address, not xn--* or *-s3alias
    object name     1-1024 bytes of UTF-8, no control characters (U+0000-U+001F, U+007F)
"""
from __future__ import annotations

import re

MAX_SHOWN = 80
_NAMESPACE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_OCI_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,256}")
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def namespace_problem(namespace: str | None) -> str | None:
    """Why `namespace` is not a valid OCI Object Storage namespace, or None when it is."""
    if not namespace:
        return "the event names no Object Storage namespace (data.additionalDetails.namespace)"
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        return "the namespace is not a valid OCI namespace (1-63 lowercase letters, digits and hyphens)"
    return None


def bucket_problem(bucket: str, scheme: str) -> str | None:
    """Why `bucket` is not a valid bucket name for `scheme` ("oci" or "s3"), or None when it is."""
    if not isinstance(bucket, str) or not bucket:
        return "the bucket name is empty"
    if scheme == "oci":
        if not _OCI_BUCKET.fullmatch(bucket):
            return "the bucket name is not a valid OCI bucket name (1-256 letters, digits, '-', '_' and '.')"
        return None
    if not _S3_BUCKET.fullmatch(bucket) or ".." in bucket or _IPV4.fullmatch(bucket) \
            or bucket.startswith("xn--") or bucket.endswith("-s3alias"):
        return ("the bucket name is not a valid S3 bucket name (3-63 lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit, not an IP address)")
    return None


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid object name, or None when it is."""
    if not isinstance(key, str) or not key:
        return "the object name is empty"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "the object name is not valid UTF-8 (it holds a lone surrogate)"
    if size > 1024:
        return f"the object name is {size:,} bytes of UTF-8, over the limit of 1,024"
    if _CONTROL.search(key):
        return "the object name holds control characters"
    return None


def shown(name: str) -> str:
    """A name fit for a message once it has passed validation: quoted, and cut to `MAX_SHOWN` characters."""
    return repr(name if len(name) <= MAX_SHOWN else name[:MAX_SHOWN] + "…")
