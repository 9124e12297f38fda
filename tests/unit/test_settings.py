"""settings.py: one typed Settings read from the environment; every bad value is a
ConfigError that names its variable."""
from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from onnxfn import settings as settings_module
from onnxfn.errors import ConfigError
from onnxfn.settings import DEMO_MODEL, Settings, variable

FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
INTS = [name for name, f in FIELDS.items() if f.type == "int"]
BOOLS = [name for name, f in FIELDS.items() if f.type == "bool"]


def refused(env: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert (info.value.status, info.value.code) == (500, "configuration_error")
    return info.value


def test_defaults():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.model_uri == str(DEMO_MODEL) and DEMO_MODEL.is_dir() and (DEMO_MODEL / "manifest.json").is_file()
    assert (s.max_body_bytes, s.max_pixels, s.top_k, s.threads) == (6 * 1024 * 1024, 4096 * 4096, 5, 0)
    assert (s.warmup, s.base_path, s.log_level) == (True, "", "INFO")


def test_variable_names():
    assert variable("model_uri") == "MODEL_URI"
    assert variable("max_pixels") == "ONNXFN_MAX_PIXELS"
    assert variable("threads") == "ONNXFN_THREADS"
    for name in FIELDS:
        assert variable(name) in (name.upper(), "ONNXFN_" + name.upper())


def test_every_field_is_documented_with_its_variable():
    """Each field is followed by a docstring that starts with the variable that sets it."""
    tree = ast.parse(inspect.getsource(settings_module))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings").body
    documented = {}
    for field, doc in zip(body, body[1:]):
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            documented[field.target.id] = doc.value.value
    assert set(documented) == set(FIELDS)
    for name, doc in documented.items():
        assert doc.startswith(variable(name) + ":"), (name, doc)


def test_values_are_read_and_converted():
    s = Settings.from_env({"MODEL_URI": "file:///bundles/ct", "ONNXFN_MAX_BODY_BYTES": "1_000_000",
                           "ONNXFN_MAX_PIXELS": " 2048 ", "ONNXFN_TOP_K": "3", "ONNXFN_THREADS": "4",
                           "ONNXFN_WARMUP": "off", "ONNXFN_BASE_PATH": "/imaging", "ONNXFN_LOG_LEVEL": "debug",
                           "UNRELATED": "x"})
    assert s.model_uri == "file:///bundles/ct"
    assert (s.max_body_bytes, s.max_pixels, s.top_k, s.threads) == (1_000_000, 2048, 3, 4)
    assert s.warmup is False and s.base_path == "/imaging" and s.log_level == "debug"


def test_empty_values_keep_the_defaults():
    assert Settings.from_env({variable(name): "  " for name in FIELDS}) == Settings()


def test_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("ONNXFN_TOP_K", "9")
    monkeypatch.setenv("ONNXFN_WARMUP", "no")
    s = Settings.from_env()
    assert s.top_k == 9 and s.warmup is False


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().top_k = 3


@pytest.mark.parametrize("raw,value", [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                       ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_bool_spellings(raw, value):
    for name in BOOLS:
        assert getattr(Settings.from_env({variable(name): raw}), name) is value


@pytest.mark.parametrize("name", BOOLS)
@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_bad_bool_names_the_variable(name, raw):
    error = refused({variable(name): raw})
    assert error.message == f"{variable(name)} must be true or false, got {raw!r}"


@pytest.mark.parametrize("name", INTS)
@pytest.mark.parametrize("raw", ["lots", "2.5", "1e3", "0x10", "4 cores"])
def test_bad_whole_number_names_the_variable(name, raw):
    error = refused({variable(name): raw})
    assert error.message == f"{variable(name)} must be a whole number, got {raw!r}"


@pytest.mark.parametrize("name", ["max_body_bytes", "max_pixels", "top_k"])
@pytest.mark.parametrize("raw", ["0", "-5"])
def test_limits_must_be_positive(name, raw):
    error = refused({variable(name): raw})
    assert error.message.startswith(f"{variable(name)} must be a positive whole number, got {int(raw)}")


def test_threads_must_not_be_negative():
    assert Settings.from_env({"ONNXFN_THREADS": "0"}).threads == 0
    error = refused({"ONNXFN_THREADS": "-2"})
    assert error.message.startswith("ONNXFN_THREADS must be 0") and "-2" in error.message


@pytest.mark.parametrize("raw", ["imaging", "/imaging/", "/"])
def test_base_path_shape(raw):
    error = refused({"ONNXFN_BASE_PATH": raw})
    assert error.message.startswith("ONNXFN_BASE_PATH must start with /") and repr(raw) in error.message


def test_nested_base_path_is_fine():
    assert Settings.from_env({"ONNXFN_BASE_PATH": "/api/v1/imaging"}).base_path == "/api/v1/imaging"


@pytest.mark.parametrize("raw", ["TRACE", "verbose", "critical"])
def test_log_level_must_be_known(raw):
    error = refused({"ONNXFN_LOG_LEVEL": raw})
    assert error.message.startswith("ONNXFN_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR") and repr(raw) in error.message


@pytest.mark.parametrize("raw", ["abc", "A" * 64, "g" * 64, "a" * 65])
def test_model_sha256_must_be_64_lowercase_hex_digits(raw):
    assert refused({"MODEL_SHA256": raw}).message.startswith("MODEL_SHA256 must be")


def test_model_sha256_is_read():
    assert Settings.from_env({"MODEL_SHA256": " " + "0a" * 32 + "\n"}).model_sha256 == "0a" * 32


@pytest.mark.parametrize("name", ["cache_bytes", "revalidate_seconds", "deadline_margin_ms"])
def test_zero_or_more_fields(name):
    assert getattr(Settings.from_env({variable(name): "0"}), name) == 0
    assert refused({variable(name): "-1"}).message == f"{variable(name)} must be 0 or more, got -1"


@pytest.mark.parametrize("raw", ["0", "-1"])
def test_storage_timeout_must_be_positive(raw):
    assert Settings.from_env({"ONNXFN_STORAGE_TIMEOUT": "5"}).storage_timeout == 5
    error = refused({"ONNXFN_STORAGE_TIMEOUT": raw})
    assert error.message.startswith("ONNXFN_STORAGE_TIMEOUT must be a positive") and raw in error.message


@pytest.mark.parametrize("raw, dicom", [("json", False), ("json,dicom", True), (" DICOM , json ", True)])
def test_result_formats(raw, dicom):
    assert Settings.from_env({"ONNXFN_RESULT_FORMATS": raw}).dicom_results is dicom


@pytest.mark.parametrize("raw", ["dicom", "json,png", "json,,dicom", "xml"])
def test_result_formats_must_be_json_or_json_and_dicom(raw):
    with pytest.raises(ConfigError, match="ONNXFN_RESULT_FORMATS must be json or json,dicom"):
        Settings.from_env({"ONNXFN_RESULT_FORMATS": raw})
