"""`onnxfn invoke` and `onnxfn demo`."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.models import MODELS, ROOT
from onnxfn.tools.cli import main


def test_invoke_prints_the_answer(capsys):
    assert main(["invoke", str(ROOT / "samples" / "phantom.dcm"), "--model", str(MODELS / "lesion-unet")]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["task"] == "segmentation" and answer["image"] == {
        "format": "dicom", "width": 160, "height": 192, "channels": 1, "bits": 12}
    assert answer["result"]["classes"][0]["pixels"] > 0


def test_invoke_reports_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"\x00\x01nothing")
    assert main(["invoke", str(bad), "--model", str(MODELS / "digits-cnn")]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == 415


def test_demo_runs_every_demo_bundle_through_the_fdk():
    result = subprocess.run([sys.executable, "-m", "onnxfn.tools.cli", "demo"], capture_output=True, text=True,
                            timeout=120, env={"PATH": "", "ONNXFN_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("== ") == 5 and result.stdout.splitlines().count('    "label": "7",') == 4
    assert '"label": "lesion"' in result.stdout
