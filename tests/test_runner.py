"""The runner: one session per container, loaded once, threads from the quota, warm-up."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import MODELS
from onnxfn import cpu, runner
from onnxfn.errors import BundleError
from onnxfn.runner import Runner
from onnxfn.settings import Settings


def test_concurrent_first_calls_load_once(monkeypatch):
    calls = []
    real = runner.load

    def slow_load(settings):
        calls.append(threading.get_ident())
        time.sleep(0.2)  # widen the window in which other callers arrive
        return real(settings)
    monkeypatch.setattr(runner, "load", lambda settings, deadline=None, warmup=True: slow_load(settings))
    r = Runner(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    barrier = threading.Barrier(8)
    results = []

    def first_call():
        barrier.wait()
        results.append(r.get())
    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and r.loads == 1
    assert len({id(model) for model, _ in results}) == 1
    assert all(cold for _, cold in results)  # every one of them waited for the load
    assert r.get() == (results[0][0], False)


def test_a_call_that_will_infer_is_the_warm_up_other_loads_warm_up():
    settings = Settings(model_uri=str(MODELS / "digits-cnn"), threads=1)
    waiting = Runner(settings)
    waiting.start(inference_waits=True)
    model, cold = waiting.get()
    assert cold and not model.warmed and model.phases["load_warmup"] < 50
    probed = Runner(settings)
    probed.start()  # a readiness probe or metadata call: nobody runs the model right after
    assert probed.get()[0].warmed
    assert Runner(settings).get()[0].warmed
    assert not Runner(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1, warmup=False)).get()[0].warmed


def test_the_call_that_started_the_load_is_cold_even_if_it_finished_meanwhile():
    r = Runner(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    r.start()
    while not r.loaded:
        time.sleep(0.01)
    assert r.get()[1] is True  # the first call decoded while the model loaded: it is the cold one
    assert r.get()[1] is False and r.loads == 1


def test_a_failed_started_load_is_reported_once_then_tried_again(tmp_path):
    r = Runner(Settings(model_uri=str(tmp_path / "missing"), threads=1))
    r.start()
    while r._loading is None or not r._loading.done():
        time.sleep(0.01)
    with pytest.raises(BundleError, match="does not exist"):
        r.get()  # the failure of the load this call started, not a new attempt
    assert r.loads == 1
    with pytest.raises(BundleError):
        r.get()
    assert r.loads == 2  # the next call tries again


def test_a_failed_load_is_not_cached(tmp_path):
    r = Runner(Settings(model_uri=str(tmp_path / "missing"), threads=1))
    for _ in range(2):
        with pytest.raises(BundleError):
            r.get()
    assert not r.loaded and r.loads == 2


def test_session_options_follow_the_quota():
    model = runner.load(Settings(model_uri=str(MODELS / "digits-cnn")))
    assert model.threads == cpu.threads()
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == cpu.threads() and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert model.provider == "CPUExecutionProvider"


def test_explicit_thread_count_wins():
    model = runner.load(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    assert model.threads == 1 and model.session.get_session_options().intra_op_num_threads == 1


def test_example_inputs_fit_dynamic_models():
    unet = runner.load(Settings(model_uri=str(MODELS / "lesion-unet"), threads=1))
    spec = unet.manifest.inputs[0]
    example = runner.example(spec)
    assert example.shape[:2] == (1, 1) and example.shape[2] % 4 == 0 and example.shape[3] % 4 == 0
    out = unet.run({"image": example})["logits"]
    assert out.shape == example.shape


def test_manifest_that_does_not_match_the_model(tmp_path, bundles):
    import json
    import shutil
    bundle = tmp_path / "b"
    shutil.copytree(bundles["linear"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["outputs"][0]["name"] = "scores"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outputs\\[0\\] names output 'scores'.*logits"):
        runner.load(Settings(model_uri=str(bundle), threads=1))


def test_run_errors_become_inference_errors():
    from onnxfn.errors import InferenceError
    model = runner.load(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    with pytest.raises(InferenceError, match="onnxruntime"):
        model.run({"image": np.zeros((1, 1, 9, 9), dtype=np.float32)})
