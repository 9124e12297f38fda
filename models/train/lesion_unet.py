"""Train a small 2-D U-Net on synthetic CT phantoms and export it to ONNX.

    python -m models.train.lesion_unet         (from the repo root)

Input  "image"  float32 [N, 1, H, W]  windowed HU: clip((hu - (40 - 200)) / 400, 0, 1)
Output "logits" float32 [N, 1, H, W]  lesion logits (server: sigmoid, threshold 0.5)

H and W are dynamic but MUST BE MULTIPLES OF 4 (two 2x2 poolings). Pad other
sizes up to the next multiple of 4 -- with 0 in the windowed input (= air, or
anything <= -160 HU) at the bottom/right -- and crop the output back.

Architecture: 3 levels with 8 / 16 / 32 channels, two 3x3 conv + BatchNorm +
ReLU per level, 2x2 max-pooling down, 2x2 stride-2 transposed conv up, skip
concatenation, 1x1 conv head. ~30k parameters.

Training data: phantoms.make_phantom with seeds 0..(TRAIN_PHANTOMS-1) at several
sizes (128x128, 96x160, 160x128, 200x152 and 128x128 crops of 256x256 phantoms).
Held-out evaluation: seeds 100000.. at 128x128, 96x160, 160x160, 200x152,
256x256 and the non-multiple-of-4 sizes 90x118 and 130x101 (padded as above),
measured with onnxruntime.

Writes models/lesion-unet/model.onnx
"""

from __future__ import annotations

import os
import time

import numpy as np

from models.train import phantoms
from models.train._export import describe_io, export_torch, ort_session, seed_everything

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONNX_PATH = os.path.join(ROOT, "lesion-unet", "model.onnx")

SEED = 0
MULTIPLE = 4
TRAIN_PHANTOMS = 1600
TRAIN_STEPS = 800
BATCH = 12
LR = 3e-3
EVAL_SEED0 = 100000
EVAL_SIZES = [(128, 128), (96, 160), (160, 160), (200, 152), (256, 256), (90, 118), (130, 101)]
EVAL_PER_SIZE = 10  # 70 phantoms
TRAIN_BUCKETS = [  # (phantom size, crop size or None), weight
    (((128, 128), None), 0.40),
    (((96, 160), None), 0.15),
    (((160, 128), None), 0.15),
    (((200, 152), None), 0.10),
    (((256, 256), (128, 128)), 0.20),
]


def build_model():
    import torch
    import torch.nn as nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self, c=(8, 16, 32)):
            super().__init__()
            self.enc1 = block(1, c[0])
            self.enc2 = block(c[0], c[1])
            self.mid = block(c[1], c[2])
            self.pool = nn.MaxPool2d(2)
            self.up2 = nn.ConvTranspose2d(c[2], c[1], 2, stride=2)
            self.dec2 = block(2 * c[1], c[1])
            self.up1 = nn.ConvTranspose2d(c[1], c[0], 2, stride=2)
            self.dec1 = block(2 * c[0], c[0])
            self.head = nn.Conv2d(c[0], 1, 1)

        def forward(self, image):
            e1 = self.enc1(image)
            e2 = self.enc2(self.pool(e1))
            m = self.mid(self.pool(e2))
            d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
            return self.head(d1)

    return UNet()


def pad_to_multiple(x: np.ndarray, multiple: int = MULTIPLE, value: float = 0.0) -> np.ndarray:
    """Pad [..., H, W] at the bottom/right up to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(x, pad, mode="constant", constant_values=value)


def _make_pool(n: int, rng: np.random.Generator):
    """Pre-generate training phantoms grouped by (phantom size, crop)."""
    buckets = [b for b, _ in TRAIN_BUCKETS]
    weights = np.array([w for _, w in TRAIN_BUCKETS])
    choice = rng.choice(len(buckets), size=n, p=weights / weights.sum())
    pools = {i: ([], []) for i in range(len(buckets))}
    for seed, bi in enumerate(choice):
        size, _crop = buckets[bi]
        hu, mask = phantoms.make_phantom(seed, size)
        pools[bi][0].append(phantoms.window(hu))
        pools[bi][1].append(mask.astype(np.float32))
    out = []
    for bi, (xs, ms) in pools.items():
        if xs:
            out.append((buckets[bi], np.stack(xs)[:, None], np.stack(ms)[:, None]))
    return out


def _sample_batch(pool, rng):
    sizes = np.array([len(p[1]) for p in pool], dtype=np.float64)
    bi = rng.choice(len(pool), p=sizes / sizes.sum())
    (size, crop), xs, ms = pool[bi]
    idx = rng.choice(len(xs), size=BATCH, replace=len(xs) < BATCH)
    x, m = xs[idx], ms[idx]
    if crop is not None:
        ch, cw = crop
        out_x = np.empty((BATCH, 1, ch, cw), np.float32)
        out_m = np.empty((BATCH, 1, ch, cw), np.float32)
        for k in range(BATCH):
            # bias crops towards lesions: centre on a random lesion pixel half the time
            if rng.uniform() < 0.5:
                ys, xs_ = np.nonzero(m[k, 0])
                j = rng.integers(len(ys))
                y0 = int(np.clip(ys[j] - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, size[0] - ch))
                x0 = int(np.clip(xs_[j] - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, size[1] - cw))
            else:
                y0 = int(rng.integers(0, size[0] - ch + 1))
                x0 = int(rng.integers(0, size[1] - cw + 1))
            out_x[k] = x[k, :, y0 : y0 + ch, x0 : x0 + cw]
            out_m[k] = m[k, :, y0 : y0 + ch, x0 : x0 + cw]
        x, m = out_x, out_m
    if rng.uniform() < 0.5:  # horizontal flip
        x, m = x[..., ::-1], m[..., ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(m)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    denom = pred.sum() + gt.sum()
    return 1.0 if denom == 0 else float(2.0 * (pred & gt).sum() / denom)


def predict_mask_ort(sess, hu: np.ndarray) -> np.ndarray:
    """Served-path equivalent: window, pad to a multiple of 4, run, crop, sigmoid>0.5."""
    h, w = hu.shape
    x = pad_to_multiple(phantoms.window(hu)[None, None])
    logits = sess.run(["logits"], {"image": x})[0][0, 0, :h, :w]
    return (logits > 0.0).astype(np.uint8)  # sigmoid(l) > 0.5  <=>  l > 0


def evaluate(sess):
    per_image, inter, total = [], 0, 0
    per_size = {}
    seed = EVAL_SEED0
    for size in EVAL_SIZES:
        for _ in range(EVAL_PER_SIZE):
            hu, gt = phantoms.make_phantom(seed, size)
            seed += 1
            pred = predict_mask_ort(sess, hu)
            d = dice(pred, gt)
            per_image.append(d)
            per_size.setdefault(size, []).append(d)
            inter += int((pred.astype(bool) & gt.astype(bool)).sum())
            total += int(pred.sum() + gt.sum())
    return {
        "n": len(per_image),
        "mean": float(np.mean(per_image)),
        "min": float(np.min(per_image)),
        "global": 2.0 * inter / total,
        "per_size": {f"{h}x{w}": float(np.mean(v)) for (h, w), v in per_size.items()},
    }


def main() -> None:
    import torch
    import torch.nn.functional as F

    t0 = time.time()
    seed_everything(SEED)
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)
    pool = _make_pool(TRAIN_PHANTOMS, rng)
    gen_s = time.time() - t0
    print(f"generated {TRAIN_PHANTOMS} training phantoms in {gen_s:.1f}s")

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=TRAIN_STEPS, pct_start=0.1)
    model.train()
    t1 = time.time()
    run = 0.0
    for step in range(TRAIN_STEPS):
        xb, mb = _sample_batch(pool, rng)
        x = torch.from_numpy(xb)
        m = torch.from_numpy(mb)
        logits = model(x)
        bce = F.binary_cross_entropy_with_logits(logits, m)
        p = torch.sigmoid(logits)
        soft_dice = 1.0 - (2.0 * (p * m).sum() + 1.0) / (p.sum() + m.sum() + 1.0)
        loss = bce + soft_dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1:5d}  loss {run:.4f}  {time.time() - t1:.0f}s", flush=True)
    train_s = time.time() - t1
    model.eval()

    from torch.export import Dim

    batch = Dim("batch", min=1, max=64)
    h4 = Dim("h4", min=4, max=1024)
    w4 = Dim("w4", min=4, max=1024)
    export_torch(
        model,
        torch.zeros(2, 1, 128, 96),
        ONNX_PATH,
        input_name="image",
        output_name="logits",
        dynamic_shapes={"image": {0: batch, 2: MULTIPLE * h4, 3: MULTIPLE * w4}},
    )

    sess = ort_session(ONNX_PATH)
    g = torch.Generator().manual_seed(1)
    max_diff = 0.0
    for shape in [(1, 1, 128, 128), (2, 1, 96, 160), (1, 1, 256, 256), (3, 1, 200, 152)]:
        x = torch.rand(shape, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(["logits"], {"image": x.numpy()})[0]
        assert out.shape == shape, (out.shape, shape)
        max_diff = max(max_diff, float(np.abs(out - ref).max()))
    assert max_diff < 1e-3, max_diff

    res = evaluate(sess)
    assert res["mean"] >= 0.93 and res["global"] >= 0.93, res

    size = os.path.getsize(ONNX_PATH)
    assert size < 5 * 1024 * 1024
    print(describe_io(ONNX_PATH))
    print(f"parameters {n_params}")
    print(f"H and W must be multiples of {MULTIPLE}")
    print(f"max |onnxruntime - torch| = {max_diff:.3g}  (128x128, 96x160 batch 2, 256x256, 200x152 batch 3)")
    print(
        f"held-out Dice (onnxruntime, n={res['n']}, seeds {EVAL_SEED0}..): "
        f"mean {res['mean']:.4f}  global {res['global']:.4f}  worst {res['min']:.4f}"
    )
    print("per size mean Dice: " + ", ".join(f"{k} {v:.4f}" for k, v in res["per_size"].items()))
    print(f"data {gen_s:.1f}s  train {train_s:.1f}s  total {time.time() - t0:.1f}s")
    print(f"wrote {ONNX_PATH} ({size} bytes)")


if __name__ == "__main__":
    main()
