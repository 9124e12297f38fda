"""Soak: many calls of varied sizes and formats through the real fdk; does the function's memory settle?

    python bench/reliability/soak.py [--calls 10000] [--sample-every 100] [--warmup 0.1] [--seed 0]

Two function processes under the real fdk (onnxfn.tools.dev.agent.Function, driven over the unix socket as
the Fn agent does, one call at a time), one per demo model: models/digits-cnn and models/lesion-unet
(MODEL_URI, no baked bundle). A seeded plan alternates calls between them, drawn from a pool of payloads made
once before the run:

  digits-cnn   8-bit PNG digits (models/data/digits-heldout.npz) from 8x8 to 256x256, JPEG, BMP, multipart,
               base64 JSON, OIP JSON tensors (direct and /v2/models/digits-cnn/infer);
  lesion-unet  CT phantoms (models/train/phantoms.py) from 64x64 to 1024x1024 as 16-bit PNG and DICOM, 8-bit
               JPEG, multipart, base64 JSON, OIP JSON tensors (64x64);
  both         bad inputs (about 5%): truncated PNG, garbage, an empty body, damaged DICOM, an OIP tensor of
               the wrong shape, base64 that is not, multipart with no closing boundary.

Half the calls are direct invocations, half API Gateway calls (/predict, /v2/.../infer). Every payload has an
expected outcome (200, or its 4xx); a call whose outcome differs, any 5xx, and any fdk-level failure count as
errors. Every --sample-every calls the RSS (VmRSS, the goal's measure, and RssAnon, its heap and arenas alone) of
each function process is read from /proc. The first
--warmup share of the calls is warm-up (the plan visits every payload once there first, so the largest image
has been seen); the growth is the mean of the last 3 samples against the mean of the first 3 after warm-up
(goal: <= 2%), and the slope a least-squares fit over every post-warm-up sample (MB per 1,000 calls).
Latency is the agent's round trip per call (p50/p99 per model). `main(argv)` prints the figures and returns them
("ok": no errors, both processes alive, both within the growth goal).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "shared", ROOT / "bench", ROOT):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import numpy as np  # noqa: E402

import procfs  # noqa: E402  (bench/procfs.py)
from onnxfn.tools.dev.agent import Function  # noqa: E402

MODELS = {"digits": ROOT / "models" / "digits-cnn", "unet": ROOT / "models" / "lesion-unet"}
OIP_PATH = {"digits": "/v2/models/digits-cnn/infer", "unet": "/v2/models/lesion-unet/infer"}
GOAL = 0.02
DEADLINE = 60.0


@dataclass
class Payload:
    """One body to send, to which model, how, and the status it must get."""
    model: str
    kind: str          # what it is, for the tally (png8, png16, dicom, jpeg, multipart, base64, oip, bad-...)
    body: bytes
    content_type: str
    expect: int        # 200, or the 4xx a bad input must get
    oip: bool = False  # an OIP JSON tensor request (gateway: the infer route)


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _multipart(data: bytes, content_type: str, closed: bool = True) -> tuple[bytes, str]:
    boundary = "soak-boundary-7d1e"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n"
    if closed:
        body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _oip(name: str, shape: list[int], values: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": shape,
                                   "data": [round(float(v), 4) for v in values.ravel()]}]}).encode()


def digit_payloads(rng: np.random.Generator) -> list[Payload]:
    """Digits at several sizes and in every format the function takes."""
    from PIL import Image
    images = np.load(ROOT / "models" / "data" / "digits-heldout.npz")
    digits = next(v for v in images.values() if v.ndim == 3 or v.ndim == 4)
    out = []
    for i, side in enumerate((8, 8, 16, 28, 64, 128, 256)):
        raw = np.asarray(digits[int(rng.integers(len(digits)))]).reshape(8, 8).astype(np.float32)
        grey = (255 * (raw - raw.min()) / max(float(np.ptp(raw)), 1e-6)).astype(np.uint8)
        big = np.asarray(Image.fromarray(grey).resize((side, side), Image.BILINEAR))
        png = _encode(big, "PNG")
        out.append(Payload("digits", "png8", png, "image/png", 200))
        out.append(Payload("digits", "jpeg", _encode(big, "JPEG", quality=90), "image/jpeg", 200))
        if i % 2 == 0:
            out.append(Payload("digits", "bmp", _encode(big, "BMP"), "image/bmp", 200))
        out.append(Payload("digits", "multipart", *_multipart(png, "image/png"), 200))
        out.append(Payload("digits", "base64", json.dumps({"image": base64.b64encode(png).decode()}).encode(),
                           "application/json", 200))
        tensor = grey.astype(np.float32)[None, None] / 255.0
        out.append(Payload("digits", "oip", _oip("image", [1, 1, 8, 8], tensor), "application/json", 200, oip=True))
    return out


def unet_payloads(rng: np.random.Generator, largest: int) -> list[Payload]:
    """CT phantoms from 64x64 up to `largest` as 16-bit PNG, DICOM, JPEG, multipart, base64, and OIP at 64x64."""
    from models.train.phantoms import make_phantom, write_dicom, write_png16
    out = []
    sides = [s for s in (64, 128, 256, 384, 512, 768, 1024) if s <= largest] or [largest]
    with tempfile.TemporaryDirectory(prefix="onnxfn-soak-") as tmp:
        for i, side in enumerate(sides):
            hu, _ = make_phantom(int(rng.integers(1 << 30)), (side, side + (16 if i % 2 else 0)))
            png16, dcm = Path(tmp) / f"{i}.png", Path(tmp) / f"{i}.dcm"
            write_png16(png16, hu)
            write_dicom(dcm, hu, seed=i)
            png, dicom = png16.read_bytes(), dcm.read_bytes()
            grey = np.clip((hu.astype(np.float32) + 160) * (255 / 400), 0, 255).astype(np.uint8)
            out.append(Payload("unet", "png16", png, "image/png", 200))
            out.append(Payload("unet", "dicom", dicom, "application/dicom", 200))
            out.append(Payload("unet", "jpeg", _encode(grey, "JPEG", quality=85), "image/jpeg", 200))
            if side <= 512:
                out.append(Payload("unet", "multipart", *_multipart(dicom, "application/dicom"), 200))
                out.append(Payload("unet", "base64", json.dumps({"image": base64.b64encode(png).decode()}).encode(),
                                   "application/json", 200))
    tensor = rng.random((1, 1, 64, 64), dtype=np.float32)
    out.append(Payload("unet", "oip", _oip("image", [1, 1, 64, 64], tensor), "application/json", 200, oip=True))
    return out


def bad_payloads(good: list[Payload]) -> list[Payload]:
    """Inputs each model must refuse with a 4xx (the status each must get is asserted per call)."""
    out = []
    for model in ("digits", "unet"):
        png = next(p.body for p in good if p.model == model and p.kind in ("png8", "png16"))
        out += [Payload(model, "bad-truncated-png", png[: len(png) // 2], "image/png", 400),
                Payload(model, "bad-garbage", os.urandom(3000), "application/octet-stream", 415),
                Payload(model, "bad-empty", b"", "image/png", 400),
                Payload(model, "bad-base64", b'{"image": "not base64 at all!"}', "application/json", 400),
                Payload(model, "bad-multipart", *_multipart(png, "image/png", closed=False), 400),
                Payload(model, "bad-oip-shape", _oip("image", [1, 1, 3, 3], np.zeros(9, np.float32)),
                        "application/json", 400, oip=True)]
    dicom = next(p.body for p in good if p.kind == "dicom")
    out.append(Payload("unet", "bad-dicom", dicom[:200] + os.urandom(64), "application/dicom", 400))
    return out


def payloads(seed: int, largest: int) -> list[Payload]:
    """The pool the plan draws from."""
    rng = np.random.default_rng(seed)
    good = digit_payloads(rng) + unet_payloads(rng, largest)
    return good + bad_payloads(good)


def plan(pool: list[Payload], calls: int, seed: int, bad_share: float = 0.05) -> list[tuple[Payload, bool]]:
    """(payload, gateway?) per call: the whole pool once first (so warm-up sees every size), then seeded draws
    with about `bad_share` bad inputs."""
    rng = random.Random(seed)
    good = [p for p in pool if p.expect == 200]
    bad = [p for p in pool if p.expect != 200]
    order = list(pool)
    rng.shuffle(order)
    while len(order) < calls:
        order.append(rng.choice(bad) if rng.random() < bad_share else rng.choice(good))
    return [(p, rng.random() < 0.5) for p in order[:calls]]


def outcome(payload: Payload, gateway: bool, fn: Function) -> tuple[int, int, str]:
    """(status the caller sees, fdk status, error code) of one call."""
    if gateway:
        url = OIP_PATH[payload.model] if payload.oip else "/predict"
        reply = fn.call(payload.body, payload.content_type, method="POST", url=url, deadline=DEADLINE)
        status = reply.http_status
    else:
        reply = fn.call(payload.body, payload.content_type, deadline=DEADLINE)
        status = 200
    try:
        body = json.loads(reply.body)
    except ValueError:
        return (status if gateway else 0), reply.status, "not-json"
    if isinstance(body, dict) and "error" in body:
        return int(body.get("status", 0)), reply.status, str(body.get("code"))
    return status, reply.status, ""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares MB per 1,000 calls."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def memory(samples: list[tuple[int, float]], warm: int) -> dict:
    """Post-warm-up level, end level, growth and slope of one process's RSS samples (call index, MB)."""
    after = [s for s in samples if s[0] >= warm]
    if len(after) < 2:
        return {"samples": len(samples), "note": "too few samples after warm-up"}
    head, tail = after[:3], after[-3:]
    start, end = statistics.fmean(v for _, v in head), statistics.fmean(v for _, v in tail)
    return {"samples": len(samples), "warm_mb": round(start, 1), "end_mb": round(end, 1),
            "max_mb": round(max(v for _, v in samples), 1), "growth": round((end - start) / start, 4),
            "slope_mb_per_1000": round(_slope(after), 3), "pass": (end - start) / start <= GOAL}


def rss_anon(pid: int) -> float:
    """RssAnon in MB: the process's own heap and arenas, without the file-backed pages (libraries) the kernel may
    drop from VmRSS when the shared machine is short of memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(calls: int, sample_every: int, warmup: float, seed: int, largest: int, threads: int) -> dict:
    """The soak itself; the figures as a dict."""
    pool = payloads(seed, largest)
    schedule = plan(pool, calls, seed)
    warm = max(int(calls * warmup), len(pool))
    functions = {m: Function(env={"MODEL_URI": str(path), "ONNXFN_BAKED_BUNDLE": "", "ONNXFN_THREADS": str(threads)},
                             timeout=DEADLINE + 10) for m, path in MODELS.items()}
    latencies: dict[str, list[float]] = {m: [] for m in MODELS}
    rss: dict[str, list[tuple[int, float]]] = {m: [] for m in MODELS}
    anon: dict[str, list[tuple[int, float]]] = {m: [] for m in MODELS}
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    examples: list[str] = []
    began = time.perf_counter()
    try:
        for fn in functions.values():
            fn.start()
        for i, (payload, gateway) in enumerate(schedule):
            t0 = time.perf_counter()
            try:
                status, fdk_status, code = outcome(payload, gateway, functions[payload.model])
            except Exception as e:  # the agent lost the function: the worst outcome, counted and reported
                status, fdk_status, code = -1, -1, type(e).__name__
            latencies[payload.model].append(time.perf_counter() - t0)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            wrong = status != payload.expect or fdk_status not in (200,) or status >= 500
            if wrong:
                key = f"{payload.kind}: expected {payload.expect}, got {status} {code} (fdk {fdk_status})"
                errors[key] = errors.get(key, 0) + 1
                if len(examples) < 3:
                    examples.append(f"call {i} {'gateway' if gateway else 'direct'} {key}")
            if i % sample_every == 0 or i == calls - 1:
                for m, fn in functions.items():
                    if fn.alive:
                        rss[m].append((i, procfs.status(fn.process.pid)["VmRSS"]))
                        anon[m].append((i, rss_anon(fn.process.pid)))
        alive = {m: fn.alive for m, fn in functions.items()}
    finally:
        for fn in functions.values():
            fn.stop()
    wall = time.perf_counter() - began
    return {
        "calls": calls, "seconds": round(wall, 1), "payloads": len(pool), "warmup_calls": warm,
        "kinds": sorted({p.kind for p in pool}),
        "largest": f"{largest}x{largest + 16}", "statuses": dict(sorted(statuses.items())),
        "errors": sum(errors.values()), "error_kinds": errors, "error_examples": examples, "alive": alive,
        "latency_ms": {m: {"calls": len(v), "p50": round(1000 * _percentile(v, 0.5), 2),
                           "p99": round(1000 * _percentile(v, 0.99), 2), "max": round(1000 * max(v), 1)}
                       for m, v in latencies.items() if v},
        "rss": {m: memory(s, warm) for m, s in rss.items()},
        "rss_anon": {m: memory(s, warm) for m, s in anon.items()},
        "loadavg": procfs.loadavg(),
    }


def report(figures: dict) -> None:
    """Print the figures for a person."""
    print(f"soak: {figures['calls']:,} calls in {figures['seconds']} s over {figures['payloads']} payloads "
          f"({', '.join(figures['kinds'])}); largest image {figures['largest']}; warm-up {figures['warmup_calls']} calls")
    print(f"  statuses: {figures['statuses']}  errors: {figures['errors']}  processes alive: {figures['alive']}")
    for kind, count in sorted(figures["error_kinds"].items()):
        print(f"    {count:5} x {kind}")
    for example in figures["error_examples"]:
        print(f"    e.g. {example}")
    for model, lat in figures["latency_ms"].items():
        print(f"  {model:6} latency ms: p50 {lat['p50']}  p99 {lat['p99']}  max {lat['max']}  ({lat['calls']} calls)")
    for (what, model), mem in [(("RSS", m), v) for m, v in figures["rss"].items()] + \
            [(("RssAnon", m), v) for m, v in figures["rss_anon"].items()]:
        if "growth" not in mem:
            print(f"  {model:6} {what}: {mem}")
            continue
        print(f"  {model:6} {what} MB: after warm-up {mem['warm_mb']}  end {mem['end_mb']}  max {mem['max_mb']}  "
              f"growth {100 * mem['growth']:+.2f}% (goal <= {100 * GOAL:.0f}%: {'PASS' if mem['pass'] else 'MISS'})  "
              f"slope {mem['slope_mb_per_1000']:+.3f} MB/1000 calls  ({mem['samples']} samples)")
    print(f"  loadavg after: {figures['loadavg']}")


def main(argv: list[str] | None = None) -> dict:
    """Run the soak with `argv` (the command line's when None), print its figures and return them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--sample-every", type=int, default=100, help="read each process's RSS every N calls")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the calls that is warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--largest", type=int, default=1024, help="the U-Net's largest image side")
    parser.add_argument("--threads", type=int, default=1, help="ONNXFN_THREADS of each function")
    args = parser.parse_args(argv)
    figures = run(args.calls, args.sample_every, args.warmup, args.seed, args.largest, args.threads)
    figures["command"] = "python bench/reliability/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    figures["ok"] = (figures["errors"] == 0 and all(figures["alive"].values())
                     and all(m.get("pass", False) for m in figures["rss"].values()))
    report(figures)
    return figures


if __name__ == "__main__":
    main()
