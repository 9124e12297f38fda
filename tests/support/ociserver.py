"""A loopback server speaking Oracle Object Storage's native API for tests, verifying every request's signature
as Oracle does: `HEAD`/`GET`/`PUT` of `/n/<ns>/b/<bucket>/o/<object>` (object names percent-encoded, `/` too),
`if-none-match: *` and `if-match` on PUT, `opc-meta-*` metadata, ETags. Objects live in memory.

Every request must carry an OCI HTTP signature (draft-cavage, rsa-sha256) whose keyId is `ST$<token>`:
the token a JWT whose `exp` is still ahead of the server's clock (`clock_offset` moves it) and not revoked,
the signature verified with `public_key`, `date (request-target) host` signed (plus `content-length
content-type x-content-sha256` on a PUT, the body's sha256 checked), the date within 5 minutes. Anything
else is answered 401 `{"code": "NotAuthenticated", "message": ...}`, as Oracle answers.

Also here: helpers to make an RSA key pair, a resource principal session token (a JWT, unsigned: the
server reads its claims only) and the OCI_RESOURCE_PRINCIPAL_* environment a function gets.
"""
from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

from tests.support.loopback import LoopbackServer

NOT_AUTHENTICATED = "The required information to complete authentication was not provided or was incorrect."
OBJECT_PATH = re.compile(r"^/n/([^/]+)/b/([^/]+)/o/([^/?]+)$")


# -- keys and tokens ----------------------------------------------------------------------------------

def new_key():
    """A fresh 2048-bit RSA private key (cryptography)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key, passphrase: bytes | None = None) -> bytes:
    """The key as PKCS#8 PEM, encrypted with `passphrase` when given."""
    from cryptography.hazmat.primitives import serialization
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def make_token(exp: float, **claims) -> str:
    """A resource principal session token: a JWT with `exp` (epoch seconds) and the given claims. Its signature
    part is random: the server never checks it (Oracle's identity service would)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "asw"}
    body = {"sub": "ocid1.fnfunc.oc1..test", "res_type": "fnfunc", "res_tenant": "ocid1.tenancy.oc1..test",
            "iat": int(time.time()), "exp": int(exp), "jti": uuid.uuid4().hex, **claims}
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(body).encode()),
                     _b64url(os.urandom(32))])


def principal_env(folder: Path, key, token: str, *, region: str = "us-phoenix-1", inline: bool = False,
                  passphrase: bytes | None = None) -> dict[str, str]:
    """The OCI_RESOURCE_PRINCIPAL_* variables of version 2.2; files under `folder` (token `rpst`, key
    `private.pem`, mode 600), or the values themselves with `inline`."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {"OCI_RESOURCE_PRINCIPAL_VERSION": "2.2", "OCI_RESOURCE_PRINCIPAL_REGION": region}
    if inline:
        env["OCI_RESOURCE_PRINCIPAL_RPST"] = token
        env["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM"] = pem(key, passphrase).decode()
        if passphrase:
            env["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM_PASSPHRASE"] = passphrase.decode()
        return env
    write_token(folder / "rpst", token)
    key_file = folder / "private.pem"
    key_file.write_bytes(pem(key, passphrase))
    key_file.chmod(0o600)
    env["OCI_RESOURCE_PRINCIPAL_RPST"] = str(folder / "rpst")
    env["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM"] = str(key_file)
    if passphrase:
        (folder / "passphrase").write_bytes(passphrase)
        env["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM_PASSPHRASE"] = str(folder / "passphrase")
    return env


def write_token(path: Path, token: str) -> None:
    """Replace the token file as a runtime would (write aside, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(token)
    os.replace(tmp, path)


# -- the server ---------------------------------------------------------------------------------------

class Objects:
    """Objects by (namespace, bucket, name): bytes, content type, metadata, ETag; buckets must exist."""

    def __init__(self):
        self.buckets: set[tuple[str, str]] = set()
        self.items: dict[tuple[str, str, str], dict] = {}
        self.lock = threading.Lock()

    def put(self, namespace: str, bucket: str, name: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> str:
        """Store an object (its bucket created if need be); its new ETag."""
        with self.lock:
            self.buckets.add((namespace, bucket))
            etag = str(uuid.uuid4())
            self.items[(namespace, bucket, name)] = {"data": bytes(data), "type": content_type,
                                                     "metadata": dict(metadata or {}), "etag": etag}
            return etag

    def load(self, namespace: str, bucket: str, folder: Path, prefix: str = "") -> None:
        """Every file under `folder` as an object under `prefix`."""
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.put(namespace, bucket, prefix + path.relative_to(folder).as_posix(), path.read_bytes())

    def names(self, namespace: str, bucket: str) -> list[str]:
        """The object names of a bucket, sorted."""
        return sorted(n for (ns, b, n) in self.items if (ns, b) == (namespace, bucket))

    def get(self, namespace: str, bucket: str, name: str) -> dict | None:
        """An object's record, or None."""
        return self.items.get((namespace, bucket, name))


class OciServer(LoopbackServer):
    """The native API on 127.0.0.1 (`url`), verifying signatures with `public_key`; `requests` lists
    "METHOD path status" of each request; faults: `fail_503` answers, `revoked` tokens, `clock_offset`."""

    def __init__(self, public_key, port: int = 0, objects: Objects | None = None):
        self.public_key = public_key
        self.objects = objects or Objects()
        self.requests: list[str] = []
        self.rejected: list[str] = []     # why each 401 was answered
        self.fail_503 = 0
        self.revoked: set[str] = set()
        self.clock_offset = 0.0
        self.connections: set = set()
        super().__init__(_Handler, port)

    @property
    def url(self) -> str:
        """The endpoint, for ONNXFN_OCI_ENDPOINT."""
        return self.base

    def stop(self) -> None:
        """Stop serving: the listening socket and every open connection closed, as a server that goes away."""
        import socket
        super().stop()
        for conn in list(self.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def now(self) -> float:
        """The server's clock."""
        return time.time() + self.clock_offset

    def authenticate(self, method: str, path: str, headers, body: bytes) -> str | None:
        """None when the request is signed as Oracle requires, else why not (for `rejected`; never sent)."""
        auth = headers.get("authorization") or ""
        if not auth.startswith("Signature "):
            return "no signature"
        fields = dict(re.findall(r'(\w+)="([^"]*)"', auth))
        if fields.get("version") != "1" or fields.get("algorithm") != "rsa-sha256":
            return "version or algorithm"
        key_id = fields.get("keyId", "")
        if not key_id.startswith("ST$"):
            return "keyId is not a security token"
        token = key_id[3:]
        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError):
            return "token is not a JWT"
        if token in self.revoked:
            return "token revoked"
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] <= self.now():
            return "token expired"
        names = fields.get("headers", "").split(" ")
        required = ["date", "(request-target)", "host"]
        if method in ("PUT", "POST"):
            required += ["content-length", "content-type", "x-content-sha256"]
        if any(name not in names for name in required):
            return "headers not signed"
        if method in ("PUT", "POST"):
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            if headers.get("x-content-sha256") != digest or headers.get("content-length") != str(len(body)):
                return "body does not match"
        try:
            date = email.utils.parsedate_to_datetime(headers.get("date") or "").timestamp()
        except (TypeError, ValueError):
            return "no date"
        if abs(date - self.now()) > 300:
            return "date skewed"
        lines = []
        for name in names:
            if name == "(request-target)":
                lines.append(f"(request-target): {method.lower()} {path}")
            elif headers.get(name) is None:
                return f"signed header {name} missing"
            else:
                lines.append(f"{name}: {headers.get(name)}")
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        try:
            self.public_key.verify(base64.b64decode(fields.get("signature", "")), "\n".join(lines).encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return "signature does not verify"
        return None


class _Handler(BaseHTTPRequestHandler):
    server: OciServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def do_HEAD(self):
        self._handle()

    def do_GET(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self._answer(body)

    def _answer(self, body: bytes) -> int:
        server = self.server
        if server.fail_503 > 0:
            server.fail_503 -= 1
            return self._error(503, "ServiceUnavailable", "try again")
        why = server.authenticate(self.command, self.path, self.headers, body)
        if why is not None:
            server.rejected.append(why)
            return self._error(401, "NotAuthenticated", NOT_AUTHENTICATED)
        match = OBJECT_PATH.match(self.path)
        if not match or self.command not in ("HEAD", "GET", "PUT"):
            return self._error(404, "NotFound", "no such route")
        namespace, bucket, name = (unquote(part) for part in match.groups())
        objects = server.objects
        with objects.lock:
            if (namespace, bucket) not in objects.buckets:
                return self._error(404, "BucketNotFound", f"Either the bucket named '{bucket}' does not exist in the "
                                                          f"namespace '{namespace}' or you are not authorized")
            item = objects.get(namespace, bucket, name)
            if self.command == "PUT":
                if self.headers.get("if-none-match") == "*" and item is not None:
                    return self._error(412, "IfNoneMatchFailed", "the object exists")
                if self.headers.get("if-match") and (item is None or item["etag"] != self.headers["if-match"]):
                    return self._error(412, "IfMatchFailed", "the ETag does not match")
                metadata = {k.lower()[len("opc-meta-"):]: v for k, v in self.headers.items()
                            if k.lower().startswith("opc-meta-")}
                etag = str(uuid.uuid4())
                objects.items[(namespace, bucket, name)] = {
                    "data": body, "type": self.headers.get("content-type"), "metadata": metadata, "etag": etag}
                return self._send(200, {"etag": etag, "opc-content-md5": _md5(body)}, b"")
        if item is None:
            return self._error(404, "ObjectNotFound", f"The object '{name}' was not found in the bucket '{bucket}'")
        headers = {"etag": item["etag"], "content-type": item["type"] or "application/octet-stream",
                   **{f"opc-meta-{k}": v for k, v in item["metadata"].items()}}
        return self._send(200, headers, item["data"], length=len(item["data"]), body=self.command == "GET")

    def _error(self, status: int, code: str, message: str) -> int:
        data = json.dumps({"code": code, "message": message}).encode()
        return self._send(status, {"content-type": "application/json"}, data, length=len(data),
                          body=self.command != "HEAD")

    def _send(self, status: int, headers: dict, data: bytes, length: int | None = None, body: bool = True) -> int:
        self.server.requests.append(f"{self.command} {self.path} {status}")  # before the answer: tests read it after
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("opc-request-id", uuid.uuid4().hex)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if body and data:
            self.wfile.write(data)
        return status


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()
