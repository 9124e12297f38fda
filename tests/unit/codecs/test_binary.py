"""binary.py: the OIP binary tensor data extension's framing, both ways: every datatype round trips, the raw
binary request, and every malformed body is a 400 naming the input (the body limit a 413)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from onnxfn.bundles.manifest import InputSpec
from onnxfn.codecs import binary, payload, tensor
from onnxfn.errors import BadRequest, PayloadTooLarge
from tests.support import tensors

NUMERIC = {"UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "INT8": "int8",
           "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32",
           "FP64": "float64"}
SAMPLES = {**tensors.SAMPLES, "FP16": np.array([[-65504.0, 0.5], [np.inf, 6e-8]], dtype=np.float16)}  # inf too
DTYPES = {**NUMERIC, "BOOL": "bool", "BYTES": "string"}


def spec(name="x", dtype="float32", shape=("N", 4)) -> InputSpec:
    return InputSpec(name=name, dtype=dtype, shape=tuple(shape))


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """A tensor's bytes as the extension lays them out, written here without the codec."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in array.reshape(-1))
    if datatype == "BOOL":
        return array.astype(np.uint8).tobytes()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def body(*tensors, header_extra=None, **extra) -> tuple[bytes, str]:
    """A binary request: (name, datatype, shape, array-or-bytes) each sent as binary; returns (body, header)."""
    inputs, chunks = [], []
    for name, datatype, shape, value in tensors:
        data = value if isinstance(value, (bytes, bytearray)) else raw_bytes(np.asarray(value), datatype)
        inputs.append({"name": name, "datatype": datatype, "shape": shape,
                       "parameters": {"binary_data_size": len(data)}})
        chunks.append(bytes(data))
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + b"".join(chunks), str(len(head))


def parse(data: bytes, header: str, *specs):
    return binary.parse_request(binary.frame(data, header), specs or (spec(),))


def refused(data: bytes, header: str, *specs) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(data, header, *specs)
    assert info.value.status == 400
    return info.value


# ------------------------------------------------------------------ round trips, every datatype

@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_every_datatype_round_trips(datatype):
    array = SAMPLES[datatype]
    data, header = body(("x", datatype, [2, 2], array))
    parsed = parse(data, header, spec(dtype=DTYPES[datatype], shape=("N", 2))).inputs["x"]
    assert parsed.shape == (2, 2) and parsed.dtype == array.dtype
    np.testing.assert_array_equal(parsed, array)
    entry, out = binary.encode("y", parsed)
    assert entry == {"name": "y", "datatype": datatype, "shape": [2, 2], "parameters": {"binary_data_size": len(out)}}
    assert out == raw_bytes(array, datatype)


def test_inputs_are_cut_in_their_order_and_json_inputs_mix_in():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    data, header = body(("a", "FP32", [2, 3], a), ("count", "INT32", [2], np.array([4, 5], dtype=np.int32)))
    document = json.loads(data[:int(header)])
    document["inputs"].insert(1, {"name": "b", "datatype": "FP32", "shape": [2, 3], "data": [1] * 6})
    head = json.dumps(document).encode()
    request = parse(head + data[int(header):], str(len(head)), spec("a", shape=("N", 3)),
                    spec("b", shape=("N", 3)), spec("count", "int32", (2,)))
    np.testing.assert_array_equal(request.inputs["a"], a)
    np.testing.assert_array_equal(request.inputs["b"], np.ones((2, 3), np.float32))
    assert request.inputs["count"].tolist() == [4, 5] and request.inputs["count"].dtype == np.int32


def test_outputs_asked_for_as_binary_and_the_id_come_through():
    data, header = body(("x", "FP32", [1, 4], np.ones((1, 4), np.float32)), id="r1",
                        outputs=[{"name": "y", "parameters": {"binary_data": True}}])
    request = parse(data, header)
    assert request.id == "r1" and request.outputs == ["y"] and request.wants_binary("y")


def test_an_empty_tensor():
    data, header = body(("x", "FP32", [0, 4], b""))
    assert parse(data, header).inputs["x"].shape == (0, 4)


def test_the_body_is_not_copied_per_tensor():
    array = np.arange(16, dtype=np.float32).reshape(4, 4)
    data, header = body(("x", "FP32", [4, 4], array))
    parsed = parse(data, header).inputs["x"]
    assert not parsed.flags.owndata  # a view of the request body


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(NUMERIC) + ["BOOL"]).flatmap(lambda dt: st.tuples(st.just(dt), hnp.arrays(
    np.dtype(DTYPES[dt]), hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)))))
def test_any_array_round_trips(case):
    datatype, array = case
    entry, out = binary.encode("y", array)
    assert entry["datatype"] == datatype and entry["shape"] == list(array.shape)
    back = binary.decode(out, datatype, list(array.shape), "y")
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=0, max_size=6))
def test_any_text_round_trips_as_bytes(values):
    array = np.array(values, dtype=object)
    entry, out = binary.encode("y", array)
    assert binary.decode(out, "BYTES", [len(values)], "y").tolist() == values


# ------------------------------------------------------------------ the raw binary request

def test_a_raw_request_deduces_the_one_dynamic_dimension():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    request = parse(array.tobytes(), "0")
    assert request.inputs["x"].shape == (3, 4) and request.binary_output and request.wants_binary("anything")
    np.testing.assert_array_equal(request.inputs["x"], array)


def test_a_raw_request_of_a_fixed_shape_and_of_bytes():
    fixed = spec(dtype="int16", shape=(2, 2))
    assert parse(np.arange(4, dtype="<i2").tobytes(), "0", fixed).inputs["x"].tolist() == [[0, 1], [2, 3]]
    assert refused(b"\x00" * 6, "0", fixed).code == "binary_size_mismatch"
    text = spec(dtype="string", shape=(1,))
    assert parse("ünï".encode(), "0", text).inputs["x"].tolist() == ["ünï"]
    assert parse(b"abc", "0", spec(dtype="string", shape=("N",))).inputs["x"].tolist() == ["abc"]


@pytest.mark.parametrize("specs, words", [
    ((spec("a"), spec("b")), ["one input", "'a'", "'b'"]),
    ((spec(shape=("N", "C")),), ["2 dynamic dimensions"]),
    ((spec(dtype="string", shape=(2,)),), ["one BYTES element"]),
    ((spec(dtype="string", shape=("N", 1)),), ["one BYTES element"]),
])
def test_a_raw_request_the_spec_does_not_allow(specs, words):
    error = refused(b"\x00" * 16, "0", *specs)
    assert error.code == "raw_binary_unsupported"
    for word in words:
        assert word in error.message


def test_a_raw_request_not_a_multiple_of_the_fixed_part():
    error = refused(b"\x00" * 10, "0")
    assert error.code == "binary_size_mismatch" and "multiple of 16" in error.message and "'x'" in error.message


# ------------------------------------------------------------------ malformed framing: a 400 naming the input

@pytest.mark.parametrize("header", ["abc", "-1", "1.5", "", " ", "0x10", "1e3",
                                    "\u00b2", "\u0661\u0662"])  # digits to str.isdigit, not to int (the fuzzer)
def test_a_header_that_is_not_a_byte_count(header):
    error = refused(b'{"inputs": []}', header)
    assert error.code == "invalid_binary_header" and repr(header) in error.message


def test_a_header_past_the_body():
    data, header = body(("x", "FP32", [1, 4], np.ones((1, 4), np.float32)))
    error = refused(data, str(len(data) + 1))
    assert error.code == "invalid_binary_header" and f"{len(data) + 1:,}" in error.message


def test_a_json_part_that_is_not_json():
    data, header = body(("x", "FP32", [1, 4], np.ones((1, 4), np.float32)))
    assert refused(data, str(int(header) - 1)).code == "invalid_json"


def test_a_size_that_runs_past_the_body():
    data, header = body(("x", "FP32", [1, 4], np.ones((1, 4), np.float32)))
    error = refused(data[:-3], header)
    assert error.code == "binary_framing" and "inputs[0] ('x')" in error.message and "only 13 bytes" in error.message


def test_bytes_left_over():
    data, header = body(("x", "FP32", [1, 4], np.ones((1, 4), np.float32)))
    error = refused(data + b"\x00\x00", header)
    assert error.code == "binary_framing" and "2 bytes are left over" in error.message and "'x' 16" in error.message


def test_binary_data_after_a_json_only_request_is_left_over():
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    error = refused(head.encode() + b"\x00" * 4, str(len(head)))
    assert error.code == "binary_framing" and "no input has binary_data_size" in error.message


@pytest.mark.parametrize("datatype, shape, size", [("FP32", [1, 4], 12), ("FP32", [2, 4], 16), ("INT64", [1, 4], 16),
                                                   ("FP16", [1, 4], 16), ("BOOL", [1, 4], 3)])
def test_a_size_that_does_not_match_shape_and_datatype(datatype, shape, size):
    data, header = body(("x", datatype, shape, b"\x00" * size))
    error = refused(data, header, spec(dtype=DTYPES[datatype]))
    assert error.code == "binary_size_mismatch" and "inputs[0] ('x')" in error.message
    assert f"{size:,} bytes" in error.message and datatype in error.message


@pytest.mark.parametrize("payload, words", [
    (struct.pack("<I", 1) + b"a" + struct.pack("<I", 5) + b"bc", ["element 1 says 5 bytes", "only 2 remain"]),
    (struct.pack("<I", 1) + b"a", ["ends at element 1"]),
    (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"zz", ["take 9 bytes", "has 11"]),
    (struct.pack("<I", 1) + b"a" + b"\x00\x00", ["ends at element 1"]),
])
def test_malformed_bytes_elements(payload, words):
    error = refused(*body(("x", "BYTES", [2], payload)), spec(dtype="string", shape=(2,)))
    assert error.code == "binary_size_mismatch" and "'x'" in error.message
    for word in words:
        assert word in error.message


def test_bytes_that_are_not_text_and_bools_that_are_not_0_or_1():
    error = refused(*body(("x", "BYTES", [1], struct.pack("<I", 2) + b"\xff\xfe")), spec(dtype="string", shape=(1,)))
    assert error.code == "invalid_data" and "UTF-8" in error.message and "'x'" in error.message
    error = refused(*body(("x", "BOOL", [2], b"\x01\x02")), spec(dtype="bool", shape=(2,)))
    assert error.code == "invalid_data" and "0 or 1" in error.message and "'x'" in error.message


@pytest.mark.parametrize("size", [-1, 1.5, "16", True, None])
def test_a_binary_data_size_that_is_not_a_byte_count(size):
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                   "parameters": {"binary_data_size": size}}]}).encode()
    error = refused(head + b"\x00" * 16, str(len(head)))
    assert error.code == "binary_framing" and "inputs[0] ('x')" in error.message


def test_binary_data_size_and_data_together():
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4],
                                   "parameters": {"binary_data_size": 16}}]}).encode()
    error = refused(head + b"\x00" * 16, str(len(head)))
    assert error.code == "binary_framing" and "both `data` and binary_data_size" in error.message


def test_name_datatype_and_shape_are_checked_as_for_json():
    assert refused(*body(("nope", "FP32", [1, 4], b"\x00" * 16))).code == "unknown_input"
    assert refused(*body(("x", "FP64", [1, 4], b"\x00" * 32))).code == "wrong_datatype"
    assert refused(*body(("x", "FP32", [1, 5], b"\x00" * 20))).code == "wrong_shape"
    assert refused(*body(("x", "FP32", [1, 4], b"\x00" * 16)), spec(), spec("y")).code == "missing_input"
    head = b'["not", "a", "request"]'
    assert refused(head, str(len(head))).code == "invalid_request"


def test_the_body_limit_is_a_413():
    framed = binary.frame(b"\x00" * 100, "0")
    payload.check_size(framed.body, 100)  # the one body limit, binary bodies included
    with pytest.raises(PayloadTooLarge) as info:
        payload.check_size(framed.body, 99)
    assert info.value.status == 413 and info.value.code == "body_too_large" and "ONNXFN_MAX_BODY_BYTES" in info.value.message


# ------------------------------------------------------------------ what tritonclient sends and reads

def test_tritonclient_requests_parse_and_our_answers_read_back():
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.http._utils import _get_inference_request
    arrays = {dt: SAMPLES[dt] for dt in SAMPLES}
    inputs = []
    for dt, array in arrays.items():
        item = httpclient.InferInput(dt.lower(), list(array.shape), dt)
        item.set_data_from_numpy(array.astype(np.object_) if dt == "BYTES" else array, binary_data=True)
        inputs.append(item)
    data, size = _get_inference_request(inputs, "", None, 0, False, False, 0, None, None)
    specs = tuple(spec(dt.lower(), DTYPES[dt], (2, 2)) for dt in arrays)
    request = parse(data, str(size), *specs)
    assert request.binary_output  # no outputs named: tritonclient asks for all as binary
    for dt, array in arrays.items():
        np.testing.assert_array_equal(request.inputs[dt.lower()], array)
    entries, chunks = zip(*(binary.encode(dt.lower(), request.inputs[dt.lower()]) for dt in arrays))
    head = json.dumps({"model_name": "m", "outputs": list(entries)}).encode()
    result = httpclient.InferResult.from_response_body(head + b"".join(chunks), header_length=len(head))
    for dt, array in arrays.items():
        got = result.as_numpy(dt.lower())
        expected = np.array([v.encode() for v in array.reshape(-1)], dtype=object).reshape(2, 2) \
            if dt == "BYTES" else array
        np.testing.assert_array_equal(got, expected)


def test_tensor_codec_and_binary_codec_agree_on_datatypes():
    for dt, array in SAMPLES.items():
        assert binary.encode("y", array)[0]["datatype"] == tensor.encode("y", array)["datatype"] == dt
