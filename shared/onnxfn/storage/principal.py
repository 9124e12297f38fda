"""The function's own identity on Oracle Cloud: resource principal credentials as the Fn runtime hands
them over (version 2.2), and the OCI HTTP signature (draft-cavage, rsa-sha256) they sign requests with.

The runtime sets, in the function's environment:

    OCI_RESOURCE_PRINCIPAL_VERSION              2.2
    OCI_RESOURCE_PRINCIPAL_RPST                 the session token (a JWT), or the path of a file holding it (starts with /)
    OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM          the private key (PEM), or the path of a file holding it
    OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM_PASSPHRASE   optional: the key's passphrase, or a path
    OCI_RESOURCE_PRINCIPAL_REGION               the region, e.g. us-phoenix-1

`ResourcePrincipal.credentials()` gives the token and key to sign with, read once and read again when the
token nears its expiry (its JWT `exp` claim, decoded, not verified: the server verifies it) or when a file
behind a path changes (mtime, size, inode). RSA comes from `cryptography`, imported when the key is first
loaded: a function that uses no resource principal imports nothing of it. The key's consistency check
(about 50 ms of a cold start) is replaced by verifying the first signature made with each key loaded
(about 0.05 ms), which catches an inconsistent key the same way.

Nothing here logs or raises a token, a key, a passphrase or a signature: messages name the variable only.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping

from onnxfn import logs
from onnxfn.errors import ConfigError

log = logging.getLogger("onnxfn")

VERSION = "OCI_RESOURCE_PRINCIPAL_VERSION"
RPST = "OCI_RESOURCE_PRINCIPAL_RPST"
PRIVATE_PEM = "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM"
PASSPHRASE = "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM_PASSPHRASE"
REGION = "OCI_RESOURCE_PRINCIPAL_REGION"
SUPPORTED = ("2.2",)
#: Re-read the credentials when the token expires within this many seconds (the oci SDK takes 60 too).
REFRESH_MARGIN = 60.0
#: While the token is within the margin and its file unchanged, read it again at most this often.
REREAD_SECONDS = 1.0
#: The headers signed on every request, then on requests with a body, in the oci SDK's order.
GENERIC_HEADERS = ("date", "(request-target)", "host")
BODY_HEADERS = ("content-length", "content-type", "x-content-sha256")

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def present(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment carries a resource principal (OCI_RESOURCE_PRINCIPAL_VERSION is set)."""
    env = os.environ if env is None else env
    return bool((env.get(VERSION) or "").strip())


def http_date(now: float | None = None) -> str:
    """An RFC 7231 date (`Tue, 02 Dec 2025 11:17:00 GMT`), as email.utils.formatdate(usegmt=True) writes it,
    whatever the locale."""
    t = time.gmtime(time.time() if now is None else now)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def token_claims(token: str) -> dict:
    """A JWT's payload, decoded without verifying it; `ConfigError` naming OCI_RESOURCE_PRINCIPAL_RPST when it is
    not a JWT (the token itself is never repeated)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        if not isinstance(claims, dict):
            raise ValueError
        return claims
    except (IndexError, ValueError, UnicodeError):
        raise ConfigError(f"the resource principal's token ({RPST}) is not a JWT: check the variable (or the file "
                          "it names)", code="storage_auth_failed") from None


@dataclass
class Credentials:
    """One reading of the resource principal: the token, the private key (a `cryptography` RSA key), when the
    token expires (epoch seconds, None when it has no `exp`), and whether a signature of this key was checked."""
    token: str
    key: object = field(repr=False)
    expires: float | None
    verified: bool = False

    def __repr__(self) -> str:  # never show the token
        return f"Credentials(expires={self.expires!r})"


class _Source:
    """One variable's value: given inline, or read from the file whose absolute path the variable holds."""

    def __init__(self, variable: str, raw: str):
        self.variable, self.raw = variable, raw
        self.path = raw if raw.startswith("/") else None
        self.seen: tuple | None = None  # (mtime_ns, size, inode) of the file last read

    def state(self) -> tuple | None:
        """The file's (mtime_ns, size, inode), or None for an inline value; `ConfigError` when it cannot be read."""
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise ConfigError(f"the file {self.variable} names cannot be read ({type(e).__name__}): check the "
                              "resource principal's configuration", code="storage_auth_failed") from None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def changed(self) -> bool:
        """Whether the file differs from the one last read (never for an inline value)."""
        return self.path is not None and self.state() != self.seen

    def read(self) -> bytes:
        """The value's bytes (the file's content for a path), remembering the file's state."""
        if self.path is None:
            return self.raw.encode()
        state = self.state()
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError(f"the file {self.variable} names cannot be read ({type(e).__name__}): check the "
                              "resource principal's configuration", code="storage_auth_failed") from None
        self.seen = state
        return data


class ResourcePrincipal:
    """The resource principal of `env` (default: the process environment): `ConfigError` naming the variable when
    one is missing or its version is not supported. Thread-safe; the credentials are read on first use."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        version = (env.get(VERSION) or "").strip()
        if not version:
            raise ConfigError(f"no resource principal: {VERSION} is not set (ONNXFN_OCI_AUTH=resource_principal needs "
                              "the function's resource principal, which Oracle Functions provides)",
                              code="storage_auth_failed")
        if version not in SUPPORTED:
            raise ConfigError(f"{VERSION} is {version!r}; onnxfn reads resource principals of version "
                              f"{', '.join(SUPPORTED)} (as Oracle Functions provides them)", code="storage_auth_failed")
        missing = [name for name in (RPST, PRIVATE_PEM) if not (env.get(name) or "").strip()]
        if missing:
            raise ConfigError(f"the resource principal is incomplete: {' and '.join(missing)} not set",
                              code="storage_auth_failed")
        self.region = (env.get(REGION) or "").strip()
        self._token = _Source(RPST, env[RPST].strip())
        self._key = _Source(PRIVATE_PEM, env[PRIVATE_PEM].strip())
        passphrase = (env.get(PASSPHRASE) or "").strip()
        self._passphrase = _Source(PASSPHRASE, passphrase) if passphrase else None
        self._current: Credentials | None = None
        self._checked = 0.0  # time.monotonic() of the last re-read while the token was near its expiry
        self._lock = threading.Lock()

    def credentials(self) -> Credentials:
        """The token and key to sign with now: read again when a file changed or the token expires within
        REFRESH_MARGIN seconds (a file left unchanged is then read again at most every REREAD_SECONDS)."""
        current = self._current
        if current is not None and not self._stale(current):
            return current
        with self._lock:
            current = self._current
            if current is None or self._stale(current):
                current = self._current = self._load(current)
            return current

    def refresh(self) -> bool:
        """Read the credentials again now (after the server refused them); whether the token or key changed."""
        with self._lock:
            before = self._current
            self._current = self._load(before, force=True)
            after = self._current
            return before is None or after.token != before.token or (
                after.key is not before.key and
                after.key.public_key().public_numbers() != before.key.public_key().public_numbers())

    def _stale(self, current: Credentials) -> bool:
        sources = (self._token, self._key, self._passphrase)
        if any(source is not None and source.changed() for source in sources):
            return True
        if current.expires is not None and time.time() > current.expires - REFRESH_MARGIN:
            return time.monotonic() - self._checked >= REREAD_SECONDS and self._token.path is not None
        return False

    def _load(self, previous: Credentials | None, force: bool = False) -> Credentials:
        """Read what changed (everything the first time); the key is parsed again only when its file or the
        passphrase changed."""
        self._checked = time.monotonic()
        key_stale = previous is None or force or self._key.changed() or (
            self._passphrase is not None and self._passphrase.changed())
        token = self._token.read().decode("utf-8", "replace").strip()
        if not token or any(not (33 <= ord(c) <= 126) for c in token):
            raise ConfigError(f"the resource principal's token ({RPST}) is empty or holds characters a header cannot "
                              "carry", code="storage_auth_failed")
        claims = token_claims(token)
        expires = claims.get("exp")
        expires = float(expires) if isinstance(expires, (int, float)) else None
        if key_stale:
            key = self._load_key()
            return Credentials(token, key, expires)
        assert previous is not None
        return Credentials(token, previous.key, expires, previous.verified)

    def _load_key(self):
        pem = self._key.read()
        passphrase = self._passphrase.read().strip() if self._passphrase is not None else None
        if self._key.path is not None:
            try:
                mode = os.stat(self._key.path).st_mode
            except OSError:
                mode = 0
            if mode & 0o044:
                logs.event(log, "resource_principal_key_readable", logging.WARNING, variable=PRIVATE_PEM,
                           mode=oct(mode & 0o777), advice="the key file is readable by group or others; used anyway")
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        try:
            # The consistency check costs ~50 ms of a cold start: the first signature is verified instead (`sign`).
            key = load_pem_private_key(pem, passphrase or None, unsafe_skip_rsa_key_validation=True)
        except TypeError:  # encrypted without a passphrase, or a passphrase for a key that has none
            what = f"{PASSPHRASE} is not set" if passphrase is None else f"{PASSPHRASE} is set but the key is not encrypted"
            raise ConfigError(f"the resource principal's key ({PRIVATE_PEM}) could not be loaded: {what}",
                              code="storage_auth_failed") from None
        except Exception:  # ValueError, UnsupportedAlgorithm: never with the key's content
            raise ConfigError(f"the resource principal's key ({PRIVATE_PEM}) could not be loaded: not a PEM private key, "
                              f"or the passphrase ({PASSPHRASE}) is wrong", code="storage_auth_failed") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"the resource principal's key ({PRIVATE_PEM}) is not an RSA key",
                              code="storage_auth_failed")
        return key


# -- the signature ------------------------------------------------------------------------------

def signing_string(headers: Mapping[str, str], names: tuple[str, ...], method: str, target: str) -> bytes:
    """The draft-cavage signing string: one `name: value` line per signed header, `(request-target)` being the
    lower-case method and the path with its query."""
    lines = []
    for name in names:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {target}")
        else:
            lines.append(f"{name}: {headers[name]}")
    return "\n".join(lines).encode("ascii")


def sign(credentials: Credentials, method: str, target: str, host: str, body: bytes | None = None,
         content_type: str = "application/octet-stream", now: float | None = None) -> dict[str, str]:
    """The headers of one signed request (lower-case names): date, host, authorization, and for a PUT or POST
    content-length, content-type and x-content-sha256 (signed too), exactly as the oci SDK's signer writes them.
    `target` is the path with its query, already percent-encoded."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    headers = {"date": http_date(now), "host": host}
    names = GENERIC_HEADERS
    if method.upper() in ("PUT", "POST", "PATCH"):
        body = body or b""
        headers["content-length"] = str(len(body))
        headers["content-type"] = content_type
        headers["x-content-sha256"] = base64.b64encode(hashlib.sha256(body).digest()).decode()
        names = GENERIC_HEADERS + BODY_HEADERS
    message = signing_string(headers, names, method, target)
    key = credentials.key
    signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    if not credentials.verified:  # in place of the key's consistency check, skipped at load
        from cryptography.exceptions import InvalidSignature
        try:
            key.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise ConfigError(f"the resource principal's key ({PRIVATE_PEM}) is not a consistent RSA key",
                              code="storage_auth_failed") from None
        credentials.verified = True
    headers["authorization"] = (f'Signature algorithm="rsa-sha256",headers="{" ".join(names)}",'
                                f'keyId="ST${credentials.token}",signature="{base64.b64encode(signature).decode()}",'
                                'version="1"')
    return headers


_principals: dict = {}
_principals_lock = threading.Lock()


def shared(env: Mapping[str, str] | None = None) -> ResourcePrincipal:
    """The process's resource principal for the environment's variables (one per set of values, so that every
    store shares one reading of the files)."""
    env = os.environ if env is None else env
    key = tuple(env.get(name) for name in (VERSION, RPST, PRIVATE_PEM, PASSPHRASE, REGION))
    with _principals_lock:
        principal = _principals.get(key)
        if principal is None:
            principal = _principals[key] = ResourcePrincipal(env)
        return principal
