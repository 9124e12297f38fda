"""Real child cgroups of the v1 cpu controller (writable as root here): what a function sees under a CPU quota."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

CPU_V1 = Path("/sys/fs/cgroup/cpu")


@pytest.fixture
def child_cgroup():
    """A real child cgroup of the v1 cpu controller (writable as root here), removed afterwards."""
    if not os.access(CPU_V1 / "cgroup.procs", os.W_OK):
        pytest.skip("the v1 cpu controller is not writable here (needs root and cgroup v1)")
    folder = CPU_V1 / f"onnxfn-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    yield folder
    for pid in (folder / "cgroup.procs").read_text().split():
        try:
            (CPU_V1 / "cgroup.procs").write_text(pid)  # whatever is left goes back to the root
        except OSError:
            pass
    folder.rmdir()


#: Python code that moves its own process into the cgroup named by argv[1] (then dropped from argv).
JOIN = "import os, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid())); del sys.argv[1]; "
