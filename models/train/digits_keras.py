"""Train a small Keras CNN on the 8x8 digits and convert it to ONNX with tf2onnx.

    .venv-tf/bin/python -m models.train.digits_keras      (from the repo root; pip install -e '.[tf]')

Same split and scaling as digits_torch (models/train/_digits.py: X = round(v * 255 / 16) / 255),
in Keras' own layout, channels last:

Input  "image"  float32 [N, 8, 8, 1]   (NHWC; the bundle's manifest says --layout NHWC)
Output "logits" float32 [N, 10]        raw logits (the server applies softmax)

Conversion: Keras 3 models cannot go through `tf2onnx.convert.from_keras` (tf2onnx 1.17 fails
with a KeyError on a keras_tensor name), so the model is wrapped in a `tf.function` with an
input signature whose batch is None, and converted with `tf2onnx.convert.from_function`.

Writes
    models/digits-keras/model.onnx
    models/data/digits-keras-tf-logits.npy   float32 [450,10], Keras logits on the held-out set
(checks that models/data/digits-heldout.npz holds this split's held-out images.)
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tf.data logs harmless errors
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # bit-reproducible CPU kernels

import numpy as np  # noqa: E402

from models.train._digits import check_onnx, load_split, png8_to_input, shift8  # noqa: E402
from models.train._export import describe_io, name_output, save_checked  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../models
ONNX_PATH = os.path.join(ROOT, "digits-keras", "model.onnx")
HELDOUT_PATH = os.path.join(ROOT, "data", "digits-heldout.npz")
LOGITS_PATH = os.path.join(ROOT, "data", "digits-keras-tf-logits.npy")

SEED = 0
EPOCHS = 40
BATCH = 64
LR = 2e-3
OPSET = 17


def build_model():
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=(8, 8, 1), name="image"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool1"),  # 4x4
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        layers.MaxPooling2D(2, name="pool2"),  # 2x2
        layers.Flatten(name="flatten"),
        layers.Dropout(0.3, name="drop1"),
        layers.Dense(128, activation="relu", name="dense"),
        layers.Dropout(0.3, name="drop2"),
        layers.Dense(10, name="logits"),
    ], name="digits")


def canonical_names(proto) -> None:
    """tf2onnx names the constants it makes from a global counter ("const_axes__31") and, when it
    merges equal constants, keeps whichever name it met first; both vary from run to run. Rename
    every initializer after its first consumer and renumber the other counters in graph order, so
    the same weights always give the same file."""
    import re

    graph = proto.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    inits = {t.name for t in graph.initializer}
    names: dict[str, str] = {}
    used: set[str] = set(keep)

    def unique(base: str) -> str:
        new, k = base, 1
        while new in used:
            new, k = f"{base}__{k}", k + 1
        used.add(new)
        return new

    node_names: set[str] = set()
    for node in graph.node:
        base, k = re.sub(r"__\d+", "", node.name), 1
        node.name = base
        while node.name in node_names:
            node.name, k = f"{base}__{k}", k + 1
        node_names.add(node.name)
    for node in graph.node:
        for slot, n in enumerate(node.input):
            if n and n not in keep and n not in names:
                names[n] = unique(f"{node.name}/input{slot}" if n in inits else re.sub(r"__\d+", "", n))
        node.input[:] = [names.get(n, n) for n in node.input]
        for n in node.output:
            if n and n not in keep and n not in names:
                names[n] = unique(re.sub(r"__\d+", "", n))
        node.output[:] = [names.get(n, n) for n in node.output]
    for init in graph.initializer:
        init.name = names.get(init.name, init.name)
    ordered = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    for vi in graph.value_info:
        vi.name = names.get(vi.name, vi.name)


def export(model, path: str) -> None:
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def serve(image):
        return {"logits": model(image, training=False)}

    os.makedirs(os.path.dirname(path), exist_ok=True)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET)
    # tf2onnx names the graph output after the TF tensor (e.g. "Identity:0") and the None batch "unk__NN"
    name_output(proto)
    canonical_names(proto)
    proto.doc_string = ""
    proto.graph.doc_string = ""
    save_checked(proto, path)


def main() -> None:
    import keras
    import tensorflow as tf
    import tf2onnx

    t0 = time.time()
    keras.utils.set_random_seed(SEED)  # python, numpy and tf seeds
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    img_tr, img_te, y_tr, y_te = load_split()
    h = np.load(HELDOUT_PATH)
    assert np.array_equal(h["images"], img_te) and np.array_equal(h["labels"], y_te), "held-out split differs"
    x_tr = png8_to_input(img_tr)[..., None]  # NHWC
    x_te = png8_to_input(img_te)[..., None]

    model = build_model()
    steps = EPOCHS * int(np.ceil(len(x_tr) / BATCH))
    schedule = keras.optimizers.schedules.CosineDecay(LR, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule, weight_decay=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(SEED)
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x_tr))
        hist = model.fit(shift8(x_tr[order][..., 0], rng)[..., None], y_tr[order], batch_size=BATCH, epochs=1, shuffle=False,
                         verbose=0)
        if (epoch + 1) % 10 == 0:
            acc = float((model(x_te, training=False).numpy().argmax(1) == y_te).mean())
            print(f"epoch {epoch + 1:3d} loss {hist.history['loss'][-1]:.4f} heldout acc {acc:.4f}")
    train_s = time.time() - t0

    tf_logits = model(x_te, training=False).numpy().astype(np.float32)
    tf_acc = float((tf_logits.argmax(1) == y_te).mean())

    export(model, ONNX_PATH)
    max_diff, ort_acc = check_onnx(ONNX_PATH, x_te, y_te, tf_logits)

    os.makedirs(os.path.dirname(LOGITS_PATH), exist_ok=True)
    np.save(LOGITS_PATH, tf_logits)

    print(describe_io(ONNX_PATH))
    print(f"tensorflow {tf.__version__}  keras {keras.__version__}  tf2onnx {tf2onnx.__version__}")
    print(f"held-out n={len(y_te)}  keras acc={tf_acc:.4f}  onnxruntime acc={ort_acc:.4f}")
    print(f"max |onnxruntime - keras| = {max_diff:.3g}  (batches {len(y_te)}, 1, 5)")
    print(f"train {train_s:.1f}s  total {time.time() - t0:.1f}s")
    print(f"wrote {ONNX_PATH} ({os.path.getsize(ONNX_PATH)} bytes)")
    print(f"wrote {LOGITS_PATH}")


if __name__ == "__main__":
    main()
