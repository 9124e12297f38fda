"""Helpers shared by the training scripts: deterministic setup and ONNX export."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int = 0) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def export_torch(model, example, path, *, input_name, output_name, dynamic_shapes, opset=18):
    """Export ``model`` (eval mode) to a single self-contained ONNX file.

    Uses the torch.export-based exporter (dynamo=True). ``external_data=False``
    matters: torch 2.13 defaults to ``external_data=True``, which would write
    the weights to a separate ``<path>.data`` file.
    """
    import onnx
    import torch

    model.eval()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for stale in (path, str(path) + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    with torch.no_grad():
        prog = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            optimize=True,
            external_data=False,
        )
    prog.save(str(path), external_data=False)
    strip_metadata(path)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ins = [i.name for i in m.graph.input]
    outs = [o.name for o in m.graph.output]
    assert ins == [input_name], ins
    assert outs == [output_name], outs
    assert not os.path.exists(str(path) + ".data"), "unexpected external data file"
    return m


def strip_metadata(path) -> None:
    """Drop the exporter's per-node metadata and doc strings: torch's dynamo exporter records Python
    stack traces there, which name the files (and folders) of the machine that exported the model."""
    import onnx

    m = onnx.load(str(path))

    def clean(graph) -> None:
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attribute in node.attribute:
                if attribute.g is not None and attribute.HasField("g"):
                    clean(attribute.g)
                for sub in attribute.graphs:
                    clean(sub)
    clean(m.graph)
    for function in m.functions:
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]
    del m.graph.metadata_props[:]
    m.doc_string = ""
    onnx.save(m, str(path))


def name_output(proto, name: str = "logits", batch: str = "batch") -> None:
    """Converters name the graph output after an internal tensor: call it `name` everywhere, and call the
    first dimension of every input and output `batch` where it has no fixed size."""
    rename = {o.name: name for o in proto.graph.output}
    for node in proto.graph.node:
        node.output[:] = [rename.get(n, n) for n in node.output]
        node.input[:] = [rename.get(n, n) for n in node.input]
    for o in proto.graph.output:
        o.name = name
    for vi in (*proto.graph.input, *proto.graph.output):
        dim = vi.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value") or dim.dim_value <= 0:
            dim.dim_param = batch


def save_checked(proto, path, inputs=("image",), outputs=("logits",)) -> None:
    """Write an ONNX model after onnx's full check and a check of its input and output names."""
    import onnx
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == list(inputs), [i.name for i in proto.graph.input]
    assert [o.name for o in proto.graph.output] == list(outputs), [o.name for o in proto.graph.output]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def describe_io(path) -> str:
    import onnx

    m = onnx.load(str(path))

    def fmt(vi):
        t = vi.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        return f"{vi.name}: {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)} {dims}"

    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    return (
        "inputs  " + ", ".join(fmt(i) for i in m.graph.input)
        + "\noutputs " + ", ".join(fmt(o) for o in m.graph.output)
        + f"\nopset   {opset}"
    )


def ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
