"""tensor.py: Open Inference Protocol v2 JSON tensors <-> numpy, checked against the
model's inputs, with every refusal naming the tensor and what was wrong."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from onnxfn.codecs import tensor
from onnxfn.errors import BadRequest
from onnxfn.bundles.manifest import InputSpec

INTEGERS = ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"]
FLOATS = ["float16", "float32", "float64"]


def spec(name="x", dtype="float32", shape=("N", 4)) -> InputSpec:
    return InputSpec(name=name, dtype=dtype, shape=tuple(shape))


def request(*tensors, **extra) -> dict:
    return {"inputs": [dict(name=n, datatype=d, shape=s, data=v) for n, d, s, v in tensors], **extra}


def parse(body, *specs):
    return tensor.parse_request(body, specs or (spec(),))


def refused(body, *specs) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(body, *specs)
    assert info.value.status == 400
    return info.value


# ------------------------------------------------------------------ every datatype

SAMPLES = {
    "BOOL": ("bool", [True, False, False, True]),
    "UINT8": ("uint8", [0, 1, 254, 255]),
    "UINT16": ("uint16", [0, 1, 65534, 65535]),
    "UINT32": ("uint32", [0, 1, 2**32 - 2, 2**32 - 1]),
    "UINT64": ("uint64", [0, 1, 2**63, 2**64 - 1]),
    "INT8": ("int8", [-128, -1, 0, 127]),
    "INT16": ("int16", [-32768, -1, 0, 32767]),
    "INT32": ("int32", [-2**31, -1, 0, 2**31 - 1]),
    "INT64": ("int64", [-2**63, -1, 0, 2**63 - 1]),
    "FP16": ("float16", [-65504.0, 0.5, 0.000244140625, 65504.0]),
    "FP32": ("float32", [-3.5, 0.0, 1e-30, 3.0e38]),
    "FP64": ("float64", [-1e300, 0.1, 5e-324, 1e300]),
    "BYTES": ("string", ["a", "", "ünï", "longer text"]),
}


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_every_datatype_flat_and_nested(datatype):
    dtype, values = SAMPLES[datatype]
    s = spec(dtype=dtype, shape=("N", 2))
    flat = parse(request(("x", datatype, [2, 2], values)), s).inputs["x"]
    nested = parse(request(("x", datatype, [2, 2], [values[:2], values[2:]])), s).inputs["x"]
    expected_dtype = np.dtype(object) if dtype == "string" else np.dtype(dtype)
    assert flat.dtype == expected_dtype and flat.shape == (2, 2)
    assert flat.reshape(-1).tolist() == [np.dtype(dtype).type(v).item() if dtype != "string" else v for v in values]
    np.testing.assert_array_equal(flat, nested)


def test_datatype_names():
    for oip, numpy_name in tensor.OIP_TO_NUMPY.items():
        assert tensor.datatype(numpy_name) == oip
    assert tensor.datatype("float32") == "FP32" and tensor.datatype("string") == "BYTES"


def test_deeply_nested_data_is_flattened_in_order():
    s = spec(dtype="int32", shape=(2, 2, 2))
    result = parse(request(("x", "INT32", [2, 2, 2], [[[1, 2], [3, 4]], [[5, 6], [7, 8]]])), s).inputs["x"]
    np.testing.assert_array_equal(result.reshape(-1), np.arange(1, 9))


def test_nested_strings():
    s = spec(dtype="string", shape=(2, 1))
    result = parse(request(("x", "BYTES", [2, 1], [["a"], ["b"]])), s).inputs["x"]
    assert result.tolist() == [["a"], ["b"]]


def test_empty_tensor():
    result = parse(request(("x", "INT64", [0, 3], [])), spec(dtype="int64", shape=("N", 3))).inputs["x"]
    assert result.shape == (0, 3) and result.dtype == np.int64


def test_integers_for_a_float_input_are_converted():
    result = parse(request(("x", "FP32", [1, 4], [1, 2, 3, 2**70]))).inputs["x"]
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, [[1, 2, 3, 2.0**70]])


# ------------------------------------------------------------------ refused data

def test_a_dimension_named_k_times_a_symbol_takes_multiples_of_k():
    # found by the fuzzer: lesion-unet's [batch, 1, "4*h4", "4*w4"] took 3x7 and onnxruntime failed (a 500)
    unet = spec(name="image", shape=("batch", 1, "4*h4", "4*w4"))
    assert parse(request(("image", "FP32", [1, 1, 4, 8], [0.0] * 32)), unet).inputs["image"].shape == (1, 1, 4, 8)
    with pytest.raises(BadRequest, match="multiple of 4") as e:
        parse(request(("image", "FP32", [1, 1, 3, 8], [0.0] * 24)), unet)
    assert e.value.code == "wrong_shape" and "dimension 2" in e.value.message
    assert [tensor.multiple(d) for d in ("4*h4", "16 * w", "batch", "h*4", 8)] == [4, 16, 1, 1, 1]
    with pytest.raises(BadRequest, match="positive multiple of 4"):  # an empty image: onnxruntime's Conv fails
        parse(request(("image", "FP32", [0, 1, 0, 40], [])), unet)


@pytest.mark.parametrize("tensor_, code", [
    (("image", "FP32", [0, 1, 2 ** 63, 8], []), "shape_mismatch"),  # numpy: "Maximum allowed dimension exceeded"
    (({}, "FP32", [1, 4], [1, 2, 3, 4]), "unknown_input"),           # a name that is not hashable
    ((["x"], "FP32", [1, 4], [1, 2, 3, 4]), "unknown_input"),
])
def test_shapes_and_names_that_crashed_are_refused(tensor_, code):
    # found by the fuzzer: each was a 500 (ValueError, TypeError)
    with pytest.raises(BadRequest) as e:
        parse(request(tensor_), spec(name="image", shape=("batch", 1, "h", 8)), spec())
    assert e.value.code == code


@pytest.mark.parametrize("dtype", INTEGERS)
def test_integers_out_of_range(dtype):
    info = np.iinfo(dtype)
    oip = tensor.datatype(dtype)
    s = spec(dtype=dtype, shape=(1,))
    for bad in (int(info.min) - 1, int(info.max) + 1):
        error = refused(request(("x", oip, [1], [bad])), s)
        assert error.code == "invalid_data"
        assert f"outside the {dtype} range [{info.min}, {info.max}]" in error.message
        assert "inputs[0] ('x')" in error.message


@pytest.mark.parametrize("dtype,value", [("float16", 70000.0), ("float16", -1e5), ("float32", 1e39)])
def test_floats_out_of_range_are_refused_not_made_infinite(dtype, value):
    error = refused(request(("x", tensor.datatype(dtype), [1], [value])), spec(dtype=dtype, shape=(1,)))
    assert error.code == "invalid_data" and f"outside the {dtype} range" in error.message


@pytest.mark.parametrize("dtype", INTEGERS)
def test_fractions_for_integer_inputs(dtype):
    error = refused(request(("x", tensor.datatype(dtype), [2], [1, 2.5])), spec(dtype=dtype, shape=(2,)))
    assert error.code == "invalid_data" and "whole numbers" in error.message


@pytest.mark.parametrize("values", [["1.5", "2"], [None, 1.0], [{"v": 1}, 2.0], [True, False], [[1], ["a"]]])
def test_values_that_are_not_numbers(values):
    error = refused(request(("x", "FP32", [2], values)), spec(shape=(2,)))
    assert error.code == "invalid_data" and "values must be numbers" in error.message


@pytest.mark.parametrize("values", [[1, 0], [1.0, 0.0], ["true", "false"]])
def test_bool_input_takes_true_and_false_only(values):
    error = refused(request(("x", "BOOL", [2], values)), spec(dtype="bool", shape=(2,)))
    assert error.code == "invalid_data" and "true/false" in error.message


def test_bytes_input_takes_strings_only():
    error = refused(request(("x", "BYTES", [2], ["a", 1])), spec(dtype="string", shape=(2,)))
    assert error.code == "invalid_data" and "must be strings" in error.message


@pytest.mark.parametrize("values", [[[1, 2], [3]], [[1, 2], 3], [1, [2, 3]]])
def test_ragged_data(values):
    error = refused(request(("x", "FP32", [3], values)), spec(shape=(3,)))
    assert error.code == "invalid_data" and "FP32" in error.message


@pytest.mark.parametrize("data", ["1,2,3,4", 5, {"values": [1]}, None])
def test_data_must_be_a_list(data):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], **({} if data is None else {"data": data})}]}
    error = refused(body)
    assert error.code == "invalid_data" and "`data`" in error.message


def test_data_count_must_match_the_shape():
    error = refused(request(("x", "FP32", [2, 4], [1, 2, 3])))
    assert error.code == "shape_mismatch"
    assert "has 3 values but shape [2, 4] needs 8" in error.message


def test_a_shape_too_large_to_count_is_a_mismatch_not_a_crash():
    s = spec(shape=("N", "M"))
    for shape in ([2**62, 4], [2**64, 3]):
        assert refused(request(("x", "FP32", shape, [])), s).code == "shape_mismatch"


@pytest.mark.parametrize("shape", [[1, -4], [1, 4.0], [True, 4], "1x4", None])
def test_shape_must_be_non_negative_whole_numbers(shape):
    assert refused(request(("x", "FP32", shape, [1, 2, 3, 4]))).code == "invalid_shape"


def test_rank_must_match_the_model():
    error = refused(request(("x", "FP32", [4], [1, 2, 3, 4])))
    assert error.code == "wrong_shape"
    assert "[4] (1 dimensions)" in error.message and "2 dimensions [-1, 4]" in error.message


def test_fixed_sizes_must_match_and_dynamic_ones_are_free():
    error = refused(request(("x", "FP32", [1, 3], [1, 2, 3])))
    assert error.code == "wrong_shape" and "size 3 in dimension 1, the model takes 4" in error.message
    assert parse(request(("x", "FP32", [3, 4], list(range(12))))).inputs["x"].shape == (3, 4)


# ------------------------------------------------------------------ the request around the tensors

def test_unknown_input_name():
    error = refused(request(("y", "FP32", [1, 4], [1, 2, 3, 4])), spec("x"), spec("z"))
    assert error.code == "unknown_input"
    assert "'y'" in error.message and "'x', 'z'" in error.message


def test_missing_input():
    error = refused(request(("x", "FP32", [1, 4], [1, 2, 3, 4])), spec("x"), spec("count", "int32", (2,)))
    assert error.code == "missing_input" and "'count'" in error.message


def test_repeated_input():
    t = ("x", "FP32", [1, 4], [1, 2, 3, 4])
    error = refused(request(t, t))
    assert error.code == "invalid_request" and "inputs[1] repeats input 'x'" in error.message


def test_wrong_datatype():
    error = refused(request(("x", "FP64", [1, 4], [1, 2, 3, 4])))
    assert error.code == "wrong_datatype" and "is FP64 but the model takes FP32" in error.message


@pytest.mark.parametrize("datatype", ["FLOAT", "fp32", None, 7])
def test_unknown_datatype(datatype):
    error = refused(request(("x", datatype, [1, 4], [1, 2, 3, 4])))
    assert error.code == "invalid_datatype" and "FP32" in error.message and repr(datatype) in error.message


def test_binary_data_size_without_binary_data_is_refused_by_name():
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]}
    error = refused(body)
    assert error.code == "binary_framing" and "'x'" in error.message
    assert "Inference-Header-Content-Length" in error.message


def test_binary_outputs_asked_for_per_output_or_for_all():
    base = request(("x", "FP32", [1, 4], [1, 2, 3, 4]))
    assert not parse(base).wants_binary("y")
    asked = parse({**base, "parameters": {"binary_data_output": True},
                   "outputs": [{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}]})
    assert asked.wants_binary("y") and not asked.wants_binary("z") and asked.wants_binary("other")
    one = parse({**base, "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}]})
    assert one.wants_binary("y") and not one.wants_binary("z")
    assert refused({**base, "parameters": {"binary_data_output": "yes"}}).code == "invalid_request"
    error = refused({**base, "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]})
    assert error.code == "invalid_request" and "'y'" in error.message


@pytest.mark.parametrize("body", [[], "x", None, {}, {"inputs": []}, {"inputs": {"x": 1}}, {"inputs": ["x"]}])
def test_malformed_requests(body):
    assert refused(body).code == "invalid_request"


def test_outputs_and_id():
    body = request(("x", "FP32", [1, 4], [1, 2, 3, 4]), outputs=[{"name": "b"}, {"name": "a"}], id="req-1")
    parsed = parse(body)
    assert parsed.outputs == ["b", "a"] and parsed.id == "req-1"
    plain = parse(request(("x", "FP32", [1, 4], [1, 2, 3, 4]), id=42))
    assert plain.outputs is None and plain.id is None


@pytest.mark.parametrize("outputs", [{"name": "a"}, [{"id": "a"}], ["a"], [{"name": 3}]])
def test_malformed_outputs(outputs):
    error = refused(request(("x", "FP32", [1, 4], [1, 2, 3, 4]), outputs=outputs))
    assert error.code == "invalid_request" and "`outputs`" in error.message


def test_two_inputs_of_different_datatypes():
    specs = (spec("a", "float32", ("N", 3)), spec("count", "int32", (2,)))
    parsed = parse(request(("count", "INT32", [2], [7, -7]), ("a", "FP32", [1, 3], [0.5, 1, 2])), *specs)
    assert parsed.inputs["a"].dtype == np.float32 and parsed.inputs["count"].dtype == np.int32
    np.testing.assert_array_equal(parsed.inputs["count"], [7, -7])


# ------------------------------------------------------------------ encoding outputs

def test_encode_numbers():
    assert tensor.encode("y", np.array([[1.5, 2.0]], dtype=np.float32)) == \
        {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}
    assert tensor.encode("c", np.array([3, 4], dtype=np.int64))["datatype"] == "INT64"
    assert tensor.encode("b", np.array([True]))["datatype"] == "BOOL"
    assert tensor.encode("s", np.float64(2.5)) == {"name": "s", "datatype": "FP64", "shape": [], "data": [2.5]}


@pytest.mark.parametrize("array", [np.array(["a", "bé"]), np.array([b"a", "bé".encode()], dtype=object),
                                   np.array([b"a", b"b\xc3\xa9"]), np.array(["a", "bé"], dtype=object)])
def test_encode_strings(array):
    assert tensor.encode("s", array) == {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "bé"]}


def test_shape_of_marks_dynamic_dimensions():
    assert tensor.shape_of(["N", 3, None, -1, 0, 224]) == [-1, 3, -1, -1, -1, 224]


def elements(dtype: str):
    if dtype == "bool":
        return st.booleans()
    if dtype in FLOATS:
        return st.floats(allow_nan=False, allow_infinity=False, width=int(dtype[5:]))
    return None  # hypothesis' own range for the integer dtype


@settings(max_examples=120, deadline=None)
@given(dtype=st.sampled_from(["bool"] + INTEGERS + FLOATS), data=st.data())
def test_encode_then_parse_round_trips_through_json(dtype, data):
    array = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
                                 elements=elements(dtype)))
    document = json.loads(json.dumps({"inputs": [tensor.encode("x", array)]}))
    parsed = tensor.parse_request(document, (spec("x", dtype, tuple(f"d{i}" for i in range(array.ndim))),))
    result = parsed.inputs["x"]
    assert result.dtype == array.dtype and result.shape == array.shape
    np.testing.assert_array_equal(result, array)
    if dtype in FLOATS:  # bit for bit, signed zeros included
        assert result.tobytes() == array.tobytes()


@settings(max_examples=100, deadline=None)
@given(array=hnp.arrays(object, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), elements=st.text(max_size=8)))
def test_strings_round_trip_through_json(array):
    document = json.loads(json.dumps({"inputs": [tensor.encode("x", array)]}))
    result = tensor.parse_request(document, (spec("x", "string", ("a",) * array.ndim),)).inputs["x"]
    assert result.shape == array.shape and result.tolist() == array.tolist()
