"""Shared fixtures: small bundles packaged here, and real function processes under the fdk (the
tests play the Fn agent over the unix socket). Helpers live in tests/support/."""
from __future__ import annotations

from pathlib import Path

import pytest

from onnxfn.tools.dev.agent import Function
from onnxfn.tools.package import Options, build
from tests.support.models import adder, identity_segmenter, linear_classifier

pytest_plugins = ["tests.support.s3server", "tests.support.parserver", "tests.support.cgroups"]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Small bundles built with `onnxfn package` from models made here."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    out["linear"] = build(linear_classifier(root / "linear.onnx"), root / "linear",
                          Options(name="linear", task="classification", activation="softmax",
                                  labels=[f"class-{i}" for i in range(10)])).root
    out["segmenter"] = build(identity_segmenter(root / "seg.onnx"), root / "segmenter",
                             Options(name="segmenter", task="segmentation", activation="sigmoid",
                                     decision="threshold", labels=["bright"], image={"pad_multiple": 4})).root
    out["adder"] = build(adder(root / "adder.onnx"), root / "adder", Options(name="adder")).root
    return out


@pytest.fixture(scope="session")
def preoptimized(tmp_path_factory):
    """The digits CNN packaged with a pre-optimized fp32 .ort for this CPU (its `Bundle`)."""
    from tests.support.models import MODELS
    out = tmp_path_factory.mktemp("opt") / "digits"
    bundle = build(MODELS / "digits-cnn" / "model.onnx", out,
                   Options(task="classification", labels=[str(i) for i in range(10)], optimize_for=["native"]))
    assert any(a.kind == "optimized" and a.path.endswith(".ort") for a in bundle.manifest.artifacts)
    return bundle


@pytest.fixture
def function():
    """Start functions under the real fdk: function(env) -> agent.Function; all stopped afterwards."""
    started: list[Function] = []

    def start(env: dict[str, str] | None = None, **kwargs) -> Function:
        fn = Function(env={"ONNXFN_THREADS": "1", **(env or {})}, **kwargs).start()
        started.append(fn)
        return fn
    yield start
    for fn in started:
        fn.stop()
