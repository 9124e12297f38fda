"""A tensor bundle whose first input takes images, under the real fdk: a PNG in through the gateway's
/predict, by direct invocation and by an Object Storage event (SeaweedFS), the model's outputs out as OIP
outputs equal to what onnxruntime gives on the pre-processed input; an event writes them as `<key>.json`,
and a large answer's outputs as `<key>.npz`."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from onnxfn.bundles import bundle as bundles
from onnxfn.codecs import payload
from onnxfn.events.results import TENSOR_JSON_LIMIT
from onnxfn.runtime import session as sessions
from onnxfn.tasks import preprocess
from onnxfn.tools.package import Options, build
from tests.e2e.test_processor import get_json, oci_event
from tests.support.calls import gateway
from tests.support.images import png
from tests.support.models import ROOT, image_scaler

PICTURE = png(np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3))


def package(tmp_path, size) -> bundles.Bundle:
    return build(image_scaler(tmp_path / f"scaler{size[0]}.onnx"), tmp_path / f"scaler{size[0]}",
                 Options(name="scaler", image_input=True, image={"size": list(size), "fit": "pad"}))


def expected(bundle: bundles.Bundle, picture: bytes) -> dict[str, np.ndarray]:
    """onnxruntime's outputs in-process on the input as the bundle pre-processes it."""
    spec = bundle.manifest.inputs[0]
    image = payload.decode_image(payload.classify(picture, "image/png", 1 << 30), 1 << 30)
    feed, _ = preprocess.prepare(image, spec)
    session = sessions.create(bundle.root / "model.onnx", 1)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {spec.name: feed})))


def assert_outputs(outputs: list[dict], want: dict[str, np.ndarray]) -> None:
    assert [o["name"] for o in outputs] == list(want)
    for o in outputs:
        assert o["datatype"] == "FP32" and o["shape"] == list(want[o["name"]].shape)
        assert np.array_equal(np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]), want[o["name"]])


def test_a_png_through_predict_answers_the_model_outputs(function, tmp_path):
    bundle = package(tmp_path, (12, 20))
    fn = function({"MODEL_URI": str(bundle.root)})
    reply = gateway(fn, "POST", "/predict", PICTURE, "image/png")
    assert reply.http_status == 200, reply.body
    body = reply.json()
    assert body["task"] == "tensor" and body["model"]["name"] == "scaler"
    assert body["image"]["width"] == 40 and body["image"]["height"] == 30
    assert {"cold", "runtime", "timings_ms"} <= set(body)
    want = expected(bundle, PICTURE)
    assert_outputs(body["result"]["outputs"], want)
    direct = fn.call(PICTURE, "image/png").json()
    assert_outputs(direct["result"]["outputs"], want)
    binary = gateway(fn, "POST", "/predict?binary_data_output=true", PICTURE, "image/png")
    length = int(binary.http_headers["inference-header-content-length"])
    head, tail = json.loads(binary.body[:length]), binary.body[length:]
    for o in head["result"]["outputs"]:  # the JSON part names each tensor; the bytes follow in order
        size = o["parameters"]["binary_data_size"]
        array, tail = np.frombuffer(tail[:size], dtype="<f4").reshape(o["shape"]), tail[size:]
        assert "data" not in o and np.array_equal(array, want[o["name"]])
    assert tail == b""


@pytest.fixture
def events_fn(function, s3, bucket):
    def start(model_uri: str):
        env = {**s3.env(), "MODEL_URI": model_uri, "ONNXFN_OCI_ENDPOINT": s3.endpoint,
               "ONNXFN_OCI_REGION": "us-phoenix-1", "ONNXFN_BAKED_BUNDLE": "",
               "ONNXFN_EVENT_SOURCES": f"oci://{bucket}@testns/"}
        return function(env, entry=ROOT / "functions" / "events.py")
    return start


def test_an_event_writes_the_outputs_as_json(events_fn, s3_client, bucket, tmp_path):
    bundle = package(tmp_path, (12, 20))
    s3_client.put_object(Bucket=bucket, Key="in/small.png", Body=PICTURE)
    fn = events_fn(str(bundle.root))
    summary = fn.call(oci_event(bucket, "in/small.png"), "application/json").json()
    assert summary["written"] == 1 and summary["objects"][0]["outputs"] == ["results/in/small.png.json"]
    result = get_json(s3_client, bucket, "results/in/small.png.json")
    assert result["task"] == "tensor" and result["source"]["key"] == "in/small.png"
    assert_outputs(result["result"]["outputs"], expected(bundle, PICTURE))


def test_a_large_answer_writes_its_outputs_as_npz_too(events_fn, s3_client, bucket, tmp_path):
    bundle = package(tmp_path, (256, 256))  # 3 x 256 x 256 floats: several MB of JSON
    s3_client.put_object(Bucket=bucket, Key="in/large.png", Body=PICTURE)
    fn = events_fn(str(bundle.root))
    summary = fn.call(oci_event(bucket, "in/large.png"), "application/json").json()
    assert summary["written"] == 1
    assert summary["objects"][0]["outputs"] == ["results/in/large.png.npz", "results/in/large.png.json"]
    result = get_json(s3_client, bucket, "results/in/large.png.json")
    assert result["result"]["npz"]["key"] == "results/in/large.png.npz"
    assert result["result"]["npz"]["json_bytes"] > TENSOR_JSON_LIMIT
    want = expected(bundle, PICTURE)
    assert [(o["name"], o["shape"]) for o in result["result"]["outputs"]] == [(n, list(v.shape)) for n, v in want.items()]
    assert all("data" not in o for o in result["result"]["outputs"])
    raw = s3_client.get_object(Bucket=bucket, Key="results/in/large.png.npz")["Body"].read()
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(want)
        for name, value in want.items():
            assert npz[name].dtype == np.float32 and np.array_equal(npz[name], value)
    again = fn.call(oci_event(bucket, "in/large.png"), "application/json").json()
    assert again["skipped"] == 1  # a replay writes nothing
