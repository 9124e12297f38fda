"""cpu.py: the CPU quota a container really has (cgroup v2 `cpu.max`, else v1 CFS files)
and intra-op threads sized from it and from the process's affinity."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxfn.runtime import cpu

ROOT = Path(__file__).resolve().parents[3]


def cgroup(tmp_path: Path, v2: str | None = None, quota: str | None = None, period: str | None = None) -> Path:
    """A fake cgroup folder: v2 writes cpu.max; v1 writes cpu/cpu.cfs_quota_us and cpu.cfs_period_us."""
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if quota is not None or period is not None:
        (tmp_path / "cpu").mkdir(exist_ok=True)
        if quota is not None:
            (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota)
        if period is not None:
            (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(period)
    return tmp_path


@pytest.mark.parametrize("text,cpus", [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5),
                                       ("200000 100000", 2.0), ("100000 100000", 1.0), ("400000 50000\n", 8.0)])
def test_v2_quota(tmp_path, text, cpus):
    assert cpu.quota(cgroup(tmp_path, v2=text)) == cpus


@pytest.mark.parametrize("text", ["", "max", "lots 100000", "100000 0", "0 100000", "-1 100000"])
def test_v2_quota_that_says_nothing_usable_is_unlimited(tmp_path, text):
    assert cpu.quota(cgroup(tmp_path, v2=text)) is None


@pytest.mark.parametrize("quota,period,cpus", [("150000\n", "100000\n", 1.5), ("-1", "100000", None),
                                               ("25000", "100000", 0.25), ("100000", "0", None)])
def test_v1_quota(tmp_path, quota, period, cpus):
    assert cpu.quota(cgroup(tmp_path, quota=quota, period=period)) == cpus


def test_v1_needs_both_files(tmp_path):
    assert cpu.quota(cgroup(tmp_path, quota="150000")) is None


def test_v2_wins_over_v1(tmp_path):
    assert cpu.quota(cgroup(tmp_path, v2="300000 100000", quota="100000", period="100000")) == 3.0


def test_unreadable_v2_falls_back_to_v1(tmp_path):
    assert cpu.quota(cgroup(tmp_path, v2="garbage", quota="50000", period="100000")) == 0.5


def test_no_cgroup_files_is_unlimited(tmp_path):
    assert cpu.quota(tmp_path) is None
    assert cpu.quota(tmp_path / "absent") is None


def test_affinity_is_the_cpus_this_process_may_use():
    assert cpu.affinity() == len(os.sched_getaffinity(0)) >= 1


def test_threads_without_a_quota_use_every_allowed_cpu(tmp_path):
    assert cpu.threads(cgroup(tmp_path, v2="max 100000")) == cpu.affinity()


def test_threads_follow_a_smaller_quota_rounded_up(tmp_path):
    assert cpu.threads(cgroup(tmp_path, v2="50000 100000")) == 1
    assert cpu.threads(cgroup(tmp_path, v2="150000 100000")) == min(cpu.affinity(), 2)
    assert cpu.threads(cgroup(tmp_path, v2="100000 100000")) == 1  # exactly one CPU is one thread, not two


def test_threads_are_capped_by_affinity(tmp_path):
    assert cpu.threads(cgroup(tmp_path, v2="6400000 100000")) == cpu.affinity()  # 64 CPUs of quota


def test_threads_with_a_tiny_quota_are_at_least_one(tmp_path):
    assert cpu.threads(cgroup(tmp_path, v2="1000 100000")) == 1


def test_threads_in_a_process_pinned_to_one_cpu(tmp_path):
    """A real process pinned to one CPU: four CPUs of quota still give one thread."""
    cgroup(tmp_path, v2="400000 100000")
    first = min(os.sched_getaffinity(0))
    code = ("import os, sys; from pathlib import Path; from onnxfn.runtime import cpu; "
            f"os.sched_setaffinity(0, {{{first}}}); "
            "print(cpu.affinity(), cpu.threads(Path(sys.argv[1])), cpu.threads(Path(sys.argv[1]) / 'none'))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "shared")}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=60, check=True)
    assert result.stdout.split() == ["1", "1", "1"]


def test_arch_uses_linux_names():
    assert cpu.arch() not in ("amd64", "arm64")
    assert cpu.arch() == cpu.arch().lower() and cpu.arch()


# -- instruction-set features -------------------------------------------------------------------

X86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx avx2 avx512f avx512_vnni amx_int8 fma\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes asimddp sha512 sve i8mm bf16\n"


def test_features_from_cpuinfo(tmp_path):
    (tmp_path / "x86").write_text(X86)
    (tmp_path / "arm").write_text(ARM)
    assert cpu.features(tmp_path / "x86", machine="x86_64") == ("amx", "avx2", "avx512_vnni", "avx512f")
    assert cpu.features(tmp_path / "arm", machine="aarch64") == ("asimddp", "bf16", "i8mm", "sve")


def test_features_fall_back_when_cpuinfo_is_hidden(tmp_path):
    assert cpu.features(tmp_path / "missing", machine="x86_64") is None
    (tmp_path / "empty").write_text("processor : 0\n")
    assert cpu.features(tmp_path / "empty", machine="x86_64") is None


def test_this_machine_is_described():
    described = cpu.describe()
    assert described["arch"] == cpu.arch()
    assert described["features"] is None or set(described["features"]) <= cpu.KNOWN
