"""memory.py: the function's memory limit (a real child memory cgroup, fake v1 and v2 /proc trees, FN_MEMORY,
ONNXFN_MEMORY_BYTES), what is available, Peak, the model's measured cost and giving memory back."""
from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxfn.bundles import manifest as mf
from onnxfn.bundles.manifest import MemoryCost
from onnxfn.runtime import cpu, loader, memory, session as sessions
from onnxfn.settings import Settings
from tests.support.cgroups import JOIN
from tests.support.models import MODELS

ROOT = Path(__file__).resolve().parents[3]
UNET = MODELS / "lesion-unet"
PAGE_COUNTER_MAX = "9223372036854771712"


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    (proc / "status").write_text("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    return proc


def v1_tree(tmp_path: Path, limits: dict[str, str]) -> tuple[Path, Path]:
    """A v1 memory hierarchy mounted at fs/memory with `limits` per folder below it; the process in fn/call."""
    mount = tmp_path / "fs" / "memory"
    for relative, value in limits.items():
        folder = mount / relative if relative else mount
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.limit_in_bytes").write_text(value + "\n")
    proc = fake_proc(tmp_path, "4:memory:/fn/call\n3:cpu,cpuacct:/\n0::/\n",
                     f"31 23 0:28 / {tmp_path / 'fs'} rw - tmpfs tmpfs rw\n"
                     f"32 31 0:29 / {tmp_path / 'fs' / 'cpu'} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
                     f"35 31 0:32 / {mount} rw,relatime - cgroup cgroup rw,memory\n")
    return mount, proc


def test_v1_the_smallest_limit_of_the_cgroup_and_its_ancestors_wins(tmp_path):
    mount, proc = v1_tree(tmp_path, {"": PAGE_COUNTER_MAX, "fn": str(512 << 20), "fn/call": PAGE_COUNTER_MAX})
    assert [f for _, f in cpu.cgroup_folders(proc, "memory")] == [mount / "fn" / "call", mount / "fn", mount]
    assert cpu.cgroup_folders(proc)[0][1] == tmp_path / "fs" / "cpu"  # the cpu hierarchy is still the default
    assert memory.limit(0, proc, environ={}) == 512 << 20
    (mount / "fn" / "call" / "memory.limit_in_bytes").write_text(str(256 << 20))
    assert memory.cgroup_limit(proc) == (256 << 20, "v1", mount / "fn" / "call")


def test_v1_unlimited_everywhere_is_no_limit(tmp_path):
    _, proc = v1_tree(tmp_path, {"": PAGE_COUNTER_MAX, "fn": PAGE_COUNTER_MAX, "fn/call": PAGE_COUNTER_MAX})
    assert memory.limit(None, proc, environ={}) is None


def test_v2_memory_max_inside_a_namespace_mount(tmp_path):
    mount = tmp_path / "unified"
    (mount / "job").mkdir(parents=True)
    (mount / "memory.max").write_text("max\n")
    (mount / "job" / "memory.max").write_text(f"{300 << 20}\n")
    proc = fake_proc(tmp_path, "0::/kubepods/pod1/job\n",
                     f"40 31 0:37 /kubepods/pod1 {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert memory.limit(0, proc, environ={"FN_MEMORY": "1024"}) == 300 << 20  # the cgroup wins over FN_MEMORY
    (mount / "job" / "memory.max").write_text("max\n")
    assert memory.limit(0, proc, environ={}) is None


def test_fn_memory_when_no_cgroup_says(tmp_path):
    proc = fake_proc(tmp_path, "0::/\n", "")
    assert memory.limit(0, proc, environ={"FN_MEMORY": "256"}) == 256 << 20
    assert memory.limit(0, proc, environ={"FN_MEMORY": "lots"}) is None
    assert memory.limit(0, proc, environ={}) is None


def test_onnxfn_memory_bytes_wins(tmp_path):
    _, proc = v1_tree(tmp_path, {"": str(512 << 20)})
    assert memory.limit(Settings(memory_bytes=200 << 20), proc, environ={"FN_MEMORY": "128"}) == 200 << 20
    assert memory.limit(100 << 20, proc) == 100 << 20
    assert memory.limit(Settings(), proc, environ={}) == 512 << 20  # 0: from the cgroup


def test_available_counts_rss_or_the_cgroups_working_set_whichever_is_larger(tmp_path):
    mount, proc = v1_tree(tmp_path, {"": PAGE_COUNTER_MAX, "fn": str(512 << 20)})
    folder = mount / "fn"
    (folder / "memory.usage_in_bytes").write_text(str(300 << 20))
    (folder / "memory.stat").write_text(f"cache {250 << 20}\ntotal_inactive_file {150 << 20}\n")
    assert memory.rss(proc) == 100 << 20
    assert memory.working_set(proc) == 150 << 20  # usage less the page cache the kernel drops first
    assert memory.available(512 << 20, proc) == (512 - 150 << 20) - memory.HEADROOM
    (folder / "memory.stat").write_text(f"total_inactive_file {250 << 20}\n")
    assert memory.available(512 << 20, proc) == (512 - 100 << 20) - memory.HEADROOM  # RSS is larger now
    assert memory.available(None, proc) is None
    assert memory.available(10 << 20, proc) == 0


@pytest.fixture
def grandchild(memory_cgroup):
    folder = memory_cgroup / "call"
    folder.mkdir()
    yield folder
    folder.rmdir()


def test_a_process_in_a_real_child_memory_cgroup_reads_its_own_limit(memory_cgroup, grandchild):
    """The limit set on a real v1 cgroup reaches a process two levels below it (its own cgroup has none)."""
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(300 << 20))
    code = JOIN + ("from onnxfn.runtime import memory; found = memory.cgroup_limit(); "
                   "print(memory.limit(0), found[2], memory.available(memory.limit(0)) > 0)")
    out = subprocess.run([sys.executable, "-c", code, str(grandchild)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "shared"), "FN_MEMORY": "1024"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(300 << 20), str(memory_cgroup), "True"]


def test_peak_sees_an_allocation_freed_inside_the_block():
    size = 64 << 20
    with memory.Peak() as peak:
        block = mmap.mmap(-1, size)  # new pages, not heap pages already resident
        np.frombuffer(block, np.uint8)[:] = 1  # touched: resident
        block.close()
    assert peak.exact  # root may reset VmHWM here
    assert peak.bytes >= size - (1 << 20)  # the kernel batches RSS counts per thread (64 pages at a time)
    with memory.Peak() as idle:
        pass
    assert idle.bytes < size // 4


def test_fit_is_an_upper_envelope_of_the_runs():
    runs = [{"shape": [1, 1, 10, 10], "peak": 1000}, {"shape": [1, 1, 20, 20], "peak": 2500},
            {"shape": [1, 1, 30, 30], "peak": 4200}]
    cost = memory.fit(runs)
    assert cost.per_element > 0 and cost.measured == tuple(runs)
    assert all(cost.bytes(100 * (i + 1) ** 2) >= r["peak"] for i, r in enumerate(runs))
    assert any(cost.bytes(100 * (i + 1) ** 2) - r["peak"] <= 1 for i, r in enumerate(runs))  # touches one
    falling = memory.fit([{"shape": [10], "peak": 500}, {"shape": [20], "peak": 400}])
    assert falling == MemoryCost(500, 0.0, falling.measured)


def unet_spec() -> mf.InputSpec:
    return mf.parse(json.loads((UNET / "manifest.json").read_text())).inputs[0]


def test_shapes_follow_the_pad_multiple_and_fixed_inputs_run_once():
    spec = unet_spec()
    assert memory.dynamic(spec)
    assert memory.shapes(spec, (62, 128)) == [[1, 1, 64, 64], [1, 1, 128, 128]]
    digits = mf.parse(json.loads((MODELS / "digits-cnn" / "manifest.json").read_text())).inputs[0]
    assert not memory.dynamic(digits) and memory.shapes(digits) == [[1, 1, 8, 8]]


def test_the_unet_cost_predicts_a_larger_run_without_under_estimating_it():
    """Measured here: 64-192 px predict a 1024x1024 run within 1.1x (2048x2048: 1,130 MB predicted, 1,056 MB
    actual); the bounds leave room for ORT's arena steps."""
    spec = unet_spec()
    cost = memory.measure(sessions.create(UNET / "model.onnx", 2), spec)
    assert cost.per_element > 0 and [r["shape"][2] for r in cost.measured] == [64, 128, 192]
    fresh = sessions.create(UNET / "model.onnx", 2)
    image = np.zeros((1, 1, 1024, 1024), np.float32)
    base = memory.rss()
    with memory.Peak() as peak:
        fresh.run(None, {"image": image})
    actual = peak.before + peak.bytes - base
    predicted = cost.bytes(image.size)
    assert 0.9 * actual <= predicted <= 1.5 * actual, (predicted, actual)


def test_release_gives_back_what_a_2048_call_grew():
    """Measured: RSS 73 MB after a 256x256 call, 1,129 MB during a 2048x2048 one, 57 MB after its release."""
    model = loader.load(Settings(model_uri=str(UNET), threads=2))
    small = {"image": np.zeros((1, 1, 256, 256), np.float32)}
    model.run(small)
    assert model.releases == 0 and not model.large(small)
    warm = memory.rss()
    big = {"image": np.full((1, 1, 2048, 2048), 0.3, np.float32)}
    assert model.large(big)
    with memory.Peak() as peak:
        out = model.run(big)["logits"]
    after, grown = memory.rss(), peak.before + peak.bytes - warm
    assert model.releases == 1 and grown > 500 << 20
    assert after - warm < 0.2 * grown, (warm >> 20, grown >> 20, after >> 20)
    assert out.flags.owndata  # a copy: a view into the arena would have kept its chunk
    np.testing.assert_array_equal(out, model.session.run(["logits"], big)[0])
