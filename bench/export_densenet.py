"""Export MONAI DenseNet121 (2-D, 1 channel in, 14 classes out) to ONNX for benchmarks.

    python bench/export_densenet.py [OUT_PATH]      (default bench/.cache/densenet121.onnx)

Random initialisation with torch.manual_seed(0) -- no weights are downloaded.
The model is only a realistically sized (~28 MB, ~7M parameters) workload for
latency / cold-start benchmarks; its outputs are meaningless.

Input  "image"  float32 [N, 1, 224, 224]  (dynamic N)
Output "logits" float32 [N, 14]

The output file is large: keep it out of git (bench/.cache/ is meant to be ignored).
Dev dependencies: torch (CPU), monai, onnxscript, onnx, onnxruntime.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "densenet121.onnx")


def main(argv: list[str]) -> int:
    import onnx
    import onnxruntime as ort
    import torch
    from monai.networks.nets import DenseNet121
    from torch.export import Dim

    out = os.path.abspath(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    os.makedirs(os.path.dirname(out), exist_ok=True)
    for stale in (out, out + ".data"):
        if os.path.exists(stale):
            os.remove(stale)

    torch.manual_seed(0)
    np.random.seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=14)
    net.eval()

    class Wrapped(torch.nn.Module):  # forward argument named "image"
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, image):
            return self.body(image)

    model = Wrapped(net).eval()
    t0 = time.time()
    with torch.no_grad():
        prog = torch.onnx.export(
            model,
            (torch.zeros(2, 1, 224, 224),),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes={"image": {0: Dim("batch", min=1, max=256)}},
            opset_version=18,
            optimize=True,
            external_data=False,  # torch 2.13 defaults to True (weights in OUT.data)
        )
    prog.save(out, external_data=False)
    export_s = time.time() - t0
    m = onnx.load(out)
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert not os.path.exists(out + ".data")

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    max_diff = 0.0
    for bs in (1, 3):
        x = torch.rand(bs, 1, 224, 224, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(["logits"], {"image": x.numpy()})[0]
        assert got.shape == (bs, 14), got.shape
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
    n_params = sum(p.numel() for p in net.parameters())
    print(f"DenseNet121 params {n_params}  export {export_s:.1f}s")
    print(f"max |onnxruntime - torch| = {max_diff:.3g} (batches 1, 3)")
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    if max_diff > 1e-3:
        print("ERROR: onnxruntime and torch disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
