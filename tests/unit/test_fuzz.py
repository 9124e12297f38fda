"""The fuzzer's generators (bench/reliability/fuzz.py) driven by hypothesis, derandomized: every input answers
with a clean onnxfn error or 200, through the app (direct invocation and API Gateway, through the fdk's request
handling) and through the decoders; and the saved reproducers in tests/data/fuzz replay without a crash."""
from __future__ import annotations

import json
import logging
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bench.reliability import fuzz

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=40,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    logger, root = logging.getLogger("onnxfn"), logging.getLogger()
    level, root_level, root_handlers = logger.level, root.level, root.handlers[:]
    harness = fuzz.Harness(events=False, cache_dir=str(tmp_path_factory.mktemp("cache")), quiet=False)
    yield harness
    harness.close()
    logger.setLevel(level)  # the apps set it from their settings
    root.setLevel(root_level)  # the fdk, imported by the harness, sets the root logger up: later tests expect none
    root.handlers[:] = root_handlers


def check(harness, case: fuzz.Case) -> fuzz.Outcome:
    outcome = harness.run(case)
    assert outcome.crash is None, f"{case.generator} via {case.target}: {outcome.crash}\n{outcome.detail}"
    assert 200 <= outcome.status < 500
    return outcome


@pytest.mark.parametrize("name", sorted(fuzz.GENERATORS))
def test_generated_inputs_never_crash(harness, name):
    outcomes = []

    @FAST
    @given(rng=st.randoms(use_true_random=False))
    def one(rng):
        outcomes.append(check(harness, fuzz.GENERATORS[name](rng)))
    one()
    assert len(outcomes) >= 40


def test_generation_is_reproducible_from_seed_and_index():
    first, again = fuzz.generate(1, 123), fuzz.generate(1, 123)
    assert first == again and fuzz.generate(1, 124) != first


def test_what_counts_as_a_crash(harness, tmp_path):
    case = fuzz.Case("oip", "direct", body=b"{}")
    assert harness._judge(case, 200, b'{"error": "no", "code": "invalid_json", "status": 400}', {}).crash is None
    assert harness._judge(case, 200, b'{"error": "x", "code": "internal_error", "status": 500}', {}).crash
    assert harness._judge(case, 200, b"Traceback (most recent call last)", {}).crash      # not JSON
    assert harness._judge(case, 502, b'{"objects": []}', {}).crash                        # the fdk's 502
    gateway = fuzz.Case("route", "gateway")
    assert harness._judge(gateway, 503, b'{"error": "x", "code": "unavailable", "status": 503}', {}).crash
    path = fuzz.save(case, fuzz.Outcome(500, "internal_error", "500 internal_error", "trace"), tmp_path, "oip-1-7")
    assert fuzz.load(path) == case and json.loads(path.read_text())["crash"] == "500 internal_error"


def test_mutation_changes_bytes_deterministically():
    data = bytes(range(256)) * 4
    a, b = fuzz.mutate(random.Random(5), data), fuzz.mutate(random.Random(5), data)
    assert a == b and a != data


def reproducers():
    """tests/data/fuzz: inputs the fuzzer found crashing; those still open say why (`open`) and are xfail."""
    for path in sorted(fuzz.SEEDS.glob("*.json")):
        reason = json.loads(path.read_text()).get("open")
        yield pytest.param(path, id=path.stem, marks=[pytest.mark.xfail(reason=reason, strict=True)] if reason else [])


@pytest.mark.parametrize("path", reproducers())
def test_saved_reproducers_replay_cleanly(harness, path):
    check(harness, fuzz.load(path))
