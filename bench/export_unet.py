"""Export a MONAI 2-D U-Net to ONNX for benchmarks (dev extra: torch, monai, onnxscript, onnx).

    python bench/export_unet.py [OUT_PATH]      (default bench/.cache/unet2d.onnx)

UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128, 256),
strides=(2, 2, 2, 2)) -- MONAI's defaults otherwise (instance norm, PReLU, no residual units) --
randomly initialised with torch.manual_seed(0) (bench/factories.py:unet builds the same module);
no weights are downloaded. A realistically shaped segmentation workload; its outputs are meaningless.

Input  "image"  float32 [N, 1, H, W]   dynamic N; H and W dynamic multiples of 16 (four stride-2 levels)
Output "logits" float32 [N, 1, H, W]

Benchmarked at 1x1x256x256 (BENCHMARKS.md); `onnxfn bench --shapes 1x1x128x128,1x1x256x256` exercises
the dynamic sizes. The file is kept out of git (bench/.cache/).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, ".cache", "unet2d.onnx")


def main(argv: list[str]) -> int:
    import onnx
    import onnxruntime as ort
    import torch
    from torch.export import Dim

    sys.path.insert(0, os.path.dirname(HERE))
    from bench.factories import unet

    out = os.path.abspath(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    os.makedirs(os.path.dirname(out), exist_ok=True)
    for stale in (out, out + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    model = unet()
    started = time.time()
    with torch.no_grad():
        program = torch.onnx.export(
            model, (torch.zeros(2, 1, 256, 256),), dynamo=True, input_names=["image"], output_names=["logits"],
            dynamic_shapes={"image": {0: Dim("batch", min=1, max=64), 2: 16 * Dim("h16", min=1, max=256),
                                      3: 16 * Dim("w16", min=1, max=256)}},
            opset_version=18, optimize=True, external_data=False)
    program.save(out, external_data=False)
    seconds = time.time() - started
    onnx.checker.check_model(onnx.load(out))

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(out, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    worst = 0.0
    for shape in ((1, 1, 256, 256), (2, 1, 128, 192)):
        x = rng.random(shape, dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = session.run(["logits"], {"image": x})[0]
        assert got.shape == shape, got.shape
        worst = max(worst, float(np.abs(got - ref).max()))
    params = sum(p.numel() for p in model.parameters())
    print(f"UNet params {params}  export {seconds:.1f}s")
    print(f"max |onnxruntime - torch| = {worst:.3g} (1x1x256x256, 2x1x128x192)")
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    if worst > 1e-3:
        print("ERROR: onnxruntime and torch disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
