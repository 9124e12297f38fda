"""Train a small CNN on sklearn's 8x8 digits and export it to ONNX.

    python -m models.train.digits_torch        (from the repo root)

Input  "image"  float32 [N, 1, 8, 8]  = png8 / 255  (png8 = round(v * 255 / 16))
Output "logits" float32 [N, 10]        raw logits (the server applies softmax)

Writes
    models/digits-cnn/model.onnx
    models/data/digits-heldout.npz            images uint8 [n,8,8], labels int64 [n]
    models/data/digits-cnn-torch-logits.npy   float32 [n,10], torch logits on the held-out set
"""

from __future__ import annotations

import os
import time

import numpy as np

from models.train._digits import check_onnx, load_split, png8_to_input
from models.train._export import describe_io, export_torch, seed_everything

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../models
ONNX_PATH = os.path.join(ROOT, "digits-cnn", "model.onnx")
HELDOUT_PATH = os.path.join(ROOT, "data", "digits-heldout.npz")
LOGITS_PATH = os.path.join(ROOT, "data", "digits-cnn-torch-logits.npy")

SEED = 0
EPOCHS = 60
BATCH = 64
LR = 2e-3


def build_model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 2x2
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(64 * 2 * 2, 128),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(128, 10),
    )


def _wrap(seq):
    """Wrap so that forward's argument (and so the ONNX input) is called "image"."""
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, image):
            return self.body(image)

    return Net(seq)


def main() -> None:
    import torch
    import torch.nn.functional as F

    t0 = time.time()
    seed_everything(SEED)
    img_tr, img_te, y_tr, y_te = load_split()
    x_tr = torch.from_numpy(png8_to_input(img_tr)[:, None])
    x_te_np = png8_to_input(img_te)[:, None]
    x_te = torch.from_numpy(x_te_np)
    yt = torch.from_numpy(y_tr)

    model = _wrap(build_model())
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    g = torch.Generator().manual_seed(SEED)
    n = x_tr.shape[0]
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            xb = x_tr[idx]
            # light augmentation: random +-1 px shift (zero padded)
            dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(F.pad(xb, (1, 1, 1, 1)), shifts=(dy, dx), dims=(2, 3))[:, :, 1:-1, 1:-1]
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0:
            model.eval()
            with torch.no_grad():
                acc = float((model(x_te).argmax(1).numpy() == y_te).mean())
            print(f"epoch {epoch + 1:3d} loss {tot / n:.4f} heldout acc {acc:.4f}")
    train_s = time.time() - t0

    model.eval()
    with torch.no_grad():
        torch_logits = model(x_te).numpy().astype(np.float32)
    torch_acc = float((torch_logits.argmax(1) == y_te).mean())

    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    export_torch(
        model,
        torch.zeros(2, 1, 8, 8),
        ONNX_PATH,
        input_name="image",
        output_name="logits",
        dynamic_shapes={"image": {0: batch}},
    )

    max_diff, ort_acc = check_onnx(ONNX_PATH, x_te_np, y_te, torch_logits, min_accuracy=0.97)

    os.makedirs(os.path.dirname(HELDOUT_PATH), exist_ok=True)
    np.savez(HELDOUT_PATH, images=img_te.astype(np.uint8), labels=y_te.astype(np.int64))
    np.save(LOGITS_PATH, torch_logits)

    print(describe_io(ONNX_PATH))
    print(f"held-out n={len(y_te)}  torch acc={torch_acc:.4f}  onnxruntime acc={ort_acc:.4f}")
    print(f"max |onnxruntime - torch| = {max_diff:.3g}  (batches {len(y_te)}, 1, 5)")
    print(f"train {train_s:.1f}s  total {time.time() - t0:.1f}s")
    print(f"wrote {ONNX_PATH} ({os.path.getsize(ONNX_PATH)} bytes)")
    print(f"wrote {HELDOUT_PATH}")
    print(f"wrote {LOGITS_PATH}")


if __name__ == "__main__":
    main()
