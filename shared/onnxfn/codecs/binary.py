"""The OIP binary tensor data extension (Triton's `extension_binary_data`) <-> the typed request and
answer the JSON path uses.

A request with an `Inference-Header-Content-Length: L` header carries its JSON inference request in its
first L bytes, then the raw data of every input whose `parameters` hold `binary_data_size`, in the order
the inputs are listed: little-endian, row-major, no padding; BOOL one byte (0 or 1) per element; BYTES
each element a 4-byte little-endian unsigned length and its bytes. `L = 0` is the raw binary request: the
whole body is the raw data of the model's only input (BYTES: the body is that input's one element, shape
[1]); every output then travels as binary. An output travels as binary when its request entry says
`"binary_data": true`, or the request's parameters say `"binary_data_output": true` and its entry does not
say otherwise; the answer then carries `Inference-Header-Content-Length` and the outputs' data after its
JSON, each output with `binary_data_size` in its `parameters`.

`frame` checks the framing and parses the JSON part (before the model is loaded); `parse_request` builds
the arrays (through `tensor.parse_request`, so that names, datatypes and shapes are checked as for JSON);
`decode` and `encode` turn one tensor's bytes into an array and back. numpy is imported by those only:
the routes import this module before the model starts loading.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from onnxfn.errors import BadRequest

HEADER = "inference-header-content-length"          # the request header, as `Request.headers` holds it
RESPONSE_HEADER = "Inference-Header-Content-Length"  # the answer's header
CONTENT_TYPE = "application/octet-stream"
_NUMERIC = {"UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1", "INT16": "<i2",
            "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_LENGTH = struct.Struct("<I")


@dataclass
class Framed:
    """A request in the binary framing, its header length checked: the JSON part parsed (`document`; None for
    a raw binary request) and the whole body, whose tensor data starts at `offset`."""
    document: Any
    body: bytes
    offset: int

    @property
    def raw(self) -> bool:
        """A raw binary request (`Inference-Header-Content-Length: 0`): the body is one input's data."""
        return self.offset == 0


def frame(body: bytes, header: str) -> Framed:
    """Check the `Inference-Header-Content-Length` value against the body and parse the JSON part; a value that
    is not a whole number, or one past the body's end, is a 400."""
    text = (header or "").strip()
    if not (text.isascii() and text.isdigit()):  # "²" and other Unicode digits pass isdigit but not int()
        raise BadRequest(f"the Inference-Header-Content-Length header is {header!r}; it must be the length in bytes "
                         "of the JSON part of the body (0 for a raw binary request)", code="invalid_binary_header")
    length = int(text)
    if length > len(body):
        raise BadRequest(f"the Inference-Header-Content-Length header says the JSON part is {length:,} bytes but "
                         f"the body is {len(body):,} bytes", code="invalid_binary_header")
    if length == 0:
        return Framed(None, body, 0)
    try:
        document = json.loads(memoryview(body)[:length].tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the first {length:,} bytes of the body (Inference-Header-Content-Length) are not valid "
                         f"JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("the body's JSON nests too deeply", code="invalid_json") from None
    return Framed(document, body, length)


def parse_request(framed: Framed, specs):
    """A framed request as the `tensor.InferRequest` the JSON path builds: each binary input's bytes cut from the
    body by its `binary_data_size`, in order, and decoded; sizes that run past the body or leave bytes over, or
    a tensor whose size does not match its shape and datatype, are a 400 naming the input."""
    from onnxfn.codecs import tensor
    if framed.raw:
        return _raw(framed.body, specs)
    document = framed.document
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(inputs, list):
        return tensor.parse_request(document, specs)  # refused there, as a JSON request would be
    view = memoryview(framed.body)
    offset, chunks, sizes = framed.offset, {}, []
    for i, item in enumerate(inputs):
        params = item.get("parameters") if isinstance(item, dict) else None
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        where = f"inputs[{i}] ({item.get('name')!r})"
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"{where} has binary_data_size {size!r}; it must be a whole number of bytes",
                             code="binary_framing")
        if "data" in item:
            raise BadRequest(f"{where} has both `data` and binary_data_size: send its values one way",
                             code="binary_framing")
        if offset + size > len(view):
            raise BadRequest(f"{where} has binary_data_size {size:,} but only {len(view) - offset:,} bytes of the "
                             "body remain after the JSON part and the inputs before it", code="binary_framing")
        chunks[i] = view[offset:offset + size]
        sizes.append(f"{item.get('name')!r} {size:,}")
        offset += size
    if offset != len(view):
        told = ", ".join(sizes) if sizes else "no input has binary_data_size"
        raise BadRequest(f"{len(view) - offset:,} bytes are left over after the binary tensors: the body has "
                         f"{len(view) - framed.offset:,} bytes after its JSON part, the inputs' binary_data_size "
                         f"add up to {offset - framed.offset:,} ({told})", code="binary_framing")
    return tensor.parse_request(document, specs, binary=chunks)


def _raw(body: bytes, specs):
    """The raw binary request: the body is the only input's data, its shape deduced from the byte count."""
    import numpy as np
    from onnxfn.codecs import tensor
    if len(specs) != 1:
        raise BadRequest("a raw binary request (Inference-Header-Content-Length: 0) is for a model with one input; "
                         f"this one has {len(specs)} ({', '.join(repr(s.name) for s in specs)}): send the JSON "
                         "part and binary_data_size per input", code="raw_binary_unsupported")
    spec = specs[0]
    dt = tensor.datatype(spec.dtype)
    where = f"the raw binary input {spec.name!r}"
    if dt == "BYTES":
        if len(spec.shape) != 1 or (isinstance(spec.shape[0], int) and spec.shape[0] != 1):
            raise BadRequest(f"{where} is BYTES of shape {_show(spec.shape)}: a raw binary request carries one BYTES "
                             "element (shape [1]); send the JSON part", code="raw_binary_unsupported")
        array = np.array([_text(bytes(body), where, 0)], dtype=object)
    else:
        dynamic = [a for a, d in enumerate(spec.shape) if not isinstance(d, int)]
        if len(dynamic) > 1:
            raise BadRequest(f"{where} has shape {_show(spec.shape)}, {len(dynamic)} dynamic dimensions: a raw binary "
                             "request can deduce one at most; send the JSON part with the shape",
                             code="raw_binary_unsupported")
        item = np.dtype(_NUMERIC.get(dt, "u1")).itemsize
        fixed = math.prod(d for d in spec.shape if isinstance(d, int)) * item
        if dynamic and fixed:
            if len(body) % fixed:
                raise BadRequest(f"{where} ({dt}, shape {_show(spec.shape)}) takes a multiple of {fixed:,} bytes; "
                                 f"the body is {len(body):,}", code="binary_size_mismatch")
            shape = [len(body) // fixed if a in dynamic else d for a, d in enumerate(spec.shape)]
        elif dynamic:
            shape = [0 if a in dynamic else d for a, d in enumerate(spec.shape)]
        else:
            shape = list(spec.shape)
        array = decode(memoryview(body), dt, shape, where)
    return tensor.InferRequest({spec.name: array}, None, None, binary_output=True)


def decode(data, datatype: str, shape: list[int], where: str):
    """One tensor's binary data as an array of `shape`: its size must be what the shape and datatype make;
    BOOL bytes are 0 or 1; BYTES elements are length-prefixed UTF-8 text (onnxruntime's strings are text)."""
    import numpy as np
    count = math.prod(shape)
    if datatype == "BYTES":
        return np.array(_elements(data, count, where), dtype=object).reshape(shape)
    code = "u1" if datatype == "BOOL" else _NUMERIC[datatype]
    size = count * np.dtype(code).itemsize
    if len(data) != size:
        raise BadRequest(f"{where} has {len(data):,} bytes of binary data but shape {shape} of {datatype} takes "
                         f"{size:,}", code="binary_size_mismatch")
    values = np.frombuffer(data, dtype=code)
    if datatype == "BOOL":
        if values.size and values.max() > 1:
            raise BadRequest(f"{where} is BOOL: each element is one byte, 0 or 1; found {int(values.max())}",
                             code="invalid_data")
        values = values.view(np.bool_)
    return values.astype(values.dtype.newbyteorder("="), copy=False).reshape(shape)


def _elements(data, count: int, where: str) -> list[str]:
    view, out, at = memoryview(data), [], 0
    for i in range(count):
        if at + 4 > len(view):
            raise BadRequest(f"{where} is BYTES of {count:,} elements but its binary data ends at element {i} "
                             f"(byte {at:,} of {len(view):,}, no 4-byte length)", code="binary_size_mismatch")
        (length,) = _LENGTH.unpack_from(view, at)
        at += 4
        if at + length > len(view):
            raise BadRequest(f"{where}: BYTES element {i} says {length:,} bytes but only {len(view) - at:,} remain",
                             code="binary_size_mismatch")
        out.append(_text(view[at:at + length].tobytes(), where, i))
        at += length
    if at != len(view):
        raise BadRequest(f"{where} is BYTES of {count:,} elements, which take {at:,} bytes; its binary data has "
                         f"{len(view):,}", code="binary_size_mismatch")
    return out


def _text(raw: bytes, where: str, index: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{where}: BYTES element {index} is not UTF-8 text (onnxruntime's string tensors hold text)",
                         code="invalid_data") from None


def encode(name: str, array) -> tuple[dict, bytes]:
    """One output as the binary extension answers it: its JSON entry (with `binary_data_size`) and its bytes."""
    import numpy as np
    from onnxfn.codecs import tensor
    array = np.asarray(array)
    if array.dtype.kind in "OUS":
        datatype = "BYTES"
        parts = []
        for value in array.reshape(-1).tolist():
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts += [_LENGTH.pack(len(raw)), raw]
        data = b"".join(parts)
    elif array.dtype == np.bool_:
        datatype, data = "BOOL", np.ascontiguousarray(array).view(np.uint8).tobytes()
    else:
        datatype = tensor.NUMPY_TO_OIP[array.dtype.name]
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    entry = {"name": name, "datatype": datatype, "shape": list(array.shape),
             "parameters": {"binary_data_size": len(data)}}
    return entry, data


def _show(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape) + "]"
