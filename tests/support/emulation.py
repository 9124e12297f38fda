"""The aarch64 layer run under emulation on an x86_64 machine, compared with the x86_64 layer.

    python tests/support/emulation.py prepare   # qemu-aarch64 (Debian trixie's qemu-user, 10.x) + an arm64 root
    python tests/support/emulation.py smoke     # the demo models on both layers: raw outputs compared; the fdk too

`prepare` follows the recipe in shared/reference/aarch64-emulation.md and leaves the machine's own
apt setup untouched: trixie's qemu-user is downloaded through a private source list and lists
folder, unpacked with dpkg -x; the arm64 root is Debian bookworm (Python 3.11, as the run image)
made by `debootstrap --foreign` and unpacked with dpkg -x. Bookworm's own qemu (7.2) segfaults
importing onnxruntime >= 1.28 for aarch64; trixie's 10.x runs it. binfmt_misc is not used: aarch64
programs are started through the emulator explicitly.

Both need the layers: python layers/build.py (the smoke test uses layers/build/<arch>/python).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ROOT / "layers" / "build"
WORK = LAYERS / "emulation"
QEMU_PACKAGE = "qemu-user"           # in trixie it holds the static emulators
ROOT_SUITE = "bookworm"              # Python 3.11, as the Fn run image
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# A DICOM segmentation and two classifiers on a PNG: what `onnxfn demo` runs.
CASES = [("digits-cnn", "digit-7.png", "image/png"), ("digits-sklearn", "digit-7.png", "image/png"),
         ("lesion-unet", "phantom.dcm", "application/dicom")]
TOLERANCE = 1e-4  # largest absolute difference allowed between the architectures' raw outputs


class EmulationError(Exception):
    pass


def qemu(work: Path = WORK) -> Path:
    return work / "qemu" / "usr" / "bin" / "qemu-aarch64"


def arm_root(work: Path = WORK) -> Path:
    return work / "arm64-root"


def arm_python(work: Path = WORK) -> Path:
    return arm_root(work) / "usr" / "bin" / "python3.11"


def ready(work: Path = WORK, layers: Path = LAYERS) -> str | None:
    """None when the emulator, the arm64 root and both layers exist; else what is missing."""
    for path, how in ((qemu(work), "python tests/support/emulation.py prepare"),
                      (arm_python(work), "python tests/support/emulation.py prepare"),
                      (layers / "aarch64" / "python", "python layers/build.py"),
                      (layers / "x86_64" / "python", "python layers/build.py")):
        if not path.exists():
            return f"{path} is missing: run {how}"
    return None


# -- prepare -----------------------------------------------------------------------------------------

def mirror(sources: list[Path] | None = None) -> str:
    """The Debian mirror of the machine's bookworm entry in its apt sources."""
    if sources is None:
        sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    texts = []
    for path in sources:
        if path.is_file() and path.suffix in (".list", ".sources", ""):
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):  # deb822
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "bookworm" in suites.group(1).split() and "security" not in uris.group(1):
                return uris.group(1).rstrip("/")
        for line in text.splitlines():  # one-line style
            m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if m and "security" not in m.group(1):
                return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if result.returncode != 0:
        raise EmulationError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    return result


def prepare_qemu(work: Path, source: str) -> Path:
    """trixie's qemu-user, unpacked: the static qemu-aarch64."""
    if qemu(work).exists():
        return qemu(work)
    apt = work / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    listing = apt / "trixie.list"
    listing.write_text(f"deb [signed-by={KEYRING}] {source} trixie main\n")
    options = ["-o", f"Dir::Etc::SourceList={listing}", "-o", "Dir::Etc::SourceParts=/dev/null",
               "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
               "-o", "APT::Architecture=amd64", "-o", "APT::Architectures::=amd64"]
    _run(["apt-get", *options, "update"])
    downloads = work / "debs"
    downloads.mkdir(exist_ok=True)
    _run(["apt-get", *options, "download", QEMU_PACKAGE], cwd=downloads)
    debs = sorted(downloads.glob(f"{QEMU_PACKAGE}_*.deb"))
    if not debs:
        raise EmulationError(f"apt-get download {QEMU_PACKAGE} left no .deb in {downloads}")
    _run(["dpkg", "-x", str(debs[-1]), str(work / "qemu")])
    if not qemu(work).exists():
        raise EmulationError(f"{debs[-1].name} holds no usr/bin/qemu-aarch64")
    for other in qemu(work).parent.glob("qemu-*"):  # ~450 MB of other emulators; only aarch64 is used
        if other.name != "qemu-aarch64":
            other.unlink()
    shutil.rmtree(downloads)
    return qemu(work)


def prepare_root(work: Path, source: str) -> Path:
    """An arm64 Debian bookworm with python3.11 (and libgomp1), unpacked without running anything in it."""
    root = arm_root(work)
    if arm_python(work).exists():
        return root
    if shutil.which("debootstrap") is None:
        raise EmulationError("debootstrap is not installed: apt-get install debootstrap")
    shutil.rmtree(root, ignore_errors=True)
    _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3,libgomp1",
          ROOT_SUITE, str(root), source])
    for deb in sorted((root / "var" / "cache" / "apt" / "archives").glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(root)])
    if not arm_python(work).exists():
        raise EmulationError(f"{arm_python(work)} missing after unpacking the arm64 root")
    return root


def prepare(work: Path = WORK) -> dict[str, float]:
    """Emulator and root; seconds each took."""
    work.mkdir(parents=True, exist_ok=True)
    source = mirror()
    took = {}
    started = time.perf_counter()
    prepare_qemu(work, source)
    took["qemu"] = time.perf_counter() - started
    started = time.perf_counter()
    prepare_root(work, source)
    took["root"] = time.perf_counter() - started
    version = _run([str(qemu(work)), "--version"]).stdout.splitlines()[0]
    python = _run(arm_command(work, ["-c", "import platform, sys; print(platform.machine(), sys.version.split()[0])"]),
                  env=arm_env(work, None)).stdout.strip()
    print(f"{version}; arm64 root {arm_root(work)}: {python}")
    return took


def layers_build():
    """layers/build.py as a module (its clean Python and environment)."""
    import importlib.util
    if "onnxfn_layers_build" not in sys.modules:
        spec = importlib.util.spec_from_file_location("onnxfn_layers_build", ROOT / "layers" / "build.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["onnxfn_layers_build"]


# -- run ---------------------------------------------------------------------------------------------

def arm_command(work: Path, args: list[str]) -> list[str]:
    """Python 3.11 of the arm64 root, under qemu, without site (no packages but PYTHONPATH's)."""
    return [str(qemu(work)), "-L", str(arm_root(work)), str(arm_python(work)), "-S", *args]


def arm_env(work: Path, layer: Path | None, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_")) and k != "VIRTUAL_ENV"}
    env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    if layer is not None:
        env["PYTHONPATH"] = f"{layer}{os.pathsep}{ROOT / 'shared'}"
    return env


# Runs the onnxfn core in-process on each case; writes the raw tensors (.npz) and the answers (.json).
CORE = r'''
import json, sys, time
from dataclasses import replace
from pathlib import Path
import numpy as np
started = time.perf_counter()
from onnxfn.codecs import payload
from onnxfn.tasks import preprocess
from onnxfn.service import Service
from onnxfn.settings import Settings
root, out, cases = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
arrays, answers = {}, {"import_s": time.perf_counter() - started}
for bundle, sample, ctype in cases:
    settings = replace(Settings.from_env(), model_uri=str(root / "models" / bundle))
    service = Service(settings)
    data = (root / "samples" / sample).read_bytes()
    t = time.perf_counter()
    answer = service.predict(data, ctype).body
    first = time.perf_counter() - t
    model, _ = service.model()
    image = payload.decode_image(payload.classify(data, ctype, settings.max_body_bytes), settings.max_pixels)
    spec = model.manifest.image_input
    feed, _ = preprocess.prepare(image, spec)
    arrays[f"{bundle}/input:{spec.name}"] = feed
    for name, value in model.run({spec.name: feed}).items():
        arrays[f"{bundle}/output:{name}"] = np.asarray(value)
    answer.pop("timings_ms", None)
    answers[bundle] = {**answer, "first_call_s": round(first, 3)}
np.savez(out.with_suffix(".npz"), **arrays)
out.with_suffix(".json").write_text(json.dumps(answers, indent=1))
'''


def run_core(command: list[str], env: dict[str, str], out: Path, timeout: float = 900) -> tuple[dict, dict, float]:
    """(answers, arrays, seconds) of the CORE script run by `command` (a Python)."""
    import numpy as np
    started = time.perf_counter()
    result = subprocess.run([*command, "-c", CORE, str(ROOT), str(out), json.dumps(CASES)], env=env,
                            cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise EmulationError(f"the core failed ({result.returncode}) under {command[0]}:\n{result.stdout[-4000:]}")
    with np.load(out.with_suffix(".npz")) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(out.with_suffix(".json").read_text()), arrays, took


def compare(x86: dict, arm: dict) -> dict[str, float]:
    """Max absolute difference per tensor (inputs and outputs)."""
    import numpy as np
    if set(x86) != set(arm):
        raise EmulationError(f"the architectures produced different tensors: {sorted(set(x86) ^ set(arm))}")
    out = {}
    for key in sorted(x86):
        a, b = x86[key], arm[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise EmulationError(f"{key}: x86_64 {a.dtype}{list(a.shape)} vs aarch64 {b.dtype}{list(b.shape)}")
        out[key] = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    return out


def fdk_call(work: Path, layer: Path, timeout: float = 600) -> tuple[dict, float]:
    """The function under the real fdk in the arm64 root (started as /python/bin/fdk would be, through the
    layer's bin/fdk), called over its unix socket by the x86_64 agent: a digit PNG as a direct invocation."""
    sys.path.insert(0, str(ROOT / "shared"))
    from onnxfn.tools.dev.agent import Function
    env = {**arm_env(work, None, PYTHONPATH=f"{ROOT}{os.pathsep}{layer}"),
           "MODEL_URI": str(ROOT / "models" / "digits-cnn")}
    function = Function(timeout=timeout, env=env, inherit_env=False,
                        command=arm_command(work, [str(layer / "bin" / "fdk")]))
    started = time.perf_counter()
    try:
        function.start(wait=timeout)
    except RuntimeError as e:
        raise EmulationError(f"the emulated fdk: {e}") from None
    with function as fn:
        try:
            reply = fn.call((ROOT / "samples" / "digit-7.png").read_bytes(), "image/png", deadline=timeout)
        except (OSError, http.client.HTTPException) as e:
            raise EmulationError(f"calling the emulated fdk failed: {e}\n{fn.logs()[-3000:]}") from None
    if reply.status != 200:
        raise EmulationError(f"the emulated fdk answered {reply.status}: {reply.body[:500]!r}")
    return reply.json(), time.perf_counter() - started


def smoke(work: Path = WORK, layers: Path = LAYERS, with_fdk: bool = True) -> dict:
    """The demo cases through the core on both layers; raises EmulationError beyond TOLERANCE."""
    missing = ready(work, layers)
    if missing:
        raise EmulationError(missing)
    build = layers_build()
    scratch = work / "runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    x86_layer, arm_layer = layers / "x86_64" / "python", layers / "aarch64" / "python"
    x86_python = build.clean_python(layers / "clean-python")
    x86_answers, x86_arrays, x86_s = run_core([str(x86_python)], build.clean_env(x86_layer), scratch / "x86_64")
    arm_answers, arm_arrays, arm_s = run_core(arm_command(work, []), arm_env(work, arm_layer), scratch / "aarch64")
    diffs = compare(x86_arrays, arm_arrays)
    report = {"seconds": {"x86_64": round(x86_s, 1), "aarch64_emulated": round(arm_s, 1)},
              "import_s": {"x86_64": round(x86_answers["import_s"], 2),
                           "aarch64_emulated": round(arm_answers["import_s"], 2)},
              "max_abs_diff": diffs, "models": {}}
    problems = [f"{k}: {v:.3g} > {TOLERANCE}" for k, v in diffs.items() if v > TOLERANCE]
    for bundle, _, _ in CASES:
        a, b = x86_answers[bundle], arm_answers[bundle]
        if b["runtime"]["arch"] != "aarch64" or a["runtime"]["arch"] != "x86_64":
            problems.append(f"{bundle}: ran on {a['runtime']['arch']} and {b['runtime']['arch']}")
        same = a["result"] == b["result"]
        if not same and a["task"] == "classification" and a["result"]["label"] != b["result"]["label"]:
            problems.append(f"{bundle}: label {a['result']['label']} on x86_64, {b['result']['label']} on aarch64")
        if not same and a["task"] == "segmentation":
            pa = [c["pixels"] for c in a["result"]["classes"]]
            pb = [c["pixels"] for c in b["result"]["classes"]]
            if pa != pb:
                problems.append(f"{bundle}: mask pixels {pa} on x86_64, {pb} on aarch64")
        report["models"][bundle] = {
            "same_answer": same, "first_call_s": {"x86_64": a["first_call_s"], "aarch64_emulated": b["first_call_s"]},
            "answer_aarch64": ({k: b["result"][k] for k in ("label", "probability", "score") if k in b["result"]}
                               if a["task"] == "classification" else
                               [{k: c[k] for k in ("label", "pixels", "bbox")} for c in b["result"]["classes"]]),
            "max_abs_diff": max(v for k, v in diffs.items() if k.startswith(bundle + "/output:"))}
    if with_fdk:
        answer, took = fdk_call(work, arm_layer)
        report["fdk_aarch64"] = {"seconds": round(took, 1), "arch": answer.get("runtime", {}).get("arch"),
                                 "label": answer.get("result", {}).get("label"), "error": answer.get("error")}
        if answer.get("runtime", {}).get("arch") != "aarch64" or answer.get("result", {}).get("label") != "7":
            problems.append(f"the emulated fdk answered {json.dumps(answer)[:500]}")
    if problems:
        raise EmulationError("aarch64 and x86_64 disagree:\n  " + "\n  ".join(problems)
                             + "\n" + json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/support/emulation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("prepare", "smoke"))
    p.add_argument("--work", type=Path, default=WORK, help="emulator and arm64 root (default: layers/build/emulation)")
    p.add_argument("--layers", type=Path, default=LAYERS, help="layers folder (default: layers/build)")
    p.add_argument("--no-fdk", action="store_true", help="smoke: skip the call through the emulated fdk")
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.command == "prepare":
            took = prepare(args.work.resolve())
            print(json.dumps({k: round(v, 1) for k, v in took.items()}))
        else:
            print(json.dumps(smoke(args.work.resolve(), args.layers.resolve(), not args.no_fdk), indent=1))
    except EmulationError as e:
        print(f"emulation {args.command}: {e}", file=sys.stderr)
        return 1
    print(f"emulation {args.command}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
