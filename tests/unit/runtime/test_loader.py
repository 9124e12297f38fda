"""The runner: one session per container, loaded once, threads from the quota, warm-up."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.models import DIGIT, MODELS
from onnxfn.runtime import cpu
from onnxfn.runtime import session as sessions
from onnxfn.runtime import loader as runner
from onnxfn.errors import BundleError
from onnxfn.runtime.loader import Runner
from onnxfn.runtime.model import Model, example
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
    spins = "1" if cpu.threads() > 1 else "0"  # two threads spin (bounded), whatever the quota
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spins
    assert model.provider == "CPUExecutionProvider"


def test_explicit_thread_count_wins():
    model = runner.load(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    assert model.threads == 1 and model.session.get_session_options().intra_op_num_threads == 1


def test_example_inputs_fit_dynamic_models():
    unet = runner.load(Settings(model_uri=str(MODELS / "lesion-unet"), threads=1))
    spec = unet.manifest.inputs[0]
    zeros = example(spec)
    assert zeros.shape[:2] == (1, 1) and zeros.shape[2] % 4 == 0 and zeros.shape[3] % 4 == 0
    out = unet.run({"image": zeros})["logits"]
    assert out.shape == zeros.shape


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


def _with_optimized_copy(tmp_path) -> Path:
    """digits-cnn plus a second, 'optimized' artifact for this CPU (a copy of the portable model), which the
    runner prefers."""
    import json
    import shutil
    bundle = tmp_path / "b"
    shutil.copytree(MODELS / "digits-cnn", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    shutil.copy(bundle / "model.onnx", bundle / "opt.onnx")
    extra = {**manifest["artifacts"][0], "path": "opt.onnx", "kind": "optimized",
             "requires": {"arch": cpu.arch(), "features": []}}
    manifest["artifacts"].append(extra)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_an_artifact_that_cannot_run_is_replaced_at_the_cold_calls_inference(tmp_path, monkeypatch):
    """With no warm-up, the cold call's inference is the artifact's first run: an artifact that fails it (mocked:
    no artifact that loads but cannot run on this CPU can be built portably) is replaced by the portable one
    and the call is answered; a bad input on a healthy model is the input's error and swaps nothing."""
    from onnxfn.errors import InferenceError
    from onnxfn.service import Service
    real = Model.run

    def run(self, feeds, outputs=None):
        if self.artifact == "opt.onnx":
            raise InferenceError("onnxruntime failed to run the model: kernel not implemented")
        if any((value == 42).any() for value in feeds.values()):  # an input the model rejects (mocked)
            raise InferenceError("onnxruntime failed to run the model: bad input")
        return real(self, feeds, outputs)
    monkeypatch.setattr(Model, "run", run)
    settings = Settings(model_uri=str(_with_optimized_copy(tmp_path)), threads=1)
    service = Service(settings)
    service.runner.start(inference_waits=True)
    answer = service.predict(DIGIT, "image/png").body
    assert answer["result"]["label"] == "7" and answer["runtime"]["artifact"] == "model.onnx"
    assert answer["cold"] is True and service.runner.get()[0].artifact == "model.onnx"
    assert service.runner.get()[0].fallbacks == ("opt.onnx",)

    healthy = Service(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    healthy.runner.start(inference_waits=True)
    bad = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [42.0] * 64}]}
    with pytest.raises(InferenceError, match="bad input"):
        healthy.infer(bad)
    model = healthy.runner.get()[0]
    assert model.checked and model.artifact == "model.onnx" and healthy.runner.loads == 1


def test_a_load_that_ran_out_of_an_earlier_calls_time_is_tried_again(tmp_path):
    r = Runner(Settings(model_uri=str(tmp_path / "missing"), threads=1, deadline_margin_ms=0))
    r.start(deadline=time.monotonic() + 0.01)  # e.g. a liveness probe's, long gone when a predict comes
    time.sleep(0.05)
    with pytest.raises(BundleError):
        r.get(time.monotonic() + 30)
    assert r.loads == 2  # not the probe's stale failure: a new attempt within this call's time


def test_overlapping_downloads_put_the_switch_interval_back_once_the_last_ends():
    import sys
    from onnxfn.bundles.cache import DOWNLOAD_SWITCH_INTERVAL, _short_switch_interval
    before = sys.getswitchinterval()
    first, second = _short_switch_interval(), _short_switch_interval()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(DOWNLOAD_SWITCH_INTERVAL)
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(before)


def test_concurrent_first_calls_build_one_core_and_start_one_load():
    from onnxfn.app import App, Request
    app = App(lambda: Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    barrier, replies = threading.Barrier(4), []

    def call():
        barrier.wait()
        replies.append(app.handle(Request("POST", "/", {"content-type": "image/png"}, DIGIT)))
    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in replies] == [200] * 4 and app.service.runner.loads == 1
    assert sum(r.body["cold"] for r in replies) >= 1


def test_a_bundle_without_a_memory_cost_is_measured_at_its_first_load():
    unet = runner.load(Settings(model_uri=str(MODELS / "lesion-unet"), threads=1), warmup=False)
    assert unet.manifest.memory is None and unet.memory.per_element > 0
    assert [r["shape"][2:] for r in unet.memory.measured] == [[64, 64], [128, 128]]  # two small runs
    assert "load_memory" in unet.phases and not unet.warmed
    digits = runner.load(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))
    assert digits.memory.per_element == 0 and digits.memory.measured[0]["shape"] == [1, 1, 8, 8]
    assert digits.warmed and digits.checked  # its one measured run was the warm-up
    lazy = runner.load(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1), warmup=False)
    assert lazy.memory is None and lazy.measure_first and not lazy.warmed  # the first call is the warm-up
    lazy.run({"image": example(lazy.manifest.inputs[0])})
    assert not lazy.measure_first and lazy.memory.per_element == 0
    assert lazy.memory.measured == ({"shape": [1, 1, 8, 8], "peak": lazy.memory.fixed},)


def test_a_packaged_memory_cost_is_used_as_it_is(tmp_path):
    from onnxfn.tools.package import Options, build
    bundle = build(MODELS / "lesion-unet" / "model.onnx", tmp_path / "unet",
                   Options(task="segmentation", activation="sigmoid", decision="threshold", labels=["lesion"],
                           image={"pad_multiple": 4}))
    model = runner.load(Settings(model_uri=str(bundle.root), threads=1))
    assert model.memory is bundle.manifest.memory or model.memory == bundle.manifest.memory
    assert len(model.memory.measured) == 3  # packaging's runs, not the load's two


def _settled(r: Runner, timeout: float = 30.0) -> None:
    ends = time.monotonic() + timeout
    while any(t.name == "onnxfn-settle" for t in threading.enumerate()) and time.monotonic() < ends:
        time.sleep(0.01)
    assert not any(t.name == "onnxfn-settle" for t in threading.enumerate()), "the settle thread did not end"


@pytest.fixture
def roomy(monkeypatch):
    """No memory limit known: the settle's memory check passes whatever this machine's cgroup is."""
    from onnxfn.runtime import memory
    monkeypatch.setattr(memory, "limit", lambda settings=None: None)


def test_a_mapped_session_is_replaced_by_its_steady_one_after_a_call(preoptimized, roomy):
    r = Runner(Settings(model_uri=str(preoptimized.root), threads=1))
    model, _ = r.get(inference=True)
    assert model.artifact.endswith(".ort") and not model.settled
    x = {"image": np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)}
    first, before = model.session, model.run(x)
    assert entry(first, "session.use_ort_model_bytes_for_initializers") == "1"
    r.settle()
    _settled(r)
    assert model.settled and model.session is not first
    assert entry(model.session, "session.use_ort_model_bytes_for_initializers") == "0"
    assert entry(model.session, "session.disable_prepacking") in (None, "0")
    after = model.run(x)
    assert np.allclose(after[model.manifest.primary_output.name], before[model.manifest.primary_output.name],
                       atol=1e-5)
    steady = model.session
    r.settle()  # once per model
    _settled(r)
    assert model.session is steady


def test_a_settle_waits_for_free_memory_and_for_a_first_run_that_measures_it(preoptimized, monkeypatch, caplog):
    from onnxfn.runtime import memory
    r = Runner(Settings(model_uri=str(preoptimized.root), threads=1))
    model, _ = r.get(inference=True)
    first = model.session
    model.measure_first = True  # the first call's run is to measure the model's memory: not with a build beside it
    r.settle()
    assert not model.settled and model.session is first
    model.measure_first = False
    monkeypatch.setattr(memory, "limit", lambda settings=None: 512 << 20)
    monkeypatch.setattr(memory, "available", lambda limit: 0)  # nothing free
    with caplog.at_level("INFO", logger="onnxfn"):
        r.settle()
        _settled(r)
    assert model.settled and model.session is first and "session_not_settled" in caplog.text


def test_a_failed_settle_keeps_the_first_session(preoptimized, monkeypatch, caplog, roomy):
    r = Runner(Settings(model_uri=str(preoptimized.root), threads=1))
    model, _ = r.get(inference=True)
    first = model.session

    def broken(*args, **kwargs):
        raise BundleError("no memory for a second session")
    monkeypatch.setattr(sessions, "create", broken)
    with caplog.at_level("WARNING", logger="onnxfn"):
        r.settle()
        _settled(r)
    assert model.settled and model.session is first
    assert "session_not_settled" in caplog.text and "no memory for a second session" in caplog.text
    assert model.run({"image": np.zeros((1, 1, 8, 8), np.float32)})  # and it still answers


def test_a_model_without_a_packaged_cost_has_nothing_to_settle():
    r = Runner(Settings(model_uri=str(MODELS / "digits-cnn"), threads=1))  # fixed 8x8, but its cost is measured here
    model, _ = r.get()
    assert model.settled
    first = model.session
    r.settle()
    assert not any(t.name == "onnxfn-settle" for t in threading.enumerate()) and model.session is first


def entry(session, key: str) -> str | None:
    try:
        return session.get_session_options().get_session_config_entry(key)
    except Exception:  # onnxruntime raises when the key was never set
        return None


def test_a_fixed_size_portable_model_starts_at_the_basic_level_and_settles_to_all(bundles, roomy):
    r = Runner(Settings(model_uri=str(bundles["linear"]), threads=1))
    model, _ = r.get(inference=True)
    assert model.manifest.memory is not None and not model.settled  # packaged with its cost, fixed 8x8 input
    assert model.session.get_session_options().graph_optimization_level.name == "ORT_ENABLE_BASIC"
    x = {model.manifest.inputs[0].name: np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32)}
    before = model.run(x)
    r.settle()
    _settled(r)
    assert model.settled and model.session.get_session_options().graph_optimization_level.name == "ORT_ENABLE_ALL"
    after = model.run(x)
    name = model.manifest.primary_output.name
    assert np.allclose(after[name], before[name], atol=1e-5)


def test_a_portable_model_whose_cost_grows_with_its_input_has_one_session():
    r = Runner(Settings(model_uri=str(MODELS / "lesion-unet"), threads=1))
    model, _ = r.get()
    assert model.settled
    assert model.session.get_session_options().graph_optimization_level.name == "ORT_ENABLE_ALL"
