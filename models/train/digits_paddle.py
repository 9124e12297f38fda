"""Train a small PaddlePaddle CNN on the 8x8 digits and export it with paddle2onnx.

    .venv-paddle/bin/python -m models.train.digits_paddle   (from the repo root; pip install -e '.[paddle]')

Same split and scaling as digits_torch (models/train/_digits.py: X = round(v * 255 / 16) / 255),
channels first:

Input  "image"  float32 [N, 1, 8, 8]   (NCHW)
Output "logits" float32 [N, 10]        raw logits (the server applies softmax)

Export: `paddle.onnx.export(layer, prefix, input_spec=[InputSpec([None, 1, 8, 8], "float32", "image")])`
(paddle2onnx under the hood). The InputSpec's None is what makes the batch dynamic and its
name is the ONNX input's name; the output gets a generated name, renamed here to "logits".
paddle2onnx then folds constants with Polygraphy, which pip-installs onnx-graphsurgeon and sympy
on the fly if they are missing: the `paddle` extra installs them up front.

Writes
    models/digits-paddle/model.onnx
    models/data/digits-paddle-logits.npy   float32 [450,10], Paddle logits on the held-out set
(checks that models/data/digits-heldout.npz holds this split's held-out images.)
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from models.train._digits import check_onnx, load_split, png8_to_input, shift8
from models.train._export import describe_io, name_output, save_checked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../models
ONNX_PATH = os.path.join(ROOT, "digits-paddle", "model.onnx")
HELDOUT_PATH = os.path.join(ROOT, "data", "digits-heldout.npz")
LOGITS_PATH = os.path.join(ROOT, "data", "digits-paddle-logits.npy")

SEED = 0
EPOCHS = 40
BATCH = 64
LR = 2e-3
OPSET = 17


def build_model():
    import paddle.nn as nn

    return nn.Sequential(
        nn.Conv2D(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2D(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2D(2),  # 4x4
        nn.Conv2D(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2D(2),  # 2x2
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(64 * 2 * 2, 128),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(128, 10),
    )


def _check_folding_deps() -> None:
    """paddle2onnx folds constants with Polygraphy and sets POLYGRAPHY_AUTOINSTALL_DEPS=1 itself, so a
    missing onnx-graphsurgeon or sympy is pip-installed mid-export (from an extra index). Refuse instead."""
    import importlib.util

    missing = [m for m in ("onnx_graphsurgeon", "sympy", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: pip install -e '.[paddle]' before exporting")


def export(model, path: str) -> None:
    import onnx
    import paddle

    _check_folding_deps()
    model.eval()
    spec = [paddle.static.InputSpec(shape=[None, 1, 8, 8], dtype="float32", name="image")]
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "model")
        paddle.onnx.export(model, prefix, input_spec=spec, opset_version=OPSET)
        proto = onnx.load(prefix + ".onnx")
    name_output(proto)
    save_checked(proto, path)


def main() -> None:
    import paddle
    import paddle.nn.functional as F
    import paddle2onnx

    t0 = time.time()
    paddle.set_device("cpu")
    paddle.seed(SEED)
    np.random.seed(SEED)
    img_tr, img_te, y_tr, y_te = load_split()
    h = np.load(HELDOUT_PATH)
    assert np.array_equal(h["images"], img_te) and np.array_equal(h["labels"], y_te), "held-out split differs"
    x_tr = png8_to_input(img_tr)[:, None]  # NCHW
    x_te = png8_to_input(img_te)[:, None]

    model = build_model()
    steps = EPOCHS * int(np.ceil(len(x_tr) / BATCH))
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(LR, T_max=steps)
    opt = paddle.optimizer.Adam(learning_rate=schedule, parameters=model.parameters(), weight_decay=1e-4)
    rng = np.random.default_rng(SEED)
    n = len(x_tr)
    for epoch in range(EPOCHS):
        model.train()
        order = rng.permutation(n)
        xs, ys = shift8(x_tr[order][:, 0], rng)[:, None], y_tr[order]
        total = 0.0
        for i in range(0, n, BATCH):
            xb, yb = paddle.to_tensor(xs[i:i + BATCH]), paddle.to_tensor(ys[i:i + BATCH])
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.clear_grad()
            schedule.step()
            total += float(loss) * len(xb)
        if (epoch + 1) % 10 == 0:
            model.eval()
            with paddle.no_grad():
                acc = float((model(paddle.to_tensor(x_te)).numpy().argmax(1) == y_te).mean())
            print(f"epoch {epoch + 1:3d} loss {total / n:.4f} heldout acc {acc:.4f}")
    train_s = time.time() - t0

    model.eval()
    with paddle.no_grad():
        pd_logits = model(paddle.to_tensor(x_te)).numpy().astype(np.float32)
    pd_acc = float((pd_logits.argmax(1) == y_te).mean())

    export(model, ONNX_PATH)
    max_diff, ort_acc = check_onnx(ONNX_PATH, x_te, y_te, pd_logits)

    os.makedirs(os.path.dirname(LOGITS_PATH), exist_ok=True)
    np.save(LOGITS_PATH, pd_logits)

    print(describe_io(ONNX_PATH))
    print(f"paddlepaddle {paddle.__version__}  paddle2onnx {paddle2onnx.__version__}")
    print(f"held-out n={len(y_te)}  paddle acc={pd_acc:.4f}  onnxruntime acc={ort_acc:.4f}")
    print(f"max |onnxruntime - paddle| = {max_diff:.3g}  (batches {len(y_te)}, 1, 5)")
    print(f"train {train_s:.1f}s  total {time.time() - t0:.1f}s")
    print(f"wrote {ONNX_PATH} ({os.path.getsize(ONNX_PATH)} bytes)")
    print(f"wrote {LOGITS_PATH}")


if __name__ == "__main__":
    main()
