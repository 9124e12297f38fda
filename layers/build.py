"""Builds the function's run-time dependency layer for each architecture from requirements.txt,
checks it, and optionally trims what the function never imports.

    python layers/build.py [--arch x86_64|aarch64|all] [--out layers/build] [--trim] [--check-only]

A layer is `<out>/<arch>/python`: `pip install --target` of requirements.txt for
manylinux_2_28_<arch>, CPython 3.11, wheels only (what the Fn build puts in /python). Checks:
every pin installed at exactly its version (an unpinned requirement silently resolves to the
newest release with a wheel for the tag asked for: onnxruntime 1.16.3 for manylinux2014);
every shared object an ELF for the right machine; scripts in bin/ started by the run image's
interpreter; size against the threshold below. `--trim` removes what the function never imports,
and proves the function still works by running the demo, on the layer of this machine's
architecture, in a Python that has no packages of its own. See layers/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements.txt"
DEFAULT_OUT = ROOT / "layers" / "build"
PYTHON_VERSION = "3.11"
# ELF e_machine of each architecture (System V ABI: EM_X86_64 = 62, EM_AARCH64 = 183).
MACHINES = {"x86_64": 62, "aarch64": 183}
MACHINE_NAMES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm", 62: "x86_64",
                 183: "aarch64", 243: "riscv"}
# The interpreter of the Fn Python 3.11 run image (Oracle Linux 8, python3.11 RPM): what pip in the
# Fn build image writes into /python/bin scripts, so /python/bin/fdk starts there.
RUN_IMAGE_PYTHON = "/usr/bin/python3.11"
# No image size limit is known for OCI Functions; above this (this project's threshold) the image
# pull that a cold start on a new host waits for is worth looking into.
WARN_BYTES = 500 * 2**20

# --trim: distributions the function never imports. fdk declares its own test and build tools as
# run-time dependencies; protobuf and flatbuffers serve only onnxruntime's tools, transformers and
# quantization subpackages (removed below). Their dependencies go too when nothing kept needs them.
TRIM_DISTRIBUTIONS = ("pytest", "pytest-asyncio", "cython", "pbr", "wheel", "setuptools",
                      "protobuf", "flatbuffers")
# Paths (globs relative to the layer) never imported at run time. __pycache__ of kept modules stays:
# the function's file system is read-only, so without them every cold start compiles the imports.
TRIM_PATHS = (
    "onnxruntime/tools", "onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/datasets",
    "bin/onnxruntime_test",
    "numpy/**/tests", "numpy/tests", "numpy/f2py", "bin/f2py", "numpy/_core/include", "numpy/_pyinstaller",
    "numpy/**/*.pyi",
    "pydicom/data/test_files", "pydicom/data/charset_files", "pydicom/**/tests",
    "PIL/**/*.pyi",
    # pydicom's decoder plugins: their tests and the Cython sources of the compiled extensions
    "pylibjpeg/tests", "pylibjpeg/tools/tests", "libjpeg/tests", "openjpeg/tests", "rle/tests",
    "libjpeg/*.pyx", "libjpeg/*.cpp", "openjpeg/*.pyx",
    "**/__pycache__/*.opt-1.pyc", "**/__pycache__/*.opt-2.pyc",
)
# botocore carries the models of ~450 AWS services; onnxfn only calls S3 (sts and sso/sso-oidc stay
# for credentials resolved through a profile). boto3/docs and botocore/docs are imported by the
# clients themselves: they stay.
BOTOCORE_SERVICES = ("s3", "sts", "sso", "sso-oidc")


class LayerError(Exception):
    pass


# -- ELF ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Elf:
    bits: int        # 32 or 64 (EI_CLASS)
    endian: str      # "little" or "big" (EI_DATA)
    machine: int     # e_machine

    @property
    def machine_name(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"e_machine {self.machine}")


def read_elf(path: Path) -> Elf | None:
    """The ELF identification of a file, or None when it is not an ELF file."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    endian = "little" if head[5] == 1 else "big"
    return Elf(32 if head[4] == 1 else 64, endian, int.from_bytes(head[18:20], endian))


SHARED_OBJECT = re.compile(r"\.so(\.[0-9][^/]*)?$")


def shared_objects(layer: Path) -> list[Path]:
    """Every file named *.so or *.so.N… in the layer (symbolic links are not followed)."""
    return sorted(p for p in layer.rglob("*") if SHARED_OBJECT.search(p.name) and p.is_file()
                  and not p.is_symlink())


def check_elf(layer: Path, arch: str) -> tuple[int, list[str]]:
    """(number of shared objects checked, problems): each must be a 64-bit little-endian ELF for `arch`."""
    want = MACHINES[arch]
    problems = []
    found = shared_objects(layer)
    for path in found:
        elf = read_elf(path)
        rel = path.relative_to(layer)
        if elf is None:
            problems.append(f"{rel}: not an ELF file")
        elif elf.machine != want or elf.bits != 64 or elf.endian != "little":
            problems.append(f"{rel}: ELF {elf.bits}-bit {elf.endian}-endian {elf.machine_name}, "
                            f"expected 64-bit little-endian {arch} (e_machine {want})")
    return len(found), problems


# -- requirements and distributions --------------------------------------------------------------------

def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: Path) -> dict[str, str]:
    """name -> version for each `name==version` line."""
    out = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*==\s*([0-9][A-Za-z0-9.+!_-]*)(\s*;.*)?", line)
        if not m:
            raise LayerError(f"{requirements}: {line!r} is not pinned as name==version")
        out[normalise(m.group(1))] = m.group(3)
    return out


@dataclass
class Distribution:
    name: str            # normalised
    version: str
    info: Path           # the .dist-info folder
    requires: list[str]  # normalised names of unconditional dependencies
    tags: list[str]      # wheel tags (WHEEL file)

    def files(self, layer: Path) -> list[Path]:
        record = self.info / "RECORD"
        if not record.exists():
            return []
        out = []
        for line in record.read_text().splitlines():
            rel = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line
            if rel.startswith("../") and "/bin/" in "/" + rel:
                out.append((layer / "bin" / rel.rsplit("/", 1)[-1]).resolve())  # scripts: pip --target's bin/
            elif rel:
                out.append((layer / rel).resolve())
        return out


def distributions(layer: Path) -> dict[str, Distribution]:
    out = {}
    for info in sorted(layer.glob("*.dist-info")):
        meta = (info / "METADATA").read_text(errors="replace")
        head = meta.split("\n\n", 1)[0]
        name = re.search(r"^Name:\s*(.+)$", head, re.M).group(1).strip()
        version = re.search(r"^Version:\s*(.+)$", head, re.M).group(1).strip()
        requires = []
        for value in re.findall(r"^Requires-Dist:\s*(.+)$", head, re.M):
            if "extra ==" in value:
                continue
            requires.append(normalise(re.match(r"[A-Za-z0-9._-]+", value).group(0)))
        wheel = info / "WHEEL"
        tags = re.findall(r"^Tag:\s*(.+)$", wheel.read_text(), re.M) if wheel.exists() else []
        out[normalise(name)] = Distribution(normalise(name), version, info, requires, tags)
    return out


def check_pins(layer: Path, wanted: dict[str, str]) -> list[str]:
    have = distributions(layer)
    problems = []
    for name, version in wanted.items():
        if name not in have:
            problems.append(f"{name}=={version} is pinned but not installed")
        elif have[name].version != version:
            problems.append(f"{name} {have[name].version} installed, {version} pinned: pip resolved another "
                            f"release (no wheel of {version} for this platform tag?)")
    return problems


def platform_wheels(layer: Path) -> dict[str, str]:
    """name version -> platform tags, for the distributions that are not pure Python."""
    out = {}
    for d in distributions(layer).values():
        platforms = sorted({t.rsplit("-", 1)[-1] for t in d.tags} - {"any"})
        if platforms:
            out[f"{d.name} {d.version}"] = ".".join(platforms)
    return out


# -- build -------------------------------------------------------------------------------------------

def pip_command(arch: str, target: Path, requirements: Path, python: str = sys.executable) -> list[str]:
    """pip for the run image's platform: wheels tagged manylinux_2_28 or older (manylinux2014 = 2_17, which
    some packages ship alone, e.g. cffi), never newer than the run image's glibc 2.28."""
    return [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
            "--target", str(target), "--only-binary=:all:", "--platform", f"manylinux_2_28_{arch}",
            "--platform", f"manylinux2014_{arch}",
            "--python-version", PYTHON_VERSION, "--implementation", "cp", "-r", str(requirements)]


def install(arch: str, out: Path, requirements: Path) -> Path:
    """A fresh layer at out/<arch>/python (built aside, then swapped in)."""
    layer = out / arch / "python"
    fresh = out / arch / "python.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(pip_command(arch, fresh, requirements), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        lines = [ln for ln in result.stdout.splitlines() if not ln.startswith("WARNING: Location")]
        raise LayerError(f"pip install for {arch} failed ({result.returncode}):\n" + "\n".join(lines[-30:]))
    shutil.rmtree(layer, ignore_errors=True)
    fresh.rename(layer)
    return layer


def fix_scripts(layer: Path, interpreter: str = RUN_IMAGE_PYTHON) -> list[str]:
    """pip writes the BUILDING interpreter into bin/* shebangs; point them at the run image's."""
    fixed = []
    for script in sorted((layer / "bin").glob("*")):
        if not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
            first, rest = data.split(b"\n", 1)
            if first != b"#!" + interpreter.encode():
                script.write_bytes(b"#!" + interpreter.encode() + b"\n" + rest)
                fixed.append(script.name)
    return fixed


def open_permissions(layer: Path) -> None:
    """Readable by all (the function runs as user fn, uid 1000); folders and scripts traversable."""
    for path in [layer, *layer.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        wanted = mode | 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0)
        if wanted != mode:
            path.chmod(wanted)


def _other_python() -> str | None:
    """Why nothing can be byte-compiled here (a .pyc is for one Python version), or None."""
    if sys.version_info[:2] != tuple(int(v) for v in PYTHON_VERSION.split(".")):
        return f"this is Python {platform.python_version()}, the image runs {PYTHON_VERSION}"
    return None


def _compileall(what: Path | str, *args: str) -> None:
    """`python -m compileall -q -f ARGS`; LayerError with its output when it fails."""
    result = subprocess.run([sys.executable, "-m", "compileall", "-q", "-f", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise LayerError(f"byte-compiling {what} failed:\n{result.stdout[-3000:]}")


def compile_layer(layer: Path) -> str:
    """Byte-compile the layer as unchecked-hash .pyc: valid whatever the files' times become on the way
    into the image. The function's file system is read-only, so a module without a valid .pyc is compiled
    on every cold start (measured here: importing the layer's packages 0.7-0.9 s with .pyc, 2.9 s without)."""
    if (why := _other_python()) is not None:
        return f"not byte-compiled: {why}"
    _compileall(layer, "-j", "0", "--invalidation-mode", "unchecked-hash", str(layer))
    return "byte-compiled (unchecked-hash .pyc)"


#: the function's own code, as the image holds it (layers/Dockerfile's COPY lines): source folder -> image folder
FUNCTION_SOURCES = {"functions": "/function/functions", "shared/onnxfn": "/function/shared/onnxfn"}


def compile_function(out: Path, root: Path = ROOT) -> str:
    """The function's own .pyc, for the image: `out/pyc/<folder>/**/__pycache__` for each of `FUNCTION_SOURCES`
    (the tools left out), compiled as checked-hash .pyc with the image's paths. The image's file system is
    read-only, so without them every cold start compiled onnxfn (57-60 ms, docs/benchmarks/handwritten.md).
    Checked-hash: Python compares each .pyc with its source's hash, so sources changed after this build are
    compiled again rather than run stale. Only the __pycache__ folders are kept: the sources come from the repo."""
    if (why := _other_python()) is not None:
        return f"function not byte-compiled: {why}"
    target = out / "pyc"
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        for folder, image_path in FUNCTION_SOURCES.items():
            copy = Path(tmp) / folder
            shutil.copytree(root / folder, copy, ignore=shutil.ignore_patterns("__pycache__", "tools", "*.pyc"))
            _compileall(folder, "--invalidation-mode", "checked-hash", "-s", str(copy), "-p", image_path, str(copy))
            for cache in copy.rglob("__pycache__"):
                shutil.copytree(cache, target / folder / cache.relative_to(copy))
    count = sum(1 for _ in target.rglob("*.pyc"))
    return f"the function's own code byte-compiled: {count} checked-hash .pyc in {target}"


def check_scripts(layer: Path, interpreter: str = RUN_IMAGE_PYTHON) -> list[str]:
    fdk = layer / "bin" / "fdk"
    if not fdk.exists():
        return ["bin/fdk is missing: the function's entrypoint (/python/bin/fdk) would not exist"]
    first = fdk.read_bytes().split(b"\n", 1)[0]
    if first != b"#!" + interpreter.encode():
        return [f"bin/fdk starts with {first.decode(errors='replace')!r}, not #!{interpreter}: "
                "it would not start in the run image"]
    return []


# -- size --------------------------------------------------------------------------------------------

def file_size(path: Path) -> int:
    return path.lstat().st_size


def sizes(layer: Path) -> tuple[int, dict[str, int]]:
    """(total bytes, bytes per distribution): files are counted by the RECORD that lists them;
    files no RECORD lists (e.g. compiled later) count as '(unrecorded)'."""
    owner: dict[Path, str] = {}
    for d in distributions(layer).values():
        for path in d.files(layer):
            owner[path] = f"{d.name} {d.version}"
        for path in d.info.rglob("*"):
            owner[path.resolve()] = f"{d.name} {d.version}"
    per: dict[str, int] = {}
    total = 0
    for path in layer.rglob("*"):
        if path.is_file() or path.is_symlink():
            size = file_size(path)
            total += size
            key = owner.get(path.resolve(), "(unrecorded)")
            per[key] = per.get(key, 0) + size
    return total, dict(sorted(per.items(), key=lambda kv: -kv[1]))


def mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def size_report(arch: str, layer: Path, top: int = 10) -> tuple[int, list[str]]:
    total, per = sizes(layer)
    lines = [f"{arch}: {mb(total)} unpacked in {sum(1 for p in layer.rglob('*') if p.is_file())} files; largest:"]
    for name, size in list(per.items())[:top]:
        lines.append(f"    {mb(size):>10}  {name}")
    if total > WARN_BYTES:
        lines.append(f"  WARNING: over {mb(WARN_BYTES)}: the image pull that a cold start on a new host waits "
                     "for grows with it; try --trim")
    lines.append(f"  limits: warned above {mb(WARN_BYTES)} (this project's threshold); no image size limit is known "
                 "for OCI Functions (the layer ships inside the function image, outside the memory and /tmp "
                 "quotas); AWS Lambda, for comparison, takes 250 MB unzipped for a zip package with its layers, "
                 "10 GB for a container image")
    return total, lines


# -- trim --------------------------------------------------------------------------------------------

def trim_set(dists: dict[str, Distribution], seeds=TRIM_DISTRIBUTIONS) -> list[str]:
    """The seeds present, plus every distribution all of whose requirers are removed."""
    removed = {s for s in seeds if s in dists}
    changed = True
    while changed:
        changed = False
        for name in dists:
            if name in removed:
                continue
            requirers = [d for d in dists.values() if name in d.requires]
            if requirers and all(r.name in removed for r in requirers):
                removed.add(name)
                changed = True
    return sorted(removed)


def _remove(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        size = file_size(path)
        path.unlink()
        return size
    if path.is_dir():
        size = sum(file_size(p) for p in path.rglob("*") if p.is_file() or p.is_symlink())
        shutil.rmtree(path)
        return size
    return 0


def _prune_empty(layer: Path) -> None:
    for folder in sorted((p for p in layer.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


def trim(layer: Path) -> dict[str, int]:
    """Remove what the function never imports; what -> bytes removed."""
    removed: dict[str, int] = {}
    dists = distributions(layer)
    for name in trim_set(dists):
        d = dists[name]
        total = 0
        for path in d.files(layer):
            if layer.resolve() in path.parents and (path.exists() or path.is_symlink()):
                total += _remove(path)
        total += _remove(d.info)
        removed[f"{d.name} {d.version}"] = total
    for pattern in TRIM_PATHS:
        total = 0
        for path in sorted(layer.glob(pattern), key=lambda p: -len(p.parts)):
            if path.exists() or path.is_symlink():
                total += _remove(path)
        if total:
            removed[pattern] = total
    data = layer / "botocore" / "data"
    if data.is_dir():
        total = sum(_remove(p) for p in data.iterdir() if p.is_dir() and p.name not in BOTOCORE_SERVICES)
        removed[f"botocore/data except {', '.join(BOTOCORE_SERVICES)}"] = total
    _prune_empty(layer)
    return removed


# -- proof: the demo on a layer, in a Python with no packages of its own ------------------------------------

def clean_python(folder: Path) -> Path:
    """A venv without pip: the standard library and an empty site-packages, nothing else."""
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(folder)], check=True)
    return python


def clean_env(layer: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.update(PYTHONPATH=f"{layer}{os.pathsep}{ROOT / 'shared'}", PYTHONNOUSERSITE="1",
               PYTHONDONTWRITEBYTECODE="1")  # never write into the layer that ships
    return env


# Imports what the function imports and tells where each came from; then an S3 round trip through
# onnxfn's store against a stand-in server on localhost (loads botocore's S3 model and endpoints).
PROBE = r'''
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import fdk, httptools, numpy, onnxruntime, PIL.Image, pydicom, boto3, botocore
import pylibjpeg, libjpeg, openjpeg, rle
from pylibjpeg.utils import get_pixel_data_decoders
# the plugins find each other through their entry points (dist-info): pydicom then sees their syntaxes
decoders = get_pixel_data_decoders(version=2)
assert len(decoders) == 12 and all(decoders.values()), sorted(decoders)
arr = numpy.arange(64 * 48, dtype=numpy.uint16).reshape(64, 48) % 4096
assert (openjpeg.decode(openjpeg.encode(arr, bits_stored=12)) == arr).all()  # the compiled library runs
from fdk.scripts import fdk as fdk_script
body = b"onnxfn"
class S3(BaseHTTPRequestHandler):
    def _reply(self, data=b""):
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) if self.command == "PUT" else len(body)))
        self.send_header("ETag", '"e"')
        self.send_header("x-amz-meta-k", "v")
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
    def do_HEAD(self):
        self._reply()
    def do_GET(self):
        self._reply()
    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply(b"")
    def log_message(self, *a):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), S3)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ.update(AWS_ACCESS_KEY_ID="probe", AWS_SECRET_ACCESS_KEY="probe")
from onnxfn.storage import s3
s = s3.S3Store("s3://b/p/", "b", "p/", f"http://127.0.0.1:{server.server_port}", "us-phoenix-1")
stat = s.stat("x")
data, version = s.read("x", 1024)
etag = s.put("y", b"result", "application/json", {"k": "v"})
server.shutdown()
assert (stat.size, data, etag) == (len(body), body, '"e"'), (stat, data, etag)
mods = {m: sys.modules[m].__file__ for m in ("fdk", "httptools", "numpy", "onnxruntime", "PIL", "pydicom",
                                               "boto3", "botocore", "pylibjpeg", "libjpeg", "openjpeg", "rle")}
print(json.dumps({"files": mods, "onnxruntime": onnxruntime.__version__, "sys_path": sys.path}))
'''


def _demo_answers(text: str) -> dict[str, dict]:
    answers, name, chunk = {}, None, []
    for line in text.splitlines():
        if line.startswith("== "):
            if name:
                answers[name] = json.loads("\n".join(chunk))
            name, chunk = line[3:].split(" <- ")[0], []
        else:
            chunk.append(line)
    if name:
        answers[name] = json.loads("\n".join(chunk))
    return answers


def comparable(answer: dict) -> dict:
    """An answer without what changes from run to run (timings)."""
    return {k: v for k, v in answer.items() if k not in ("timings_ms",)}


def prove(layer: Path, work: Path) -> dict:
    """Run the probe and `onnxfn demo` on `layer` in a clean Python; the demo's answers, by bundle."""
    python = clean_python(work / "clean-python")
    env = clean_env(layer)
    bare = subprocess.run([str(python), "-c", "import numpy"], env={**env, "PYTHONPATH": ""}, cwd=work,
                          capture_output=True, text=True)
    if bare.returncode == 0:
        raise LayerError(f"{python} imports numpy without the layer: it is not a clean Python")
    probe = subprocess.run([str(python), "-c", PROBE], env=env, cwd=work, capture_output=True, text=True,
                           timeout=300)
    if probe.returncode != 0:
        raise LayerError(f"the import/S3 probe failed on {layer}:\n{probe.stderr[-3000:]}")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    outside = {m: f for m, f in found["files"].items() if not f.startswith(str(layer))}
    if outside:
        raise LayerError(f"modules imported from outside the layer: {outside}")
    demo = subprocess.run([str(python), "-m", "onnxfn.tools.cli", "demo"], env=env, cwd=work, capture_output=True,
                          text=True, timeout=600)
    if demo.returncode != 0:
        raise LayerError(f"`onnxfn demo` failed on {layer} ({demo.returncode}):\n{demo.stderr[-3000:]}")
    answers = _demo_answers(demo.stdout)
    bad = {k: v for k, v in answers.items() if "error" in v or "result" not in v}
    if len(answers) < 3 or bad:
        raise LayerError(f"`onnxfn demo` on {layer} answered badly: {bad or demo.stdout[-2000:]}")
    return answers


# -- command -----------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python layers/build.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=(*MACHINES, "all"), default="all", help="architecture (default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: layers/build)")
    p.add_argument("--requirements", type=Path, default=REQUIREMENTS, help=argparse.SUPPRESS)
    p.add_argument("--trim", action="store_true", help="remove what the function never imports, proven by the demo")
    p.add_argument("--check-only", action="store_true", help="check existing layers; install nothing")
    return p


def arches(choice: str) -> list[str]:
    return list(MACHINES) if choice == "all" else [choice]


def check(arch: str, layer: Path, wanted: dict[str, str]) -> list[str]:
    """Print the checks of one layer; the problems found."""
    pin_problems = check_pins(layer, wanted)
    count, elf_problems = check_elf(layer, arch)
    problems = pin_problems + elf_problems + check_scripts(layer)
    print(f"{arch}: pins {'OK' if not pin_problems else 'MISMATCH'} "
          f"({', '.join(f'{n}=={v}' for n, v in wanted.items())})")
    print(f"{arch}: {count} shared objects checked, {len(elf_problems)} not {arch} ELF")
    for name, tags in platform_wheels(layer).items():
        print(f"    {name}: {tags}")
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return problems


def build_one(arch: str, out: Path, requirements: Path, wanted: dict[str, str], *, do_trim: bool,
              check_only: bool) -> dict:
    """Build (or only check) one architecture's layer; the facts for its report.json."""
    layer = out / arch / "python"
    if check_only:
        if not layer.is_dir():
            raise LayerError(f"no {arch} layer at {layer}: build it first (python layers/build.py --arch {arch})")
    else:
        print(f"{arch}: pip install --target {layer} --platform manylinux_2_28_{arch} ...", flush=True)
        install(arch, out, requirements)
        fixed = fix_scripts(layer)
        if fixed:
            print(f"{arch}: bin/ shebangs set to #!{RUN_IMAGE_PYTHON}: {', '.join(fixed)}")
    problems = check(arch, layer, wanted)
    total, lines = size_report(arch, layer)
    print("\n".join(lines))
    facts = {"layer": str(layer), "bytes": total, "problems": problems}
    if problems or check_only:
        return facts
    proven = do_trim and arch == platform.machine()
    before = prove(layer, out) if proven else None
    removed = trim(layer) if do_trim else {}
    print(f"{arch}: {compile_layer(layer)}")
    open_permissions(layer)
    if not do_trim:
        return facts
    after_total, lines = size_report(arch, layer)
    print(f"{arch}: trimmed {mb(total - after_total)}: {mb(total)} -> {mb(after_total)}")
    for what, size in sorted(removed.items(), key=lambda kv: -kv[1]):
        print(f"    -{mb(size):>9}  {what}")
    print("\n".join(lines))
    facts.update(trimmed_bytes=after_total, removed=removed, proven_here=proven, problems=check(arch, layer, wanted))
    if proven:
        after = prove(layer, out)
        changed = [k for k in before if comparable(before[k]) != comparable(after.get(k, {}))]
        if changed:
            raise LayerError(f"the demo answers differently on the trimmed {arch} layer: {changed}")
        print(f"{arch}: trimmed layer proven: `onnxfn demo` in a clean Python gives the same answers as before "
              f"trimming ({', '.join(after)}); imports and an S3 round trip OK")
    else:
        print(f"{arch}: trimmed by the rules proven on {platform.machine()}; prove this layer under emulation: "
              "python tests/support/emulation.py smoke")
    return facts


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.trim and args.check_only:
        parser().error("--trim changes the layer: it cannot be combined with --check-only")
    out = args.out.resolve()
    try:
        wanted = pins(args.requirements)
        if not args.check_only:
            print(compile_function(out))
        failed = False
        for arch in arches(args.arch):
            facts = build_one(arch, out, args.requirements, wanted, do_trim=args.trim, check_only=args.check_only)
            (out / arch / "report.json").write_text(json.dumps(facts, indent=2))
            failed = failed or bool(facts["problems"])
        return 1 if failed else 0
    except LayerError as e:
        print(f"layers/build.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
