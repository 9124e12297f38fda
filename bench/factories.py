"""PyTorch factories for `onnxfn bench --torch bench.factories:NAME` (run from the repo root).

Each returns the nn.Module in eval mode with the weights of the ONNX model it is compared with:

- densenet121: MONAI DenseNet121 (2-D, 1 channel, 14 classes), seeded exactly as
  bench/export_densenet.py seeds it (random init, no download) -> bench/.cache/densenet121.onnx;
- unet: MONAI UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128, 256),
  strides=(2, 2, 2, 2)), seeded as bench/export_unet.py seeds it -> bench/.cache/unet2d.onnx;
- digits_cnn, lesion_unet: the demo models' architectures (models/train) with the weights read back
  from the bundles' model.onnx (no PyTorch checkpoint is kept; the lesion U-Net's BatchNorm was
  folded into its convolutions by the exporter, so the BatchNorm layers are set to the identity
  plus the folded bias).

Dev extra: torch, monai, onnx.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]




def _wrap(body):
    import torch

    class Net(torch.nn.Module):  # forward argument named "image", as in the exported models
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, image):
            return self.body(image)

    return Net(body).eval()


def densenet121():
    import numpy as np
    import torch
    from monai.networks.nets import DenseNet121
    torch.manual_seed(0)
    np.random.seed(0)
    return _wrap(DenseNet121(spatial_dims=2, in_channels=1, out_channels=14).eval())


def unet():
    import numpy as np
    import torch
    from monai.networks.nets import UNet
    torch.manual_seed(0)
    np.random.seed(0)
    return _wrap(UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128, 256),
                      strides=(2, 2, 2, 2)).eval())


def _initializers(path: Path) -> dict:
    import onnx
    import torch
    from onnx import numpy_helper
    model = onnx.load(str(path))
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}


def digits_cnn():
    from models.train.digits_torch import _wrap as wrap, build_model
    net = wrap(build_model())
    weights = _initializers(ROOT / "models" / "digits-cnn" / "model.onnx")
    state = {k: weights[k] for k in net.state_dict()}
    net.load_state_dict(state)
    return net.eval()


def lesion_unet():
    import torch
    from models.train.lesion_unet import build_model
    net = build_model().eval()
    weights = _initializers(ROOT / "models" / "lesion-unet" / "model.onnx")
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                module.weight.copy_(weights[f"{name}.weight"])
                if module.bias is not None:
                    module.bias.copy_(weights[f"{name}.bias"])
            elif isinstance(module, torch.nn.BatchNorm2d):
                conv = name.rsplit(".", 1)[0] + "." + str(int(name.rsplit(".", 1)[1]) - 1)
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
                module.weight.fill_(1.0)
                module.bias.copy_(weights[f"{conv}.weight_bias"])
    return net.eval()
