"""session.py: the default session options, chiefly intra-op spinning by threads and CPU quota, and a bench
tuning's settings winning over the defaults."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxfn.bundles.manifest import Artifact, Requirement, Tuning
from onnxfn.runtime import cpu
from onnxfn.runtime import session as sessions
from tests.support.cgroups import JOIN

ROOT = Path(__file__).resolve().parents[3]
SPIN, SPIN_US = "session.intra_op.allow_spinning", "session.intra_op.spin_duration_us"


def entry(options, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except Exception:  # onnxruntime raises when the key was never set
        return None


@pytest.mark.parametrize("threads, spins", [(1, False), (2, True), (4, True)])
def test_spinning_with_several_threads(threads, spins):
    assert sessions.spinning(threads) is spins


@pytest.mark.parametrize("quota", [None, 2.0, 1.5])
def test_options_spin_with_two_threads_under_any_quota_and_bound_the_spin(monkeypatch, quota):
    monkeypatch.setattr(cpu, "quota", lambda *a, **k: quota)
    options = sessions.options(2)
    assert entry(options, SPIN) == "1" and entry(options, "session.inter_op.allow_spinning") == "0"
    assert entry(options, SPIN_US) == str(sessions.SPIN_DURATION_US)
    assert entry(sessions.options(1), SPIN) == "0" and entry(sessions.options(1), SPIN_US) is None


@pytest.mark.parametrize("allow, quota", [(False, None), (True, 1.5)])
def test_a_bench_tuning_overrides_the_spinning_default(monkeypatch, allow, quota):
    monkeypatch.setattr(cpu, "quota", lambda *a, **k: quota)
    tuning = Tuning(requires=Requirement(cpu.arch()), allow_spinning=allow)
    assert entry(sessions.options(2, tuning=tuning), SPIN) == ("1" if allow else "0")


@pytest.mark.parametrize("quota, spins", [(100000, ["1", "0"]), (150000, ["2", "1"]), (200000, ["2", "1"])])
def test_a_process_in_a_real_child_cgroup_spins_when_its_quota_gives_it_two_threads(child_cgroup, quota, spins):
    if cpu.affinity() < 2:
        pytest.skip("needs two CPUs")
    (child_cgroup / "cpu.cfs_period_us").write_text("100000")
    (child_cgroup / "cpu.cfs_quota_us").write_text(str(quota))
    code = (JOIN + "from onnxfn.runtime import cpu, session; o = session.options(cpu.threads()); "
            "print(cpu.threads(), o.get_session_config_entry('session.intra_op.allow_spinning'))")
    out = subprocess.run([sys.executable, "-c", code, str(child_cgroup)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "shared")}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == spins


def test_release_options_shrink_the_cpu_arena():
    assert sessions.release_options().get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"


def _artifact(path: str, kind: str) -> Artifact:
    return Artifact(path=path, sha256="0" * 64, size=1, kind=kind, preoptimized=path.endswith(".ort"))


LEVEL, IN_PLACE, NO_PACKING = ("graph_optimization_level", "session.use_ort_model_bytes_for_initializers",
                               "session.disable_prepacking")


@pytest.mark.parametrize("path, kind, fixed, first, served", [
    # a pre-optimized fp32 .ort: its bytes in place, no packing, for the cold start; then copied and packed
    ("m.x86_64.opt.ort", "optimized", False, ("DISABLE", "1", "1"), ("DISABLE", "0", None)),
    # int8 kernels pack their weights whatever their source: one form, in place
    ("m.x86_64-vnni.int8.ort", "int8", True, None, ("DISABLE", "1", None)),
    # a fixed-size portable model: the basic level for the cold start, then all of ORT's optimizations
    ("model.onnx", "portable", True, ("BASIC", None, None), ("ALL", None, None)),
    ("model.onnx", "portable", False, None, ("ALL", None, None)),  # its cost grows with the input: one form
])
def test_a_tiered_artifact_is_built_quicker_first_and_as_served_after(path, kind, fixed, first, served):
    artifact = _artifact(path, kind)
    assert sessions.tiered(artifact, fixed_shape=fixed) == (first is not None)

    def form(opts):
        level = {v: k for k, v in sessions.OPT_LEVELS.items()}[opts.graph_optimization_level.name]
        return level, entry(opts, IN_PLACE), entry(opts, NO_PACKING)
    assert form(sessions.options(1, artifact)) == served
    if first is not None:
        assert form(sessions.options(1, artifact, first=True)) == first


@pytest.mark.parametrize("tuning", [{"disable_prepacking": True}, {"graph_optimization_level": "EXTENDED"}])
def test_a_tuning_that_chose_the_packing_or_the_level_keeps_one_form(tuning):
    tuning = Tuning(requires=Requirement(cpu.arch()), **tuning)
    ort_file, portable = _artifact("m.x86_64.opt.ort", "optimized"), _artifact("model.onnx", "portable")
    assert not sessions.tiered(ort_file if tuning.disable_prepacking else portable, tuning, fixed_shape=True)
    if tuning.disable_prepacking:
        assert entry(sessions.options(1, ort_file, tuning), NO_PACKING) == "1"
        assert entry(sessions.options(1, ort_file, tuning), IN_PLACE) == "1"
    else:
        assert sessions.options(1, portable, tuning).graph_optimization_level.name == "ORT_ENABLE_EXTENDED"
