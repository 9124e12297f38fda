"""`python -m onnxfn.tools.docs`: docs/configuration.md and docs/errors.md are what the code gives, and
say everything it holds."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

from onnxfn.settings import Settings, variable
from onnxfn.tools import docs
from tests.support.models import ROOT


def test_the_committed_pages_are_what_the_code_gives():
    stale = [str(path.relative_to(ROOT)) for path in docs.stale()]
    assert stale == [], f"{', '.join(stale)} out of date: run `python -m onnxfn.tools.docs` and commit the result"


def test_every_setting_is_in_the_configuration_page():
    page = (ROOT / "docs" / "configuration.md").read_text()
    for f in dataclasses.fields(Settings):
        assert f"| `{variable(f.name)}` |" in page, variable(f.name)


def test_every_error_class_and_code_is_in_the_catalogue():
    page = (ROOT / "docs" / "errors.md").read_text()
    classes = docs.error_classes()
    assert {"OnnxfnError", "BadRequest", "ConfigError", "BundleError", "LoadTimeout"} <= set(classes)
    for name, cls in classes.items():
        assert f"| `{name}`" in page and f"`{cls.code}`" in page, name
        assert cls.__dict__.get("__doc__"), f"errors.{name} has no docstring saying when it happens and what to do"
    for r in docs.raised():
        assert f"| {r.status} | `{r.code}` | `{r.cls}` |" in page and f"`{r.module}`" in page, r


def test_the_scan_finds_codes_in_every_form_and_skips_the_tools():
    found = {(r.code, r.cls, r.status, r.module) for r in docs.raised()}
    assert ("too_many_pixels", "PayloadTooLarge", 413, "onnxfn.codecs.image") in found  # raise X(..., code=)
    assert ("manifest_mismatch", "BundleError", 500, "onnxfn.runtime.session") in found
    assert ("storage_error", "StorageUnavailable", 502, "onnxfn.storage.s3") in found    # status= too
    assert ("model_loading", "LoadTimeout", 503, "onnxfn.runtime.loader") in found       # the class's default
    assert ("gateway_only", "BadRequest", 400, "onnxfn.fn") in found                     # built, not raised
    assert not any(r.module.startswith("onnxfn.tools") for r in docs.raised())
    assert not any(r.code == "" for r in docs.raised())


def test_the_scan_reads_literal_codes_only(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "x.py").write_text("raise BadRequest('no', code='tool_code')\n")
    (tmp_path / "a.py").write_text(
        "from onnxfn import errors\n"
        "def f(e):\n"
        "    raise errors.NotFound('x', code='gone')\n"
        "def g(e):\n"
        "    raise StorageUnavailable(e.message, status=e.status, code=e.code)\n"
        "def h():\n"
        "    return ConfigError('bad')\n")
    found = {(r.cls, r.code, r.status, r.module, r.specific) for r in docs.raised(tmp_path)}
    assert found == {("NotFound", "gone", 404, "onnxfn.a", True),
                     ("ConfigError", "configuration_error", 500, "onnxfn.a", False)}


def test_no_machine_path_in_the_pages():
    for path, text in docs.pages().items():
        assert str(ROOT) not in text, path


def test_check_names_a_stale_page(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(docs, "DOCS", tmp_path)
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    assert docs.main(["--check"]) == 1
    assert "configuration.md is out of date" in capsys.readouterr().err
    assert docs.main([]) == 0
    assert docs.main(["--check"]) == 0
    (tmp_path / "errors.md").write_text("edited by hand\n")
    assert docs.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "errors.md is out of date" in err and "configuration.md" not in err


def test_the_command_checks_the_repository():
    out = subprocess.run([sys.executable, "-m", "onnxfn.tools.docs", "--check"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr

