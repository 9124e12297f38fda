"""The native Object Storage store (storage.oci) against a loopback server that verifies every request's
signature (tests/support/ociserver.py): reads, conditional writes, copies, names, errors, token expiry and
refresh, files that change, a wrong key, the server down then back; and how oci:// chooses its store."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from onnxfn.errors import ConfigError, ObjectMissing, PreconditionFailed, StorageUnavailable
from onnxfn.storage import principal
from onnxfn.storage.oci import OciStore
from tests.support.ociserver import OciServer, make_token, new_key, principal_env, write_token

NS, BUCKET = "testns", "models"


@pytest.fixture(scope="module")
def key():
    return new_key()


@pytest.fixture
def server(key):
    server = OciServer(key.public_key()).start()
    server.objects.put(NS, BUCKET, "p/manifest.json", b'{"name":"x"}', "application/json")
    yield server
    server.stop()


def store_on(server, env, prefix="p/", bucket=BUCKET) -> OciStore:
    """A store on the server with the principal of `env` (its own, not the process's shared one)."""
    return OciStore(f"oci://{bucket}@{NS}/{prefix}", NS, bucket, prefix, server.url,
                    principal.ResourcePrincipal(env), timeout=5)


@pytest.fixture
def rp(tmp_path, key):
    """A resource principal in files, its token valid for 15 minutes."""
    return principal_env(tmp_path / "rp", key, make_token(time.time() + 900))


def test_read_stat_and_conditional_writes_all_signed(server, rp):
    store = store_on(server, rp)
    data, version = store.read("manifest.json", 1 << 20)
    assert data == b'{"name":"x"}' and version == server.objects.get(NS, BUCKET, "p/manifest.json")["etag"]
    etag = store.put("r/a.json", b"{}", "application/json", {"source-etag": "abc"}, if_none_match=True)
    stat = store.stat("r/a.json")
    assert stat.size == 2 and stat.version == etag and stat.metadata == {"source-etag": "abc"}
    with pytest.raises(PreconditionFailed):
        store.put("r/a.json", b"{}", "application/json", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("r/a.json", b"[]", "application/json", if_match="not-the-etag")
    new = store.put("r/a.json", b"[1]", "application/json", {"source-etag": "def"}, if_match=etag)
    assert new != etag and server.objects.get(NS, BUCKET, "p/r/a.json")["data"] == b"[1]"
    assert server.rejected == [] and all(r.endswith((" 200", " 412")) for r in server.requests)


def test_copy_keeps_content_type_and_metadata(server, rp):
    store = store_on(server, rp)
    store.put("r/x.mask.png", b"\x89PNG..", "image/png", {"source-etag": "e1", "model-sha256": "m1"})
    store.copy("r/x.mask.png", "r/x.e1-m1.mask.png")
    copied = server.objects.get(NS, BUCKET, "p/r/x.e1-m1.mask.png")
    assert copied["data"] == b"\x89PNG.." and copied["type"] == "image/png"
    assert copied["metadata"] == {"source-etag": "e1", "model-sha256": "m1"}
    with pytest.raises(ObjectMissing):
        store.copy("r/none.json", "r/none.old.json")


def test_object_names_are_percent_encoded_slash_included(server, rp):
    store = store_on(server, rp, prefix="")
    name = "in/a b/ü+%25/..x?.png"
    store.put(name, b"1", "image/png", if_none_match=True)
    assert server.objects.names(NS, BUCKET)[0] == name
    assert any(r.startswith("PUT /n/testns/b/models/o/in%2Fa%20b%2F%C3%BC%2B%2525%2F..x%3F.png ")
               for r in server.requests)
    assert store.read(name, 10)[0] == b"1"


def test_missing_bucket_and_object_and_503(server, rp):
    with pytest.raises(ObjectMissing, match="bucket 'nope'.*dynamic group"):
        store_on(server, rp, bucket="nope").read("manifest.json", 100)
    store = store_on(server, rp)
    with pytest.raises(ObjectMissing, match="does not exist"):
        store.read("missing.json", 100)
    with pytest.raises(ObjectMissing):
        store.stat("missing.json")
    server.fail_503 = 1
    with pytest.raises(StorageUnavailable) as e:
        store.stat("manifest.json")
    assert e.value.status == 503 and "503" in e.value.message


def test_a_wrong_key_is_storage_auth_failed_naming_resource_principal_authentication(server, tmp_path):
    token = make_token(time.time() + 900)
    env = principal_env(tmp_path / "wrong", new_key(), token)
    with pytest.raises(ConfigError) as e:
        store_on(server, env).read("manifest.json", 100)
    assert e.value.code == "storage_auth_failed"
    message = e.value.message
    assert "resource principal authentication" in message and "dynamic group" in message and "policy" in message
    assert "401 NotAuthenticated" in message
    assert token not in message and "ST$" not in message and "Signature" not in message
    assert server.rejected == ["signature does not verify"]  # refused, re-read (unchanged): not sent again


def test_a_missing_signature_is_refused_401_as_oracle_answers(server):
    import http.client
    import json
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    conn.request("GET", f"/n/{NS}/b/{BUCKET}/o/p%2Fmanifest.json")
    response = conn.getresponse()
    assert response.status == 401
    assert json.loads(response.read())["code"] == "NotAuthenticated"
    assert server.rejected == ["no signature"]


def test_an_expired_token_as_the_server_judges_it(server, rp):
    store = store_on(server, rp)
    store.stat("manifest.json")
    server.clock_offset = 3600  # the server's clock is past the token's exp
    with pytest.raises(ConfigError) as e:
        store.stat("manifest.json")
    assert e.value.code == "storage_auth_failed" and "expired token (it expires 20" in e.value.message
    assert server.rejected == ["token expired"]


def test_a_token_near_expiry_is_replaced_by_the_runtimes_new_one(server, tmp_path, key):
    old = make_token(time.time() + principal.REFRESH_MARGIN - 2)
    env = principal_env(tmp_path / "rp", key, old)
    store = store_on(server, env)
    store.stat("manifest.json")
    new = make_token(time.time() + 900)
    write_token(tmp_path / "rp" / "rpst", new)
    time.sleep(0.01)
    server.revoked.add(old)  # only the new token is accepted from now on
    store.stat("manifest.json")
    assert server.rejected == []


def test_a_token_nearing_expiry_is_read_again_though_its_file_looks_unchanged(server, tmp_path, key, monkeypatch):
    """exp drives the re-read: the new token is written in place, same size, same mtime and inode."""
    monkeypatch.setattr(principal, "REREAD_SECONDS", 0.0)
    old = make_token(time.time() + principal.REFRESH_MARGIN - 2)
    env = principal_env(tmp_path / "rp", key, old)
    store = store_on(server, env)
    store.stat("manifest.json")
    new = make_token(time.time() + 900)
    new = new[:len(old)].ljust(len(old), "A")  # same size; the signature part is not checked
    path = tmp_path / "rp" / "rpst"
    st = os.stat(path)
    with open(path, "r+") as f:
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    server.revoked.add(old)
    store.stat("manifest.json")
    assert server.rejected == []


def test_a_token_file_that_changes_is_used_at_once(server, rp, tmp_path):
    store = store_on(server, rp)
    store.stat("manifest.json")
    old = (tmp_path / "rp" / "rpst").read_text()
    write_token(tmp_path / "rp" / "rpst", make_token(time.time() + 1800))
    server.revoked.add(old)
    store.stat("manifest.json")
    assert server.rejected == []


def test_a_401_reads_the_credentials_again_and_retries_once(server, rp, tmp_path):
    """Rotated files the stat cannot tell from the old ones (same size, mtime and inode): the 401 makes the
    principal read them again, and the request goes through."""
    store = store_on(server, rp)
    store.stat("manifest.json")
    path = tmp_path / "rp" / "rpst"
    old = path.read_text()
    new = make_token(time.time() + 1800)
    new = new[:len(old)].ljust(len(old), "A")
    st = os.stat(path)
    with open(path, "r+") as f:
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    server.revoked.add(old)
    assert store.stat("manifest.json").size == 12
    assert server.rejected == ["token revoked"]


def test_server_down_then_back(key, rp):
    server = OciServer(key.public_key()).start()
    port = server.server_address[1]
    server.objects.put(NS, BUCKET, "p/manifest.json", b"{}")
    store = store_on(server, rp)
    assert store.read("manifest.json", 10)[0] == b"{}"
    objects = server.objects
    server.stop()
    with pytest.raises(StorageUnavailable, match="unreachable"):
        store.read("manifest.json", 10)
    back = OciServer(key.public_key(), port=port, objects=objects).start()
    try:
        assert store.read("manifest.json", 10)[0] == b"{}"
    finally:
        back.stop()


def test_no_credential_in_any_message(server, tmp_path, key):
    """Every failure above names variables and codes; the token and key never appear."""
    token = make_token(time.time() + 900)
    env = principal_env(tmp_path / "rp", key, token, inline=True)
    store = store_on(server, env)
    messages = []
    for action in (lambda: store.read("missing", 10), lambda: store_on(server, env, bucket="nope").stat("x")):
        with pytest.raises(Exception) as e:
            action()
        messages.append(str(e.value))
    server.clock_offset = 3600
    with pytest.raises(ConfigError) as e:
        store.stat("manifest.json")
    messages.append(str(e.value))
    for message in messages:
        assert token not in message and token.split(".")[1] not in message and "PRIVATE KEY" not in message


# -- choosing the store ---------------------------------------------------------------------------------

@pytest.mark.parametrize("auth, keys, expected", [
    ("auto", False, "OciStore"), ("auto", True, "S3Store"), ("keys", False, "S3Store"),
    ("resource_principal", True, "OciStore"),
])
def test_oci_uris_choose_their_store(monkeypatch, rp, auth, keys, expected):
    from onnxfn.storage.store import open_store
    for name, value in rp.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    if keys:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    store = open_store("oci://bkt@ns/p/", oci_auth=auth)
    assert type(store).__name__ == expected
    if expected == "OciStore":
        assert store.endpoint == "https://objectstorage.us-phoenix-1.oraclecloud.com"
        assert (store.namespace, store.bucket, store.prefix) == ("ns", "bkt", "p/")
    else:
        assert store.endpoint == "https://ns.compat.objectstorage.us-phoenix-1.oraclecloud.com"


def test_resource_principal_asked_for_but_absent_names_the_variable(monkeypatch):
    from onnxfn.storage.store import open_store
    monkeypatch.delenv("OCI_RESOURCE_PRINCIPAL_VERSION", raising=False)
    with pytest.raises(ConfigError, match="OCI_RESOURCE_PRINCIPAL_VERSION is not set"):
        open_store("oci://bkt@ns/p/", oci_region="us-phoenix-1", oci_auth="resource_principal")
    with pytest.raises(ConfigError, match="ONNXFN_OCI_AUTH must be"):
        open_store("oci://bkt@ns/p/", oci_region="us-phoenix-1", oci_auth="instance")


def test_settings_read_onnxfn_oci_auth():
    from onnxfn.settings import Settings
    assert Settings.from_env({}).oci_auth == "auto"
    assert Settings.from_env({"ONNXFN_OCI_AUTH": "keys"}).oci_auth == "keys"
    with pytest.raises(ConfigError, match="ONNXFN_OCI_AUTH"):
        Settings.from_env({"ONNXFN_OCI_AUTH": "nope"})


def test_nothing_of_it_is_imported_without_a_resource_principal(tmp_path):
    """The cold path of a function that uses no resource principal imports neither cryptography nor the principal;
    one that does imports cryptography, never the oci SDK."""
    code = ("import sys; from onnxfn.storage.store import open_store; s = open_store(sys.argv[1], oci_region='us-phoenix-1', oci_auth='auto');"
            "s.__class__.__name__ == 'OciStore' and s.client.principal.credentials();"
            "print(type(s).__name__, sorted({m.split('.')[0] for m in sys.modules} & {'cryptography', 'oci', 'boto3'}),"
            "'onnxfn.storage.principal' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCI_", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join(["shared", "."])
    keys = {**env, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    out = subprocess.run([sys.executable, "-c", code, "oci://b@n/p/"], env=keys, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["S3Store", "[]", "False"]
    rp = {**env, **principal_env(tmp_path / "rp", new_key(), make_token(time.time() + 900))}
    out = subprocess.run([sys.executable, "-c", code, "oci://b@n/p/"], env=rp, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["OciStore", "['cryptography']", "True"]
