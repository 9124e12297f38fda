"""Resource principal credentials (storage.principal): read as the Fn runtime provides them, re-read when the
token nears expiry or its files change; the OCI HTTP signature, byte for byte the oci SDK's."""
from __future__ import annotations

import email.utils
import logging
import os
import time

import pytest

from onnxfn.errors import ConfigError
from onnxfn.storage import principal
from tests.support.ociserver import make_token, new_key, pem, principal_env


@pytest.fixture(scope="module")
def key():
    return new_key()


def rewrite_in_place(path, text: str) -> None:
    """Change a file's content keeping its size, inode and mtime: only the token's expiry can tell."""
    st = os.stat(path)
    with open(path, "r+") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size


def test_present_only_with_a_version():
    assert principal.present({"OCI_RESOURCE_PRINCIPAL_VERSION": "2.2"})
    assert not principal.present({"OCI_RESOURCE_PRINCIPAL_RPST": "x"})


def test_http_date_is_formatdates_in_any_locale():
    for t in (0, 1796000000, 1234567890.9):
        assert principal.http_date(t) == email.utils.formatdate(t, usegmt=True)


def test_reads_files_and_inline_values(tmp_path, key):
    token = make_token(time.time() + 900)
    for inline in (False, True):
        env = principal_env(tmp_path / str(inline), key, token, inline=inline)
        rp = principal.ResourcePrincipal(env)
        creds = rp.credentials()
        assert creds.token == token and creds.expires == int(token_exp(token))
        assert creds.key.private_numbers() == key.private_numbers()
        assert rp.region == "us-phoenix-1" and token not in repr(creds)


def token_exp(token):
    return principal.token_claims(token)["exp"]


def test_an_encrypted_key_with_its_passphrase(tmp_path, key):
    for inline in (False, True):
        env = principal_env(tmp_path / str(inline), key, make_token(time.time() + 900), inline=inline,
                            passphrase=b"s3cret-pass")
        assert principal.ResourcePrincipal(env).credentials().key.private_numbers() == key.private_numbers()
        env.pop("OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM_PASSPHRASE")
        with pytest.raises(ConfigError, match="OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM_PASSPHRASE is not set"):
            principal.ResourcePrincipal(env).credentials()


def test_a_token_file_that_changes_is_read_again(tmp_path, key):
    env = principal_env(tmp_path, key, make_token(time.time() + 900))
    rp = principal.ResourcePrincipal(env)
    first = rp.credentials()
    assert rp.credentials() is first  # nothing changed: nothing read
    new = make_token(time.time() + 1800)
    from tests.support.ociserver import write_token
    write_token(tmp_path / "rpst", new)
    second = rp.credentials()
    assert second.token == new and second.key is first.key  # the key file did not change: not parsed again


def test_a_token_near_expiry_is_read_again_even_if_the_file_looks_unchanged(tmp_path, key, monkeypatch):
    old = make_token(time.time() + principal.REFRESH_MARGIN - 5)
    env = principal_env(tmp_path, key, old)
    rp = principal.ResourcePrincipal(env)
    assert rp.credentials().token == old
    new = make_token(time.time() + 900)
    new = new[:len(old)] if len(new) >= len(old) else new + "x" * (len(old) - len(new))
    rewrite_in_place(tmp_path / "rpst", new)
    assert rp.credentials().token == old  # read again at most every REREAD_SECONDS
    monkeypatch.setattr(principal, "REREAD_SECONDS", 0.0)
    assert rp.credentials().token == new


def test_an_inline_token_near_expiry_is_kept(tmp_path, key, monkeypatch):
    monkeypatch.setattr(principal, "REREAD_SECONDS", 0.0)
    token = make_token(time.time() + 10)
    rp = principal.ResourcePrincipal(principal_env(tmp_path, key, token, inline=True))
    first = rp.credentials()
    assert rp.credentials() is first


def test_refresh_tells_whether_the_credentials_changed(tmp_path, key):
    old = make_token(time.time() + 900)
    env = principal_env(tmp_path, key, old)
    rp = principal.ResourcePrincipal(env)
    rp.credentials()
    assert rp.refresh() is False
    new = make_token(time.time() + 900)
    rewrite_in_place(tmp_path / "rpst", new[:len(old)].ljust(len(old), "x"))
    assert rp.refresh() is True


@pytest.mark.parametrize("env, words", [
    ({}, ["OCI_RESOURCE_PRINCIPAL_VERSION is not set"]),
    ({"OCI_RESOURCE_PRINCIPAL_VERSION": "1.1"}, ["OCI_RESOURCE_PRINCIPAL_VERSION", "2.2"]),
    ({"OCI_RESOURCE_PRINCIPAL_VERSION": "2.2", "OCI_RESOURCE_PRINCIPAL_RPST": "tok"},
     ["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM not set"]),
])
def test_missing_or_unsupported_variables_are_named(env, words):
    with pytest.raises(ConfigError) as e:
        principal.ResourcePrincipal(env)
    assert e.value.code == "storage_auth_failed"
    for word in words:
        assert word in e.value.message


def test_bad_values_are_named_never_shown(tmp_path, key):
    secret_token = "not-a-jwt-SECRETVALUE"
    env = principal_env(tmp_path, key, secret_token, inline=True)
    with pytest.raises(ConfigError) as e:
        principal.ResourcePrincipal(env).credentials()
    assert "OCI_RESOURCE_PRINCIPAL_RPST" in e.value.message and "SECRETVALUE" not in e.value.message
    env = principal_env(tmp_path, key, make_token(time.time() + 900), inline=True)
    env["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM"] = "-----BEGIN PRIVATE KEY-----\nSECRETVALUE\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ConfigError) as e:
        principal.ResourcePrincipal(env).credentials()
    assert "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM" in e.value.message and "SECRETVALUE" not in e.value.message
    env["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM"] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as e:
        principal.ResourcePrincipal(env).credentials()
    assert "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM" in e.value.message and "missing.pem" not in e.value.message


def test_a_key_file_readable_by_others_is_used_and_warned_about_without_its_content(tmp_path, key, caplog):
    env = principal_env(tmp_path, key, make_token(time.time() + 900))
    (tmp_path / "private.pem").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="onnxfn"):
        creds = principal.ResourcePrincipal(env).credentials()
    assert creds.key.private_numbers() == key.private_numbers()
    assert '"event":"resource_principal_key_readable"' in caplog.text
    assert "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM" in caplog.text and "0o644" in caplog.text
    assert "PRIVATE KEY" not in caplog.text and str(tmp_path) not in caplog.text


def test_an_inconsistent_key_is_caught_by_the_first_signature(tmp_path, key):
    from cryptography.hazmat.primitives.asymmetric import rsa
    numbers = key.private_numbers()
    broken = rsa.RSAPrivateNumbers(numbers.p, numbers.q, numbers.d + 2, numbers.dmp1 + 2, numbers.dmq1 + 2, numbers.iqmp,
                                   numbers.public_numbers).private_key(unsafe_skip_rsa_key_validation=True)
    creds = principal.Credentials(make_token(time.time() + 900), broken, None)
    with pytest.raises(ConfigError, match="not a consistent RSA key"):
        principal.sign(creds, "GET", "/n/ns/b/b/o/x", "h")


# -- byte for byte against the oci SDK ---------------------------------------------------------------

@pytest.mark.parametrize("method, name, body, content_type", [
    ("GET", "manifest.json", None, None),
    ("HEAD", "a/b c/ü+%/../x.png", None, None),
    ("PUT", "results/in/x.png.json", b'{"label":"7"}', "application/json"),
    ("PUT", "results/in/x.png.mask.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "image/png"),
    ("PUT", "empty", b"", "application/octet-stream"),
])
@pytest.mark.parametrize("endpoint", ["https://objectstorage.us-phoenix-1.oraclecloud.com", "http://127.0.0.1:8123"])
def test_signature_matches_the_oci_sdk_byte_for_byte(key, method, name, body, content_type, endpoint, monkeypatch):
    """The same method, URL, headers, body, date and key give the oci SDK's SecurityTokenSigner (what its resource
    principal signer is) the same authorization header and signed headers."""
    from oci._vendor import requests
    from oci.auth.signers import SecurityTokenSigner
    from onnxfn.storage.oci import Native
    token = make_token(time.time() + 900)
    frozen = 1796000000.0
    monkeypatch.setattr(principal.time, "time", lambda: frozen)  # the SDK's date is given; ours frozen to match
    native = Native(endpoint, principal.ResourcePrincipal(principal_env_inline(key, token)), 5)
    path = native.path("testns", "bkt", name)
    creds = principal.Credentials(token, key, None)
    mine = principal.sign(creds, method, path, native.host, body, content_type or "application/octet-stream")
    assert mine["date"] == email.utils.formatdate(frozen, usegmt=True)
    sent = {"date": mine["date"]}
    if content_type:
        sent["content-type"] = content_type
    request = requests.Request(method, endpoint + path, headers=sent, data=body).prepare()
    SecurityTokenSigner(token, key)(request)
    theirs = {k.lower(): v for k, v in request.headers.items()}
    assert mine["authorization"] == theirs["authorization"]
    assert mine["host"] == theirs["host"]
    signed = mine["authorization"].split('headers="')[1].split('"')[0].split(" ")
    for header in signed:
        if header != "(request-target)":
            assert mine[header] == theirs[header], header


def principal_env_inline(key, token):
    return {"OCI_RESOURCE_PRINCIPAL_VERSION": "2.2", "OCI_RESOURCE_PRINCIPAL_RPST": token,
            "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM": pem(key).decode(), "OCI_RESOURCE_PRINCIPAL_REGION": "us-phoenix-1"}


def test_object_names_are_encoded_as_the_sdk_encodes_path_parameters():
    from urllib.parse import quote
    from onnxfn.storage.oci import Native
    native = Native("https://h", principal.ResourcePrincipal(principal_env_inline(new_key(), make_token(9e9))), 5)
    name = "a/b c/ü+%/~x"
    assert native.path("ns", "b", name) == "/n/ns/b/b/o/" + quote(name, safe="")  # oci.base_client: safe=''
    assert "/" not in native.path("ns", "b", name).split("/o/")[1]
