"""service.py: the core in-process: answers with their figures, and the 4xx a caller's mistake gets."""
from __future__ import annotations

import time

import numpy as np
import pytest

from onnxfn.errors import BadRequest, NotFound
from onnxfn.service import Service, Timer
from onnxfn.settings import Settings
from tests.support.models import DIGIT, MODELS


def service_for(path) -> Service:
    return Service(Settings(model_uri=str(path), baked_bundle="", threads=1))


def test_predict_answers_with_its_figures_apart_for_the_log():
    service = service_for(MODELS / "digits-cnn")
    first = service.predict(DIGIT, "image/png")
    again = service.predict(DIGIT, "image/png")
    assert first.body["result"]["label"] == "7" and first.cold is True and again.cold is False
    assert again.timings_ms is again.body["timings_ms"] and again.timings_ms["load"] == 0.0
    assert set(first.timings_ms) >= {"load", "decode", "preprocess", "inference", "postprocess", "total",
                                     "load_fetch", "load_session"}  # a cold call says where its load went
    assert first.body["image"] == {"format": "png", "width": 8, "height": 8, "channels": 1, "bits": 8}


def test_a_tensor_model_refuses_images_and_infer_names_unknown_outputs(bundles):
    service = service_for(bundles["adder"])
    with pytest.raises(BadRequest, match="tensor model") as refused:
        service.predict(DIGIT, "image/png")
    assert refused.value.code == "tensor_model"
    document = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                           {"name": "b", "datatype": "FP32", "shape": [1, 3], "data": [1, 1, 1]},
                           {"name": "count", "datatype": "INT32", "shape": [2], "data": [4, 5]}],
                "outputs": [{"name": "sum"}, {"name": "nope"}]}
    with pytest.raises(BadRequest, match="'nope' do not exist") as unknown:
        service.infer(document)
    assert unknown.value.code == "unknown_output"
    document["outputs"] = [{"name": "sum"}]
    answer = service.infer(document, "adder")
    assert answer.body["outputs"] == [{"name": "sum", "datatype": "FP32", "shape": [1, 3], "data": [2.0, 3.0, 4.0]}]
    assert answer.body["parameters"]["timings_ms"] is answer.timings_ms


def test_a_name_or_version_not_served_is_a_404():
    service = service_for(MODELS / "digits-cnn")
    with pytest.raises(NotFound) as name:
        service.metadata("other")
    with pytest.raises(NotFound) as version:
        service.metadata("digits-cnn", "0.0.1")
    assert (name.value.code, version.value.code) == ("model_not_found", "version_not_found")
    meta = service.metadata("digits-cnn")
    assert meta["outputs"][0]["datatype"] == "FP32" and meta["parameters"]["task"] == "classification"


def test_timer_steps_add_up_and_the_total_covers_them():
    timer = Timer()
    for _ in range(2):
        with timer.step("decode"):
            time.sleep(0.01)
    total = timer.total()
    assert total["decode"] >= 20 and total["total"] >= total["decode"]
    assert np.isclose(total["decode"], round(total["decode"], 3))
