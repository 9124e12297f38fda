"""What a competent user writes without onnxfn: the baseline of bench/handwritten.py.

HANDWRITTEN_MODEL: the model file (.onnx or pre-optimized .ort); HANDWRITTEN_THREADS: intra-op threads.
ORT's default session options otherwise (spinning on, prepacking on, arena on, ORT_ENABLE_ALL)."""
import io
import json
import os

import numpy as np
import onnxruntime as ort
from fdk import response
from PIL import Image

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("HANDWRITTEN_THREADS", "0"))
session = ort.InferenceSession(os.environ["HANDWRITTEN_MODEL"], options, providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0].name


def handler(ctx, data: io.BytesIO = None):
    image = Image.open(io.BytesIO(data.getvalue())).convert("L").resize((224, 224), Image.BILINEAR)
    x = (np.asarray(image, dtype=np.float32) / 255.0 - 0.5) / 0.25  # the manifest's unit scaling, mean, std
    logits = session.run(None, {INPUT: x[None, None]})[0][0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = int(p.argmax())
    return response.Response(ctx, response_data=json.dumps({"label": str(top), "probability": float(p[top])}),
                             headers={"Content-Type": "application/json"})
