"""Open Inference Protocol v2 tensors in JSON <-> numpy arrays (the binary extension's framing is in
`codecs.binary`, which hands its tensors' bytes to `parse_request`)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxfn.errors import BadRequest
from onnxfn.bundles.manifest import InputSpec

OIP_TO_NUMPY = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
                "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
                "FP32": "float32", "FP64": "float64", "BYTES": "string"}
NUMPY_TO_OIP = {v: k for k, v in OIP_TO_NUMPY.items()}


@dataclass
class InferRequest:
    """An OIP request, checked: one array per model input by name, the outputs asked for (None: all), its id, and
    which outputs the answer carries as binary data (the binary extension): `binary` holds each output's own
    `binary_data`, `binary_output` the request's `binary_data_output` for the others."""
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    id: str | None = None
    binary: dict[str, bool] = field(default_factory=dict)
    binary_output: bool = False

    def wants_binary(self, name: str) -> bool:
        """Whether output `name` goes back as binary data."""
        return self.binary.get(name, self.binary_output)


def datatype(dtype: str) -> str:
    """The OIP datatype of a manifest dtype (float32 -> FP32, string -> BYTES)."""
    return NUMPY_TO_OIP[dtype]


def parse_request(body: Any, specs: tuple[InputSpec, ...], binary: dict | None = None) -> InferRequest:
    """Check an OIP request against the model's inputs and build its arrays. `binary` (from `codecs.binary`)
    maps the index of each input sent as binary data to its bytes; without it, `binary_data_size` is refused."""
    if not isinstance(body, dict):
        raise BadRequest("an inference request must be a JSON object with an `inputs` list", code="invalid_request")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("the request's `inputs` must be a non-empty list of tensors", code="invalid_request")
    known = {s.name: s for s in specs}
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise BadRequest(f"{where} must be an object with name, shape, datatype and data", code="invalid_request")
        name = tensor.get("name")
        if not isinstance(name, str) or name not in known:  # a list or object name is not hashable
            raise BadRequest(f"{where} names input {name!r}, which this model does not have; "
                             f"its inputs are {', '.join(repr(n) for n in known)}", code="unknown_input")
        if name in arrays:
            raise BadRequest(f"{where} repeats input {name!r}", code="invalid_request")
        raw = (binary or {}).get(i)
        if raw is None and isinstance(tensor.get("parameters"), dict) and "binary_data_size" in tensor["parameters"]:
            raise BadRequest(f"{where} ({name!r}) has binary_data_size but the request carries no binary data: "
                             "send the Inference-Header-Content-Length header (the JSON part's length in bytes) and "
                             "the tensor's bytes after the JSON, or send `data` as JSON", code="binary_framing")
        arrays[name] = _array(tensor, known[name], f"{where} ({name!r})", raw)
    missing = [n for n in known if n not in arrays]
    if missing:
        raise BadRequest(f"the request lacks input(s) {', '.join(repr(n) for n in missing)}", code="missing_input")
    outputs = body.get("outputs")
    names = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise BadRequest("the request's `outputs` must be a list of objects with a `name`", code="invalid_request")
        names = [o["name"] for o in outputs]
    wanted = {}
    for o in outputs or ():
        flag = o.get("parameters", {}).get("binary_data") if isinstance(o.get("parameters"), dict) else None
        if flag is not None:
            wanted[o["name"]] = _flag(flag, f"output {o['name']!r}'s binary_data")
    params = body.get("parameters")
    default = params.get("binary_data_output") if isinstance(params, dict) else None
    rid = body.get("id")
    return InferRequest(arrays, names, rid if isinstance(rid, str) else None, wanted,
                        _flag(default, "the request's binary_data_output") if default is not None else False)


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} is {value!r}; it must be true or false", code="invalid_request")
    return value


def _array(tensor: dict, spec: InputSpec, where: str, raw=None) -> np.ndarray:
    dt = tensor.get("datatype")
    expected = datatype(spec.dtype)
    if dt not in OIP_TO_NUMPY:
        raise BadRequest(f"{where} has datatype {dt!r}; OIP datatypes are {', '.join(OIP_TO_NUMPY)}",
                         code="invalid_datatype")
    if dt != expected:
        raise BadRequest(f"{where} is {dt} but the model takes {expected}", code="wrong_datatype")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise BadRequest(f"{where} needs `shape`, a list of non-negative whole numbers", code="invalid_shape")
    if any(d >= 2 ** 63 for d in shape):  # no data can fill it; numpy cannot even make an empty array of it
        raise BadRequest(f"{where} has shape {shape}, a dimension past 2**63 - 1: no tensor has that shape",
                         code="shape_mismatch")
    if len(shape) != len(spec.shape):
        raise BadRequest(f"{where} has shape {shape} ({len(shape)} dimensions) but the model takes "
                         f"{len(spec.shape)} dimensions {_show(spec.shape)}", code="wrong_shape")
    for axis, (got, want) in enumerate(zip(shape, spec.shape)):
        if isinstance(want, int) and got != want:
            raise BadRequest(f"{where} has size {got} in dimension {axis}, the model takes {want} "
                             f"(shape {_show(spec.shape)})", code="wrong_shape")
        step = multiple(want)
        if step > 1 and (got % step or not got):
            raise BadRequest(f"{where} has size {got} in dimension {axis}, the model takes a positive multiple of "
                             f"{step} there (dimension {want!r})", code="wrong_shape")
    if raw is not None:
        from onnxfn.codecs import binary
        return binary.decode(raw, dt, shape, where)
    data = tensor.get("data")
    if not isinstance(data, list):
        raise BadRequest(f"{where} needs `data`, a list of values", code="invalid_data")
    try:
        if dt == "BYTES":
            flat = np.array(_flatten(data), dtype=object)
            if not all(isinstance(v, str) for v in flat):
                raise TypeError("BYTES elements must be strings")
        else:
            flat = np.asarray(data)
            if flat.dtype == object or flat.dtype.kind == "f" and np.dtype(spec.dtype).kind in "iu":
                flat = _exact_integers(data, flat, spec.dtype)
            if flat.dtype.kind not in "biuf" or (dt == "BOOL") != (flat.dtype == np.bool_) and flat.size:
                raise TypeError(f"values must be {'true/false' if dt == 'BOOL' else 'numbers'}")
            if flat.dtype.kind == "f" and spec.dtype not in ("float16", "float32", "float64") and flat.size:
                raise TypeError("integer datatypes take whole numbers")
            flat = _cast(flat.reshape(-1), spec.dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise BadRequest(f"{where} data is not a valid {dt} tensor: {e}", code="invalid_data") from None
    count = math.prod(shape)
    if flat.size != count:
        raise BadRequest(f"{where} has {flat.size} values but shape {shape} needs {count}", code="shape_mismatch")
    return flat.reshape(shape)


def multiple(dim) -> int:
    """The multiple a dynamic dimension named like "4*h4" must be (as torch.export names dimensions it derived from
    a symbol); 1 for any other dimension."""
    match = _MULTIPLE.fullmatch(dim) if isinstance(dim, str) else None
    return int(match.group(1)) if match else 1


_MULTIPLE = re.compile(r"\s*(\d+)\s*\*\s*[A-Za-z_]\w*\s*")


def _exact_integers(data: list, values: np.ndarray, dtype: str) -> np.ndarray:
    """numpy makes floats of integer lists that mix values past int64 with small ones, and
    objects of values past uint64: read such lists exactly, as Python integers."""
    items = _flatten(data)
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return values
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        if min(items) < info.min or max(items) > info.max:
            raise ValueError(f"a value lies outside the {dtype} range [{info.min}, {info.max}]")
        return np.array(items, dtype=target)
    return np.array([float(v) for v in items], dtype=np.float64) if target.kind == "f" else values


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    target = np.dtype(dtype)
    if target.kind in "iu" and values.size:
        info = np.iinfo(target)
        if values.min() < info.min or values.max() > info.max:
            raise ValueError(f"a value lies outside the {dtype} range [{info.min}, {info.max}]")
    if target.kind == "f" and values.dtype.kind in "iuf" and values.size:
        largest = float(np.finfo(target).max)
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size and max(abs(float(finite.min())), abs(float(finite.max()))) > largest:
            raise ValueError(f"a value lies outside the {dtype} range [-{largest:g}, {largest:g}]")
    return values.astype(target, copy=False)


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _show(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape) + "]"


def encode(name: str, array: np.ndarray) -> dict:
    """One OIP output tensor."""
    array = np.asarray(array)
    kind = "string" if array.dtype.kind in "OUS" else array.dtype.name
    data = array.reshape(-1).tolist()
    if kind == "string":
        data = [v.decode() if isinstance(v, bytes) else str(v) for v in data]
    return {"name": name, "datatype": NUMPY_TO_OIP.get(kind, "BYTES"), "shape": list(array.shape), "data": data}


def shape_of(dims) -> list[int]:
    """Metadata shape: -1 for every dynamic dimension."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in dims]
