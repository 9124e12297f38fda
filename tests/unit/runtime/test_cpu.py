"""cpu.py: the CPU quota a container really has (cgroup v2 `cpu.max`, else v1 CFS files)
and intra-op threads sized from it and from the process's affinity."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxfn.runtime import cpu
from tests.support.cgroups import FDK, JOIN

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


# -- this process's own cgroup, found through /proc/self/cgroup and /proc/self/mountinfo ------------------

def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def test_v1_own_cgroup_and_its_ancestors_the_smallest_quota_wins(tmp_path):
    mount = tmp_path / "fs" / "cpu,cpuacct"
    for folder, quota in ((mount, "-1"), (mount / "fn", "200000"), (mount / "fn" / "call", "150000")):
        folder.mkdir(parents=True)
        (folder / "cpu.cfs_quota_us").write_text(quota)
        (folder / "cpu.cfs_period_us").write_text("100000")
    proc = fake_proc(tmp_path, "4:memory:/other\n3:cpu,cpuacct:/fn/call\n0::/\n",
                     f"31 23 0:28 / {tmp_path / 'fs'} rw - tmpfs tmpfs rw\n"
                     f"32 31 0:29 / {mount} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n")
    assert [f for _, f in cpu.cgroup_folders(proc)] == [mount / "fn" / "call", mount / "fn", mount]
    assert cpu.quota(proc=proc) == 1.5
    (mount / "fn" / "cpu.cfs_quota_us").write_text("100000")  # a tighter parent limits its children
    assert cpu.quota(proc=proc) == 1.0


def test_v2_inside_a_cgroup_namespace_mount_root_and_escaped_mount_points(tmp_path):
    mount = tmp_path / "cgroup two"  # mountinfo writes the space as \040
    (mount / "job").mkdir(parents=True)
    (mount / "cpu.max").write_text("max 100000\n")
    (mount / "job" / "cpu.max").write_text("50000 100000\n")
    escaped = str(mount).replace(" ", "\\040")
    proc = fake_proc(tmp_path, "0::/kubepods/pod1/job\n",
                     f"40 31 0:37 /kubepods/pod1 {escaped} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cpu.cgroup_folders(proc)[0] == ("v2", mount / "job")
    assert cpu.quota(proc=proc) == 0.5


def test_nothing_in_proc_falls_back_to_the_mount_root(tmp_path):
    assert cpu.cgroup_folders(tmp_path / "missing") == []
    proc = fake_proc(tmp_path, "0::/\n", "")  # no cgroup mount listed: nothing to read
    assert cpu.cgroup_folders(proc) == []


@pytest.mark.parametrize("quota, cpus, threads", [(150000, 1.5, 2), (100000, 1.0, 1), (50000, 0.5, 1)])
def test_a_process_in_a_real_child_cgroup_reads_its_own_quota(child_cgroup, quota, cpus, threads):
    (child_cgroup / "cpu.cfs_period_us").write_text("100000")
    (child_cgroup / "cpu.cfs_quota_us").write_text(str(quota))
    code = JOIN + "from onnxfn.runtime import cpu; print(cpu.quota(), cpu.threads())"
    out = subprocess.run([sys.executable, "-c", code, str(child_cgroup)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "shared")}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(cpus), str(min(threads, cpu.affinity()))]


def test_the_function_in_a_child_cgroup_sizes_its_session_from_that_quota(child_cgroup, function):
    """The real fdk serving from a child cgroup of one CPU: the answer says one intra-op thread."""
    (child_cgroup / "cpu.cfs_period_us").write_text("100000")
    (child_cgroup / "cpu.cfs_quota_us").write_text("100000")
    fn = function({"MODEL_URI": str(ROOT / "models" / "digits-cnn"), "ONNXFN_THREADS": "0",
                   "ONNXFN_BAKED_BUNDLE": ""}, command=[sys.executable, "-c", FDK, str(child_cgroup)])
    answer = fn.call((ROOT / "samples" / "digit-7.png").read_bytes(), "image/png").json()
    assert answer["result"]["label"] == "7" and answer["runtime"]["threads"] == 1
    assert str(fn.process.pid) in (child_cgroup / "cgroup.procs").read_text()
