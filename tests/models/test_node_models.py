"""ONNX's own operator tests (the node test cases onnx generates, `collect_testcases`) whose models take
inputs that carry sizes, scales, axes, shapes or indices: zeros are no input for them, so the packager's
warm-up on zeros fails and says to pass `--example`. Each is packaged here with `--example` made from the
case's own inputs, served under the real fdk, called on `/v2/models/{name}/infer` with the case's inputs as
OIP JSON, and must answer exactly what onnxruntime answers in-process (dtype, shape, values), and what the
node test expects within its tolerance (rtol 1e-3, atol 1e-7).

The selection is computed, not listed (see `select`): a name prefix of those kinds, a model onnxruntime
loads and runs on the case's first data set, answering what the case expects (within its tolerance), and that onnxruntime fails to run on the zeros the packager's
warm-up would feed (the model's static sizes, 1 for a symbolic one or, as `package.describe` declares it,
for a size 0)."""
from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnxfn.errors import BundleError  # noqa: E402
from onnxfn.tools.package import Options, build, describe  # noqa: E402

# the kinds whose inputs carry sizes, scales, axes, shapes or indices (by onnx's test names)
PREFIXES = ("test_resize_", "test_unsqueeze", "test_squeeze", "test_slice", "test_onehot", "test_gather",
            "test_expand", "test_tile", "test_reshape", "test_reduce_")
# some the selection must hold (one per kind that fails on zeros with this onnxruntime)
EXPECTED = {"test_resize_upsample_scales_nearest", "test_resize_downsample_sizes_cubic", "test_reshape_reduced_dims",
            "test_slice", "test_slice_neg_steps", "test_unsqueeze_two_axes", "test_expand_dim_changed",
            "test_onehot_with_axis"}
OIP = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
       np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8",
       np.dtype(np.int8): "INT8", np.dtype(np.float16): "FP16"}
NUMPY = {v: k for k, v in OIP.items()}
RTOL, ATOL = 1e-3, 1e-7  # the node tests' usual tolerance (onnx.backend.test.runner)


@dataclass
class Case:
    name: str
    model: bytes
    inputs: dict[str, np.ndarray]
    expected: list[np.ndarray]    # the node test's outputs
    reference: dict[str, np.ndarray]  # onnxruntime's, in-process, on the same inputs
    zeros_error: str              # onnxruntime's error on the warm-up's zeros


def _session(model: bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # the failures on zeros are expected: no red lines
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _warmup_zeros(path: Path) -> dict[str, np.ndarray]:
    """The zeros onnxfn's warm-up feeds without an example: the shapes `onnxfn package` declares (a size
    that is symbolic or 0 becomes -1), with 1 for each -1 (runtime.model.example)."""
    inputs, _ = describe(path)
    return {i["name"]: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i["shape"]], i["dtype"])
            for i in inputs}


def _agree(got: list[np.ndarray], expected: list[np.ndarray]) -> bool:
    try:
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
        return True
    except AssertionError:
        return False


def select(root: Path) -> tuple[list[Case], dict[str, str]]:
    """The cases of the kinds above (by name prefix) that onnxruntime can load and run on their first
    data set and answers as the node test expects (within its tolerance: onnxruntime departs from some Resize modes),
    and that onnxruntime cannot run on the warm-up's zeros; and why each other one was left out."""
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx's generators overflow casts on purpose
        cases = sorted((c for c in collect_testcases(None) if c.name.startswith(PREFIXES)), key=lambda c: c.name)
    chosen, left = [], {}
    for c in cases:
        model = c.model.SerializeToString()
        given, expected = ([np.asarray(a) for a in arrays] for arrays in c.data_sets[0])  # some are numpy scalars
        try:
            session = _session(model)
            names = [i.name for i in session.get_inputs()]
            if len(names) != len(given):
                left[c.name] = f"{len(given)} arrays for inputs {names}"
                continue
            inputs = dict(zip(names, given))
            reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
        except Exception as e:  # onnxruntime's own types; and its binding's, for inputs it cannot take
            left[c.name] = f"onnxruntime cannot run it: {str(e).splitlines()[0][:120]}"
            continue
        if not _agree(list(reference.values()), list(expected)):
            left[c.name] = "onnxruntime's answer is not the node test's (beyond rtol 1e-3, atol 1e-7)"
            continue
        path = root / f"{c.name}.onnx"
        path.write_bytes(model)
        try:
            session.run(None, _warmup_zeros(path))
        except Exception as e:
            chosen.append(Case(c.name, model, inputs, list(expected), reference, str(e)))
            continue
        left[c.name] = "runs on zeros"
    return chosen, left


def _oip(array: np.ndarray, name: str) -> dict:
    return {"name": name, "datatype": OIP[array.dtype], "shape": list(array.shape), "data": array.reshape(-1).tolist()}


def _array(output: dict) -> np.ndarray:
    data = np.array(output["data"], dtype=NUMPY[output["datatype"]])
    return data.reshape(output["shape"])


with tempfile.TemporaryDirectory(prefix="onnxfn-node-select-") as _root:
    CASES, LEFT = select(Path(_root))
BY_NAME = {c.name: c for c in CASES}
NAMES = [c.name for c in CASES]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> dict[str, dict]:
    """Each case packaged twice as a tensor bundle: on zeros (the error) and with `--example` (the bundle)."""
    root = tmp_path_factory.mktemp("node-models")
    out = {}
    for c in CASES:
        model = root / f"{c.name}.onnx"
        model.write_bytes(c.model)
        result = {}
        try:
            build(model, root / f"{c.name}-zeros", Options(name=c.name, task="tensor"))
            result["zeros"] = None
        except BundleError as e:
            result["zeros"] = e
        np.savez(root / f"{c.name}.npz", **c.inputs)
        try:
            result["bundle"] = build(model, root / c.name,
                                     Options(name=c.name, task="tensor", example=root / f"{c.name}.npz")).root
        except Exception as e:  # reported per case by the test, with the error
            result["bundle"] = e
        out[c.name] = result
    return out


def test_the_selection():
    assert len(CASES) >= 14, (NAMES, LEFT)
    assert EXPECTED <= set(NAMES), (sorted(EXPECTED - set(NAMES)), LEFT)
    kinds = {n.split("_")[1] for n in NAMES}
    assert {"resize", "reshape", "slice", "unsqueeze", "expand", "onehot"} <= kinds, kinds
    # nothing left out silently: each other case of those kinds has one of the rule's reasons
    assert not set(NAMES) & set(LEFT) and {"test_squeeze", "test_tile", "test_gather_0"} <= set(LEFT)
    assert all(why == "runs on zeros" or why.startswith(("onnxruntime cannot run it", "onnxruntime's answer"))
               for why in LEFT.values()), LEFT


@pytest.mark.parametrize("name", NAMES)
def test_without_an_example_packaging_fails_and_says_to_pass_one(packaged, name):
    error = packaged[name]["zeros"]
    assert error is not None, f"{name} packaged on zeros, which onnxruntime cannot run: {BY_NAME[name].zeros_error}"
    assert error.code == "warmup_failed"
    assert "zeros" in error.message and "--example FILE.npz" in error.message, error.message


@pytest.mark.parametrize("name", NAMES)
def test_with_an_example_it_packages_and_answers_as_onnxruntime(packaged, function, name):
    case, bundle = BY_NAME[name], packaged[name]["bundle"]
    assert not isinstance(bundle, Exception), f"{name} did not package with --example: {bundle!r}"
    assert (bundle / "example.npz").is_file()
    fn = function({"MODEL_URI": str(bundle)})
    body = json.dumps({"inputs": [_oip(a, n) for n, a in case.inputs.items()]}).encode()
    reply = fn.call(body, "application/json", method="POST", url=f"/v2/models/{name}/infer")
    assert reply.http_status == 200, reply.body[:2000]
    answer = reply.json()
    assert answer["model_name"] == name
    got = {o["name"]: _array(o) for o in answer["outputs"]}
    assert list(got) == list(case.reference)
    for (out, want), expected in zip(case.reference.items(), case.expected):
        assert got[out].dtype == want.dtype and got[out].shape == want.shape, (out, got[out].dtype, got[out].shape)
        np.testing.assert_array_equal(got[out], want, err_msg=out)
        np.testing.assert_allclose(got[out], expected, rtol=RTOL, atol=ATOL, err_msg=out)
