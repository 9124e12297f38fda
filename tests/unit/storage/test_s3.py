"""The S3 store: which client speaks to which endpoint, and Oracle's rules for oci:// (no server needed)."""
from __future__ import annotations

import pytest


def test_oci_endpoint_and_settings_follow_oracle_rules(monkeypatch):
    """Path-style URLs, SigV4 with the OCI region in the scope, no checksum headers: both clients."""
    from onnxfn.storage import sigv4
    from onnxfn.storage.store import open_store
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ocid-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    store = open_store("oci://scans@examplens/models/digits", oci_region="us-phoenix-1")
    assert store.bucket == "scans" and store.prefix == "models/digits/"
    assert store.endpoint == "https://examplens.compat.objectstorage.us-phoenix-1.oraclecloud.com"
    lean = store.client
    assert isinstance(lean, sigv4.Lean) and lean.region == "us-phoenix-1"
    assert lean.url("scans", "models/digits/a b+c.onnx") == store.endpoint + "/scans/models/digits/a%20b%2Bc.onnx"
    headers = lean._sign("PUT", "/scans/k", b"data", {"content-type": "text/plain"})
    assert "/us-phoenix-1/s3/aws4_request" in headers["authorization"]
    assert not [h for h in headers if "checksum" in h or h == "content-md5"]
    config = open_store("oci://scans@examplens/m/", oci_region="us-phoenix-1", s3_client="boto3").client.client.meta.config
    assert config.s3["addressing_style"] == "path" and config.signature_version == "s3v4"
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"


def test_boto3_is_used_without_keys_in_the_environment_or_for_aws_itself(monkeypatch):
    from onnxfn.storage import s3
    from onnxfn.errors import ConfigError
    from onnxfn.storage.store import open_store
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(open_store("oci://b@ns/p/", oci_region="us-ashburn-1").client, s3.Boto3)  # e.g. a profile
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert isinstance(open_store("s3://b/p/").client, s3.Boto3)  # AWS S3 itself: virtual hosts, redirects
    with pytest.raises(ConfigError, match="ONNXFN_S3_CLIENT=lean needs an endpoint"):
        _ = open_store("s3://b/p/", s3_client="lean").client


def test_oci_region_from_the_resource_principal(monkeypatch):
    from onnxfn.errors import ConfigError
    from onnxfn.storage.store import open_store
    monkeypatch.delenv("OCI_RESOURCE_PRINCIPAL_REGION", raising=False)
    with pytest.raises(ConfigError, match="ONNXFN_OCI_REGION"):
        open_store("oci://b@ns/p/")
    monkeypatch.setenv("OCI_RESOURCE_PRINCIPAL_REGION", "eu-frankfurt-1")
    assert "eu-frankfurt-1" in open_store("oci://b@ns/p/").endpoint



def test_a_server_that_closes_every_connection_is_read_and_written_again_and_again(monkeypatch):
    """HTTP/1.0, or Connection: close behind a proxy: the body ends with the connection, and the next request
    opens a new one (both failed: a read on the closed socket, then a request on no socket)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from onnxfn.storage.s3 import S3Store

    body, seen = b"onnxfn" * 1000, []

    class Closing(BaseHTTPRequestHandler):  # protocol_version HTTP/1.0: one request per connection
        def _reply(self):
            seen.append((self.command, self.client_address[1]))
            if self.command == "PUT":
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0" if self.command == "PUT" else str(len(body)))
            self.send_header("ETag", '"e"')
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)
        do_HEAD = do_GET = do_PUT = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Closing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    try:
        store = S3Store("s3://b/p/", "b", "p/", f"http://127.0.0.1:{server.server_port}", "us-phoenix-1",
                        client="lean")
        for _ in range(2):
            assert store.stat("x").size == len(body)
            assert store.read("x", 1 << 20)[0] == body
            assert store.put("y", b"{}", "application/json", {}) == '"e"'
    finally:
        server.shutdown()
    assert len({port for _, port in seen}) == len(seen) == 6  # a new connection every time
