"""Real child cgroups of the v1 cpu and memory controllers (writable as root here): what a function sees under
a CPU quota or a memory limit."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

CPU_V1 = Path("/sys/fs/cgroup/cpu")
MEMORY_V1 = Path("/sys/fs/cgroup/memory")


def _child(controller: Path):
    """A fresh child of the v1 `controller`'s root (skipped where it is not writable); whatever is left in it
    goes back to the root, and it is removed afterwards."""
    if not os.access(controller / "cgroup.procs", os.W_OK):
        pytest.skip(f"the v1 {controller.name} controller is not writable here (needs root and cgroup v1)")
    folder = controller / f"onnxfn-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        yield folder
    finally:
        remove(folder)


def remove(folder: Path) -> None:
    """Remove a child cgroup: whatever is left in it goes back to its parent, then the folder goes (retried a few
    seconds while the kernel still counts processes that are exiting)."""
    if not folder.exists():
        return
    for pid in (folder / "cgroup.procs").read_text().split():
        try:
            (folder.parent / "cgroup.procs").write_text(pid)
        except OSError:
            pass  # gone meanwhile
    for _ in range(50):
        try:
            folder.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    folder.rmdir()  # still busy: say so


@pytest.fixture
def child_cgroup():
    """A real child cgroup of the v1 cpu controller (writable as root here), removed afterwards."""
    yield from _child(CPU_V1)


@pytest.fixture
def memory_cgroup():
    """A real child cgroup of the v1 memory controller (writable as root here), removed afterwards: set its
    `memory.limit_in_bytes`, then start a process in it with `JOIN`."""
    yield from _child(MEMORY_V1)


#: Python code that moves its own process into the cgroup named by argv[1] (then dropped from argv).
JOIN = "import os, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid())); del sys.argv[1]; "
#: The fdk, started in the cgroup named by argv[1] (the function's entry and handler follow).
FDK = JOIN + "sys.argv[0] = 'fdk'; from fdk.scripts.fdk import main; main()"
