"""layers/build.py (ELF checks, pins, trimming rules, arguments), the Dockerfile's agreement with
func.yaml, and — marked slow, run only on request — the aarch64 layer under emulation."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.support import emulation

build = emulation.layers_build()
ROOT = Path(__file__).resolve().parents[2]


def elf(machine: int, bits: int = 64, endian: str = "little", e_type: int = 3) -> bytes:
    """The first 64 bytes of an ELF file: e_ident, e_type (3 = shared object), e_machine."""
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1 if endian == "little" else 2, 1, 0]) + bytes(8)
    return ident + e_type.to_bytes(2, endian) + machine.to_bytes(2, endian) + bytes(44)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def dist(layer: Path, name: str, version: str, requires=(), files=(), tag="py3-none-any") -> Path:
    info = layer / f"{name.replace('-', '_')}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    write(info / "METADATA", meta + "\nlong description\nRequires-Dist: not-a-header\n")
    write(info / "WHEEL", f"Wheel-Version: 1.0\nTag: {tag}\n")
    write(info / "RECORD", "".join(f"{f},sha256=x,1\n" for f in files) + f"{info.name}/RECORD,,\n")
    for f in files:
        if not f.startswith(".."):
            write(layer / f, "x = 1\n")
    return info


# -- ELF ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("machine, name", [(62, "x86_64"), (183, "aarch64")])
def test_read_elf_machine(tmp_path, machine, name):
    info = build.read_elf(write(tmp_path / "lib.so", elf(machine)))
    assert (info.bits, info.endian, info.machine, info.machine_name) == (64, "little", machine, name)


def test_read_elf_big_endian_and_32_bit(tmp_path):
    assert build.read_elf(write(tmp_path / "a.so", elf(21, endian="big"))) == build.Elf(64, "big", 21)
    assert build.read_elf(write(tmp_path / "b.so", elf(3, bits=32))) == build.Elf(32, "little", 3)


@pytest.mark.parametrize("data", [b"", b"\x7fEL", b"#!/bin/sh\n", b"\x7fELF\x03\x01" + bytes(20), b"INPUT(-lfoo)\n"])
def test_read_elf_refuses_what_is_not_elf(tmp_path, data):
    assert build.read_elf(write(tmp_path / "x.so", data)) is None


@pytest.mark.parametrize("name, matched", [
    ("libonnxruntime.so.1.32.0", True), ("_multiarray_umath.cpython-311-x86_64-linux-gnu.so", True),
    ("libz-0d61e2b6.so.1.3.1", True), ("libgomp.so", True), ("lib.so.1", True),
    ("notes.sol", False), ("x.soap", False), ("libfoo.so.txt", False), ("so", False), ("x.py", False)])
def test_shared_object_names(name, matched):
    assert bool(build.SHARED_OBJECT.search(name)) is matched


def test_check_elf_reports_every_mismatch(tmp_path):
    layer = tmp_path / "python"
    write(layer / "numpy" / "_core" / "_umath.cpython-311-x86_64-linux-gnu.so", elf(62))
    write(layer / "numpy.libs" / "libopenblas-1a2b.so.0.3", elf(62))
    write(layer / "PIL" / "_imaging.cpython-311-aarch64-linux-gnu.so", elf(183))
    write(layer / "pkg" / "lib32.so", elf(62, bits=32))
    write(layer / "pkg" / "libbig.so.2", elf(62, endian="big"))
    write(layer / "pkg" / "fake.so", "not an ELF")
    write(layer / "pkg" / "readme.txt", elf(183))              # not a shared object by name: not checked
    (layer / "pkg" / "link.so").symlink_to(layer / "PIL" / "_imaging.cpython-311-aarch64-linux-gnu.so")
    count, problems = build.check_elf(layer, "x86_64")
    assert count == 6
    assert len(problems) == 4
    text = "\n".join(problems)
    assert "PIL/_imaging.cpython-311-aarch64-linux-gnu.so: ELF 64-bit little-endian aarch64, expected 64-bit " \
           "little-endian x86_64 (e_machine 62)" in text
    assert "pkg/lib32.so: ELF 32-bit" in text and "pkg/libbig.so.2: ELF 64-bit big-endian" in text
    assert "pkg/fake.so: not an ELF file" in text


def test_check_elf_passes_a_clean_layer(tmp_path):
    write(tmp_path / "onnxruntime" / "capi" / "libonnxruntime.so.1.32.0", elf(183))
    assert build.check_elf(tmp_path, "aarch64") == (1, [])
    assert build.check_elf(tmp_path, "x86_64")[1] != []


# -- pins, distributions, trimming ---------------------------------------------------------------------

def test_pins_reads_name_eq_version(tmp_path):
    req = write(tmp_path / "r.txt", "# comment\nfdk==0.1.128\n\nOnnx_Runtime == 1.32.0  # x\nboto3[crt]==1.44.8\n")
    assert build.pins(req) == {"fdk": "0.1.128", "onnx-runtime": "1.32.0", "boto3": "1.44.8"}


@pytest.mark.parametrize("line", ["numpy>=2", "pillow", "onnxruntime==1.*  ; x"])
def test_pins_refuses_unpinned_lines(tmp_path, line):
    with pytest.raises(build.LayerError, match="not pinned as name==version"):
        build.pins(write(tmp_path / "r.txt", line + "\n"))


def test_repository_requirements_are_all_pinned():
    assert "onnxruntime" in build.pins(build.REQUIREMENTS)


def test_check_pins_names_the_fallback(tmp_path):
    dist(tmp_path, "onnxruntime", "1.20.1")
    dist(tmp_path, "numpy", "2.4.6")
    problems = build.check_pins(tmp_path, {"onnxruntime": "1.32.0", "numpy": "2.4.6", "fdk": "0.1.128"})
    assert problems == ["onnxruntime 1.20.1 installed, 1.32.0 pinned: pip resolved another release (no wheel "
                        "of 1.32.0 for this platform tag?)", "fdk==0.1.128 is pinned but not installed"]


def test_distributions_read_metadata_headers_only(tmp_path):
    dist(tmp_path, "fdk", "0.1.128", requires=["pytest>=7", "httptools (>=0.5)", "iso8601==0.1.12",
                                              "sphinx ; extra == 'docs'"], tag="py3-none-any")
    dist(tmp_path, "numpy", "2.4.6", tag="cp311-cp311-manylinux_2_28_aarch64")
    found = build.distributions(tmp_path)
    assert found["fdk"].requires == ["pytest", "httptools", "iso8601"]
    assert build.platform_wheels(tmp_path) == {"numpy 2.4.6": "manylinux_2_28_aarch64"}


def test_trim_set_follows_dependencies_nothing_kept_needs(tmp_path):
    dist(tmp_path, "fdk", "1", requires=["pytest", "httptools", "cython"])
    dist(tmp_path, "pytest", "1", requires=["pluggy", "packaging"])
    dist(tmp_path, "pluggy", "1")
    dist(tmp_path, "packaging", "1")
    dist(tmp_path, "onnxruntime", "1", requires=["packaging", "protobuf"])
    dist(tmp_path, "protobuf", "1")
    dist(tmp_path, "httptools", "1")
    dist(tmp_path, "cython", "1")
    assert build.trim_set(build.distributions(tmp_path)) == ["cython", "pluggy", "protobuf", "pytest"]


def test_trim_removes_distributions_paths_and_their_scripts(tmp_path):
    layer = tmp_path / "python"
    dist(layer, "pytest", "9", files=["pytest/__init__.py", "_pytest/main.py", "../../bin/pytest"])
    write(layer / "bin" / "pytest", "#!/usr/bin/python3.11\n")
    write(layer / "bin" / "fdk", "#!/usr/bin/python3.11\n")
    dist(layer, "numpy", "2", files=["numpy/__init__.py", "numpy/_core/tests/test_a.py"])
    write(layer / "numpy" / "_core" / "__pycache__" / "x.cpython-311.pyc", b"kept")
    write(layer / "onnxruntime" / "transformers" / "a.py", "")
    write(layer / "botocore" / "data" / "s3" / "2006-03-01" / "service-2.json.gz", b"s3")
    write(layer / "botocore" / "data" / "ec2" / "2016-11-15" / "service-2.json.gz", b"ec2")
    write(layer / "botocore" / "data" / "endpoints.json", "{}")
    removed = build.trim(layer)
    assert "pytest 9" in removed
    left = sorted(str(p.relative_to(layer)) for p in layer.rglob("*") if p.is_file())
    assert left == ["bin/fdk", "botocore/data/endpoints.json", "botocore/data/s3/2006-03-01/service-2.json.gz",
                    "numpy-2.dist-info/METADATA", "numpy-2.dist-info/RECORD", "numpy-2.dist-info/WHEEL",
                    "numpy/__init__.py", "numpy/_core/__pycache__/x.cpython-311.pyc"]


def test_fix_scripts_points_shebangs_at_the_run_image_python(tmp_path):
    write(tmp_path / "bin" / "fdk", "#!/home/builder/venv/bin/python3\nfrom fdk.scripts.fdk import main\n")
    write(tmp_path / "bin" / "tool.sh", "#!/bin/sh\necho\n")
    assert build.check_scripts(tmp_path) != []
    assert build.fix_scripts(tmp_path) == ["fdk"]
    assert (tmp_path / "bin" / "fdk").read_text() == "#!/usr/bin/python3.11\nfrom fdk.scripts.fdk import main\n"
    assert (tmp_path / "bin" / "tool.sh").read_text().startswith("#!/bin/sh")
    assert build.check_scripts(tmp_path) == []
    assert build.fix_scripts(tmp_path) == []


def test_sizes_count_files_by_distribution(tmp_path):
    dist(tmp_path, "numpy", "2", files=["numpy/__init__.py"])
    write(tmp_path / "stray.bin", bytes(1000))
    total, per = build.sizes(tmp_path)
    assert per["(unrecorded)"] == 1000 and total == sum(per.values())
    assert per["numpy 2"] == total - 1000


# -- arguments ---------------------------------------------------------------------------------------

def test_arguments_defaults():
    args = build.parser().parse_args([])
    assert (args.arch, args.out, args.trim, args.check_only) == ("all", build.DEFAULT_OUT, False, False)
    assert build.arches("all") == ["x86_64", "aarch64"] and build.arches("aarch64") == ["aarch64"]


@pytest.mark.parametrize("argv", [["--arch", "arm64"], ["--arch"], ["--bogus"], ["--trim", "--check-only"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build.main(argv)
    assert e.value.code == 2


def test_pip_command_asks_for_the_platform_wheels(tmp_path):
    cmd = build.pip_command("aarch64", tmp_path / "t", Path("requirements.txt"), python="python3")
    text = " ".join(cmd)
    assert cmd[:4] == ["python3", "-m", "pip", "install"]
    for part in (f"--target {tmp_path / 't'}", "--only-binary=:all:", "--platform manylinux_2_28_aarch64",
                 "--platform manylinux2014_aarch64",
                 "--python-version 3.11", "--implementation cp", "-r requirements.txt"):
        assert part in text


def fake_layer(out: Path, arch: str, machine: int, onnxruntime: str = "1.32.0") -> Path:
    layer = out / arch / "python"
    for name, version in build.pins(build.REQUIREMENTS).items():
        dist(layer, name, onnxruntime if name == "onnxruntime" else version)
    write(layer / "onnxruntime" / "capi" / "libonnxruntime.so.1.32.0", elf(machine))
    write(layer / "bin" / "fdk", "#!/usr/bin/python3.11\n")
    return layer


def test_check_only_passes_good_layers(tmp_path, capsys):
    fake_layer(tmp_path, "x86_64", 62)
    fake_layer(tmp_path, "aarch64", 183)
    assert build.main(["--check-only", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "aarch64: 1 shared objects checked, 0 not aarch64 ELF" in out
    assert (tmp_path / "aarch64" / "report.json").exists()


def test_check_only_fails_on_a_wrong_machine_or_version(tmp_path, capsys):
    fake_layer(tmp_path, "aarch64", 62, onnxruntime="1.20.1")
    assert build.main(["--check-only", "--arch", "aarch64", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "onnxruntime 1.20.1 installed, 1.32.0 pinned" in out
    assert "ELF 64-bit little-endian x86_64, expected 64-bit little-endian aarch64" in out


def test_check_only_without_a_layer_says_how_to_build_it(tmp_path, capsys):
    assert build.main(["--check-only", "--arch", "x86_64", "--out", str(tmp_path)]) == 1
    assert "build it first (python layers/build.py --arch x86_64)" in capsys.readouterr().err


# -- the image ---------------------------------------------------------------------------------------

def test_dockerfile_entrypoint_and_layers_agree_with_func_yaml_and_the_builder():
    dockerfile = (ROOT / "layers" / "Dockerfile").read_text()
    func_yaml = (ROOT / "func.yaml").read_text()
    entry = re.search(r"^ENTRYPOINT \[(.+)\]$", dockerfile, re.M).group(1)
    assert [s.strip().strip('"') for s in entry.split(",")] == \
        re.search(r"^entrypoint:\s*(.+)$", func_yaml, re.M).group(1).split()
    assert re.search(r"^run_image:\s*(\S+)", func_yaml, re.M).group(1) in dockerfile
    for docker_arch, arch in (("amd64", "x86_64"), ("arm64", "aarch64")):
        assert f"FROM scratch AS layer-{docker_arch}\nCOPY layers/build/{arch}/python /python" in dockerfile
        assert f"!layers/build/{arch}/python/" in (ROOT / "layers" / "Dockerfile.dockerignore").read_text()
    for folder, image_path in build.FUNCTION_SOURCES.items():  # the sources and then their .pyc, at one path
        assert f"COPY {folder}/ {image_path}/\n" in dockerfile
        assert f"COPY layers/build/pyc/{folder}/ {image_path}/\n" in dockerfile
    assert "!layers/build/pyc/" in (ROOT / "layers" / "Dockerfile.dockerignore").read_text()


def test_the_function_ships_checked_hash_pyc_with_the_image_paths(tmp_path):
    import importlib.util
    import marshal
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the image runs Python 3.11")
    print(build.compile_function(tmp_path))
    pycs = sorted((tmp_path / "pyc").rglob("*.pyc"))
    names = {p.relative_to(tmp_path / "pyc").as_posix() for p in pycs}
    assert "shared/onnxfn/__pycache__/service.cpython-311.pyc" in names
    assert "functions/__pycache__/func.cpython-311.pyc" in names
    assert not any("/tools/" in n for n in names) and not any(p.suffix == ".py" for p in (tmp_path / "pyc").rglob("*"))
    data = (tmp_path / "pyc" / "shared/onnxfn/__pycache__/service.cpython-311.pyc").read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(data[4:8], "little") == 0b11  # checked hash
    assert marshal.loads(data[16:]).co_filename == "/function/shared/onnxfn/service.py"


# -- emulation (helpers fast; the run itself slow) -------------------------------------------------------

def test_mirror_is_read_from_the_bookworm_entry(tmp_path):
    deb822 = write(tmp_path / "debian.sources", "Types: deb\nURIs: http://mirror.example/debian-security\n"
                   "Suites: bookworm-security\n\nTypes: deb\nURIs: http://mirror.example/debian/\n"
                   "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert emulation.mirror([deb822]) == "http://mirror.example/debian"
    one_line = write(tmp_path / "sources.list", "deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert emulation.mirror([one_line]) == "http://other.example/debian"
    assert emulation.mirror([tmp_path / "absent.list"]) == emulation.DEFAULT_MIRROR


def test_ready_names_what_is_missing(tmp_path):
    assert "python tests/support/emulation.py prepare" in emulation.ready(tmp_path / "emu", tmp_path / "layers")


@pytest.mark.slow
def test_aarch64_layer_matches_x86_64_under_emulation():
    """The demo models through the core on the aarch64 layer (qemu 10) and on the x86_64 layer: the same
    answers, raw outputs within TOLERANCE; a call through the emulated fdk. Needs
    `python layers/build.py` and `python tests/support/emulation.py prepare` (downloads); skipped without them."""
    missing = emulation.ready()
    if missing:
        pytest.skip(missing)
    report = emulation.smoke()
    assert all(v <= emulation.TOLERANCE for v in report["max_abs_diff"].values()), report
    assert report["fdk_aarch64"]["label"] == "7"
