"""Shared digits data preparation (sklearn's bundled 8x8 digits, values 0..16).

Images are served as 8-bit PNGs with pixel = round(v * 255 / 16) and the server
scales by 1/255, so models are trained on exactly X = round(v * 255 / 16) / 255.
(The only tie is v = 8 -> 127.5, which every usual rounding sends to 128.)
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0
TEST_SIZE = 0.25


def to_png8(v: np.ndarray) -> np.ndarray:
    """sklearn digit values 0..16 -> uint8 PNG values 0..255."""
    return np.rint(np.asarray(v, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)


def png8_to_input(img: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 in [0, 1], as the server does (x / 255 in float32)."""
    return np.asarray(img).astype(np.float32) / np.float32(255.0)


def load_split():
    """Return (img_train uint8 [n,8,8], img_test uint8 [m,8,8], y_train int64, y_test int64)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    imgs = to_png8(d.images)
    y = d.target.astype(np.int64)
    img_tr, img_te, y_tr, y_te = train_test_split(
        imgs, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return img_tr, img_te, y_tr, y_te


def shift8(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light augmentation of [n, 8, 8] images: each moved by -1..1 px in y and x, zero padded."""
    n = len(x)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, size=(2, n))
    rows = (np.arange(8)[None, :] + dy[:, None])[:, :, None]
    cols = (np.arange(8)[None, :] + dx[:, None])[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def check_onnx(onnx_path, x_te: np.ndarray, y_te: np.ndarray, source_logits: np.ndarray, *,
               min_accuracy: float = 0.95, max_diff: float = 1e-4, input_name: str = "image",
               output_name: str = "logits") -> tuple[float, float]:
    """The exported model against its source framework's outputs (logits, or probabilities) on the held-out
    set, also at batch 1 and 5: returns (max abs difference, onnxruntime accuracy), each asserted against
    its limit."""
    from models.train._export import ort_session

    sess = ort_session(onnx_path)
    ort_logits = sess.run([output_name], {input_name: x_te})[0]
    worst = float(np.abs(ort_logits - source_logits).max())
    for bs in (1, 5):
        out = sess.run([output_name], {input_name: x_te[:bs]})[0]
        assert out.shape == (bs, 10), out.shape
        worst = max(worst, float(np.abs(out - source_logits[:bs]).max()))
    accuracy = float((ort_logits.argmax(1) == y_te).mean())
    assert worst < max_diff, worst
    assert accuracy >= min_accuracy, accuracy
    return worst, accuracy
