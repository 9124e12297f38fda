"""Single-sample latency of the four digits models: each source framework's own inference vs
onnxruntime on the bundle's model.onnx, same input, same thread count, alternated, median of RUNS.
Random-init weights of the same architecture (latency does not depend on the values); sklearn is
fitted on the training split. Run each framework in the venv that has it (see models/train/README.md):

    .venv/bin/python bench/frameworks.py torch 2          .venv/bin/python bench/frameworks.py sklearn 1
    .venv-tf/bin/python bench/frameworks.py keras 2       .venv-paddle/bin/python bench/frameworks.py paddle 2
"""
import os, sys, time, statistics
fw, threads = sys.argv[1], int(sys.argv[2])
for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[v] = str(threads)
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "shared")]
import numpy as np
RUNS, WARM = 300, 50
M = os.path.join(ROOT, "models")
layout = {"torch": "nchw", "sklearn": "nf", "keras": "nhwc", "paddle": "nchw"}[fw]
bundle = {"torch": "digits-cnn", "sklearn": "digits-sklearn", "keras": "digits-keras", "paddle": "digits-paddle"}[fw]
x = np.load(f"{M}/data/digits-heldout-{layout}.npy")[:1].copy()

if fw == "torch":
    import torch
    torch.set_num_threads(threads)
    from models.train.digits_torch import build_model, _wrap
    torch.manual_seed(0); model = _wrap(build_model()).eval()
    xt = torch.from_numpy(x)
    def native():
        with torch.no_grad():
            return model(xt).numpy()
    variants = {"eager": native}
elif fw == "sklearn":
    from threadpoolctl import threadpool_limits
    threadpool_limits(threads)
    from models.train._digits import load_split
    from models.train.digits_sklearn import fit
    tr, te, ytr, yte = load_split()
    clf = fit(tr, ytr)
    variants = {"predict_proba": lambda: clf.predict_proba(x)}
elif fw == "keras":
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    from models.train.digits_keras import build_model
    keras.utils.set_random_seed(0); model = build_model()
    xt = tf.constant(x)
    f = tf.function(lambda t: model(t, training=False), input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
    variants = {"eager": lambda: model(xt, training=False).numpy(), "tf.function": lambda: f(xt).numpy()}
elif fw == "paddle":
    import paddle
    paddle.set_device("cpu")
    from models.train.digits_paddle import build_model
    paddle.seed(0); model = build_model(); model.eval()
    xt = paddle.to_tensor(x)
    def native():
        with paddle.no_grad():
            return model(xt).numpy()
    variants = {"dygraph": native}
    # Paddle Inference (the deployment predictor) from a jit.save of the same layer
    import tempfile
    from paddle import inference
    d = tempfile.mkdtemp()
    paddle.jit.save(model, f"{d}/m", input_spec=[paddle.static.InputSpec([None, 1, 8, 8], "float32", "image")])
    files = os.listdir(d)
    model_file = f"{d}/m.json" if "m.json" in files else f"{d}/m.pdmodel"
    cfg = inference.Config(model_file, f"{d}/m.pdiparams")
    cfg.disable_gpu(); cfg.set_cpu_math_library_num_threads(threads); cfg.disable_glog_info()
    pred = inference.create_predictor(cfg)
    ih = pred.get_input_handle(pred.get_input_names()[0]); oh = pred.get_output_handle(pred.get_output_names()[0])
    def infer():
        ih.copy_from_cpu(x); pred.run(); return oh.copy_to_cpu()
    variants["paddle.inference"] = infer

from onnxfn.runtime import session as sessions
sess = sessions.create(f"{M}/{bundle}/model.onnx", threads)
name = sess.get_inputs()[0].name
out = [sess.get_outputs()[0].name] if fw != "sklearn" else ["probabilities"]
def onnx(): return sess.run(out, {name: x})[0]

for label, native in variants.items():
    for _ in range(WARM):
        native(); onnx()
    a, b = [], []
    for _ in range(RUNS):
        t = time.perf_counter(); native(); a.append(time.perf_counter() - t)
        t = time.perf_counter(); onnx(); b.append(time.perf_counter() - t)
    ma, mb = statistics.median(a) * 1e6, statistics.median(b) * 1e6
    print(f"{fw:8s} {label:17s} threads={threads}  framework {ma:8.1f} us   onnxruntime {mb:6.1f} us   "
          f"ratio ort/framework {mb / ma:.3f}  (framework/ort {ma / mb:.1f}x)", flush=True)
