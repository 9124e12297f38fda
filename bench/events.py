"""Object Storage events, warm: objects per second and per-object overhead outside inference.

    python bench/events.py [--objects 200] [--batch 10] [--dicoms 50] [--threads 1]

A real S3 server (SeaweedFS `weed mini`, tests/support/s3server.py) on 127.0.0.1 holds small inputs. One
function process per model (functions/events.py under the real fdk, driven over its unix socket by
onnxfn.tools.dev.agent.Function as the Fn agent does: one call at a time, one after another) is warmed by one
untimed event per envelope type (OCI Events, S3 notification), then sent:

  digits-cnn    --objects 8x8 PNG digits (models/data/digits-heldout.npz), one object per OCI Events
                envelope, and --objects other ones as S3 notifications of --batch Records each;
  lesion-unet   --dicoms 128x128 CT phantom DICOMs (models/train/phantoms.py: make_phantom, write_dicom),
                the same two ways; every result has a mask PNG.

The two modes are interleaved in chunks (one batch event, then --batch one-object events; order flipped
each chunk) so that both see the same machine while other people's work comes and goes; a mode's wall
time is the sum of its events' reply-to-reply intervals. Every result object is checked afterwards.

Per object the function's summary gives timings_ms {head, fetch, decode, preprocess, inference,
postprocess, write, total}; "head" is the source HEAD (OCI Events carry no size; an S3 notification's
size and eTag are used instead), "write" one conditional PUT per file (If-None-Match: *). Reported
(median, p90, max): fetch = head + fetch, decode, inference, write, overhead = total - inference (the
goal: median <= 15 ms on loopback, PASS/MISS), the client's round trip per event, and what the round trip
adds to the objects' totals (fdk, envelope, summary JSON, logging). CPU ms per object of the function
process and of weed come from /proc around each event; /proc/loadavg and a Python yardstick before and
after (2 shared cores).

Then, per storage operation (HEAD, GET, PUT), alternating call by call: onnxfn's S3Store through the lean
SigV4 client (what the function uses here), through boto3 (ONNXFN_S3_CLIENT=boto3), and the server floor
(presigned URLs on one kept-alive http.client connection). Everything goes to bench/.cache/events.json.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_plus

import procfs  # bench/procfs.py: this script's folder is on sys.path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
EVENTS = ROOT / "tests" / "data" / "events"
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(ROOT))            # models.train.phantoms, tests.support.s3server

from onnxfn.tools.dev.agent import Function  # noqa: E402
from tests.support.s3server import S3Server  # noqa: E402

GOAL_MS = 15.0
OCI = json.loads((EVENTS / "oci-createobject.json").read_text())
S3 = json.loads((EVENTS / "s3-put-and-delete.json").read_text())


# -- inputs and events ------------------------------------------------------------------------------------

def digit_pngs(n: int) -> list[bytes]:
    from PIL import Image
    held = np.load(ROOT / "models" / "data" / "digits-heldout.npz")
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(held["images"][i % len(held["images"])]).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def phantom_dicoms(n: int, size=(128, 128)) -> list[bytes]:
    from models.train import phantoms
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            hu, _ = phantoms.make_phantom(1000 + i, size)
            path = Path(tmp) / f"{i}.dcm"
            phantoms.write_dicom(path, hu, seed=1000 + i)
            out.append(path.read_bytes())
    return out


def oci_event(bucket: str, key: str) -> bytes:
    event = copy.deepcopy(OCI)
    event["data"]["resourceName"] = key
    event["data"]["resourceId"] = f"/n/benchns/b/{bucket}/o/{key}"
    event["data"]["additionalDetails"].update(bucketName=bucket, namespace="benchns")
    event["data"]["additionalDetails"].pop("eTag", None)
    return json.dumps(event).encode()


def s3_event(bucket: str, objects: dict[str, bytes]) -> bytes:
    """An S3 notification for these objects, with their size and eTag (single-part: the MD5), as S3 sends it."""
    records = []
    for key, data in objects.items():
        record = copy.deepcopy(S3["Records"][0])
        record["eventName"] = "ObjectCreated:Put"
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["object"].update(key=quote_plus(key, safe="/"), size=len(data),
                                      eTag=hashlib.md5(data).hexdigest())
        records.append(record)
    return json.dumps({"Records": records}).encode()


# -- measuring ------------------------------------------------------------------------------------------

def cpu_seconds(pid: int | None) -> float:
    try:
        return procfs.cpu_ms(pid) / 1000 if pid else float("nan")
    except (OSError, IndexError, ValueError):
        return float("nan")


def python_speed() -> float:
    """A yardstick for how fast Python runs on this machine right now: ms for sum(range(200_000)), best of 7.
    Lower is faster; figures from runs with different yardsticks are not comparable."""
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        sum(range(200_000))
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 3)


def stats(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    return {"median": round(statistics.median(v), 3), "p90": round(float(np.percentile(v, 90)), 3),
            "max": round(v[-1], 3), "mean": round(statistics.fmean(v), 3), "n": len(v)}


def run(fn: Function, weed_pid: int, bucket: str, single: list[str], batched: dict[str, bytes], batch: int,
        model: str) -> list[dict]:
    """Send every event one after another (as the Fn agent does), one-object events and batched events
    interleaved in chunks (a batch event, then as many one-object events; the order flips each chunk), so
    that both modes see the same machine while other people's work comes and goes. A mode's wall time is
    the sum of its events' intervals (previous reply -> this reply); CPU of the function process and of
    weed is read from /proc around each event and filed under its mode."""
    singles = [("single", [k], oci_event(bucket, k)) for k in single]
    keys = list(batched)
    batches = [("batch", keys[i:i + batch], s3_event(bucket, {k: batched[k] for k in keys[i:i + batch]}))
               for i in range(0, len(keys), batch)]
    schedule = []
    for j in range(max(len(batches), -(-len(singles) // batch))):
        chunk = [*batches[j:j + 1], *singles[j * batch:(j + 1) * batch]]
        schedule += chunk if j % 2 == 0 else chunk[::-1]
    acc = {m: {"round_trips": [], "wall": 0.0, "cpu_fn": 0.0, "cpu_weed": 0.0, "objects": [], "outside": [],
               "events": 0} for m in ("single", "batch")}
    pid = fn.process.pid
    started = last = time.perf_counter()
    for mode, keys, body in schedule:
        f0, w0 = cpu_seconds(pid), cpu_seconds(weed_pid)
        t = time.perf_counter()
        reply = fn.call(body, "application/json")
        end = time.perf_counter()
        f1, w1 = cpu_seconds(pid), cpu_seconds(weed_pid)
        a = acc[mode]
        a["round_trips"].append((end - t) * 1000)
        a["wall"] += end - last
        last = end
        a["cpu_fn"] += f1 - f0
        a["cpu_weed"] += w1 - w0
        a["events"] += 1
        summary = reply.json()
        objects = summary.get("objects") or []
        if reply.status != 200 or len(objects) != len(keys) or summary.get("written") != len(keys):
            raise RuntimeError(f"{model} {mode}: an event was not fully written: {reply.status} {summary}")
        a["objects"] += [o["timings_ms"] for o in objects]
        a["outside"].append((end - t) * 1000 - sum(o["timings_ms"]["total"] for o in objects))
    total_wall = time.perf_counter() - started
    out = []
    for mode, a in acc.items():
        objects, n = a["objects"], len(a["objects"])
        columns = {
            "fetch (head+get)": [o.get("head", 0) + o.get("fetch", 0) for o in objects],
            "  head (source HEAD; none for S3 records)": [o.get("head", 0) for o in objects],
            "  get": [o.get("fetch", 0) for o in objects],
            "decode": [o.get("decode", 0) for o in objects],
            "preprocess": [o.get("preprocess", 0) for o in objects],
            "inference": [o.get("inference", 0) for o in objects],
            "postprocess": [o.get("postprocess", 0) for o in objects],
            "write (conditional PUT per file)": [o.get("write", 0) for o in objects],
            "total": [o["total"] for o in objects],
            "overhead (total - inference)": [o["total"] - o.get("inference", 0) for o in objects],
            "round trip / event": a["round_trips"],
            "round trip - object totals / event": a["outside"],
        }
        label = f"{model} " + ("1 object/event (OCI Events)" if mode == "single" else
                               f"{batch} objects/event (S3 Records)")
        out.append({"label": label, "model": model, "mode": mode, "objects": n, "events": a["events"],
                    "records_per_event": 1 if mode == "single" else batch, "wall_s": round(a["wall"], 3),
                    "objects_per_s": round(n / a["wall"], 1), "interleaved_total_wall_s": round(total_wall, 3),
                    "cpu_ms_per_object": {"function": round(a["cpu_fn"] * 1000 / n, 2),
                                          "weed": round(a["cpu_weed"] * 1000 / n, 2)},
                    "ms": {name: stats(values) for name, values in columns.items()},
                    "goal_pass": statistics.median(columns["overhead (total - inference)"]) <= GOAL_MS})
    return out


def start_function(s3: S3Server, model: str, threads: int, bucket: str) -> Function:
    env = {**s3.env(), "MODEL_URI": str(ROOT / "models" / model), "ONNXFN_OCI_ENDPOINT": s3.endpoint,
           "ONNXFN_OCI_REGION": "us-phoenix-1", "ONNXFN_BAKED_BUNDLE": "", "ONNXFN_THREADS": str(threads),
           "ONNXFN_EVENT_SOURCES": f"oci://{bucket}@benchns/,s3://{bucket}/"}
    return Function(entry=ROOT / "functions" / "events.py", env=env).start()


def warm(fn: Function, body: bytes) -> dict:
    """One untimed event. Both envelopes are warmed: an OCI event's objects are read through the
    ONNXFN_OCI_ENDPOINT client and an S3 notification's through the AWS_ENDPOINT_URL_S3 one, and each
    boto3 client is built on first use."""
    t = time.perf_counter()
    reply = fn.call(body, "application/json")
    summary = reply.json()
    if reply.status != 200 or summary.get("written") != 1:
        raise RuntimeError(f"warm-up event failed: {reply.status} {summary}\n{fn.logs()[-3000:]}")
    return {"round_trip_ms": round((time.perf_counter() - t) * 1000, 1), "timings_ms": summary["objects"][0]["timings_ms"]}


def upload(client, bucket: str, items: dict[str, bytes]) -> None:
    for key, data in items.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


# -- profile (in this process) -------------------------------------------------------------------------------

def clients_vs_floor(s3: S3Server, bucket: str, key: str, rounds: int = 80) -> dict:
    """Per storage operation, alternating call by call so that all see the same machine: onnxfn's S3Store
    with the lean SigV4 client (what the function uses here), the same store through boto3
    (ONNXFN_S3_CLIENT=boto3), and the server floor (presigned URLs on one kept-alive http.client
    connection, no signing work)."""
    import http.client
    from urllib.parse import urlsplit
    from onnxfn.storage.store import open_store
    client = s3.client()
    os.environ.update(s3.env())  # endpoint and keys, as the function gets them
    stores = {"lean": open_store(f"s3://{bucket}/", s3_client="lean"),
              "boto3": open_store(f"s3://{bucket}/", s3_client="boto3")}
    body = b"{}" * 200
    meta = {"source-etag": "0" * 32, "model-sha256": "0" * 64}
    out = {}
    conn = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=10)
    for op, method, name, params, action in (
            ("HeadObject", "HEAD", "head_object", {"Bucket": bucket, "Key": key}, lambda st: st.stat(key)),
            ("GetObject", "GET", "get_object", {"Bucket": bucket, "Key": key}, lambda st: st.read(key, 1 << 20)),
            ("PutObject", "PUT", "put_object", {"Bucket": bucket, "Key": "bare/put.json"},
             lambda st: st.put("bare/put.json", body, "application/json", meta))):
        urls = [client.generate_presigned_url(name, Params=params) for _ in range(rounds)]
        times: dict[str, list[float]] = {"lean": [], "boto3": [], "bare": []}
        for i, url in enumerate(urls):
            parts = urlsplit(url)
            order = ["lean", "boto3", "bare"]
            for which in order[i % 3:] + order[:i % 3]:
                t = time.perf_counter()
                if which != "bare":
                    action(stores[which])
                else:
                    conn.request(method, parts.path + "?" + parts.query, body=body if method == "PUT" else None)
                    response = conn.getresponse()
                    response.read()
                    if response.status >= 300:
                        raise RuntimeError(f"bare {method} answered {response.status}")
                times[which].append((time.perf_counter() - t) * 1000)
        out[op] = {k: stats(v[5:]) for k, v in times.items()}
    conn.close()
    return out


def table(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(f"\n{r['label']}: {r['objects']} objects in {r['events']} events of {r['records_per_event']}, "
                     f"{r['wall_s']:.2f} s wall = {r['objects_per_s']:.1f} objects/s   CPU/object: function "
                     f"{r['cpu_ms_per_object']['function']:.1f} ms, weed {r['cpu_ms_per_object']['weed']:.1f} ms")
        lines.append(f"  {'ms':36s} {'median':>8s} {'p90':>8s} {'max':>8s}")
        for name, s in r["ms"].items():
            if s:
                lines.append(f"  {name:36s} {s['median']:8.2f} {s['p90']:8.2f} {s['max']:8.2f}")
        median = r["ms"]["overhead (total - inference)"]["median"]
        lines.append(f"  goal: overhead outside inference {median:.2f} ms median <= {GOAL_MS:.0f} ms: "
                     f"{'PASS' if r['goal_pass'] else 'MISS'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--dicoms", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="ONNXFN_THREADS of the function (tests use 1)")
    args = parser.parse_args()

    figures = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host_cpus": os.cpu_count(),
               "loadavg_before": procfs.loadavg(), "python_speed_ms_before": python_speed(), "goal_ms": GOAL_MS,
               "threads": args.threads,
               "args": vars(args)}
    t0 = time.perf_counter()
    pngs, dicoms = digit_pngs(args.objects), phantom_dicoms(args.dicoms)
    results, warmups = [], {}
    with S3Server() as s3:
        figures["s3_server"] = {"endpoint": s3.endpoint, "ready_s": round(s3.ready_seconds or 0, 2)}
        client = s3.client()
        bucket = s3.new_bucket("bench-events")
        plan = [("digits-cnn", "png", pngs), ("lesion-unet", "dcm", dicoms)]
        for model, ext, inputs in plan:
            single = {f"{model}/single/{i:04d}.{ext}": d for i, d in enumerate(inputs)}
            batched = {f"{model}/batch/{i:04d}.{ext}": d for i, d in enumerate(inputs)}
            upload(client, bucket, {**single, **batched, f"{model}/warm.{ext}": inputs[0],
                                    f"{model}/warm-s3.{ext}": inputs[0]})
            fn = start_function(s3, model, args.threads, bucket)
            try:
                warmups[model] = {"oci_event": warm(fn, oci_event(bucket, f"{model}/warm.{ext}")),
                                  "s3_event": warm(fn, s3_event(bucket, {f"{model}/warm-s3.{ext}": inputs[0]}))}
                load = procfs.loadavg()
                for result in run(fn, s3.pid, bucket, list(single), batched, args.batch, model):
                    result["loadavg_at_start"] = load
                    results.append(result)
                    print(table([result]), flush=True)
            finally:
                fn.stop()
            written = client.list_objects_v2(Bucket=bucket, Prefix=f"results/{model}/")
            names = [o["Key"] for o in written.get("Contents", [])]
            expected = (2 * len(inputs) + 2) * (2 if model == "lesion-unet" else 1)
            if len(names) != expected or (model == "lesion-unet" and not any(n.endswith(".mask.png") for n in names)):
                raise RuntimeError(f"{model}: {len(names)} result objects, expected {expected}")
        figures["warmup"] = warmups
        figures["results"] = results
        figures["loadavg_after_runs"] = procfs.loadavg()
        figures["clients_ms"] = clients_vs_floor(s3, bucket, "digits-cnn/single/0000.png")
    figures["loadavg_after"] = procfs.loadavg()
    figures["python_speed_ms_after"] = python_speed()
    figures["runtime_s"] = round(time.perf_counter() - t0, 1)
    verdict = "PASS" if results[0]["goal_pass"] else "MISS"
    figures["verdict"] = verdict

    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "events.json").write_text(json.dumps(figures, indent=2))

    print("\n" + "=" * 100)
    print(table(results))
    for model, w in figures["warmup"].items():
        print(f"warm-up {model}: OCI event {w['oci_event']['round_trip_ms']:.0f} ms (cold model load), first S3 "
              f"notification {w['s3_event']['round_trip_ms']:.0f} ms (its boto3 client is built then), untimed")
    print("\nper storage call, alternating, median ms: onnxfn's lean SigV4 client, boto3, and the server floor "
          "(presigned URL, kept-alive http.client)")
    for op, c in figures["clients_ms"].items():
        print(f"  {op:10s} lean {c['lean']['median']:6.2f}   boto3 {c['boto3']['median']:6.2f}   "
              f"floor {c['bare']['median']:6.2f}   boto3/lean {c['boto3']['median'] / c['lean']['median']:.2f}")
    print("\ngoal: median overhead outside inference <= %.0f ms" % GOAL_MS)
    for r in results:
        print(f"  {'PASS' if r['goal_pass'] else 'MISS'}  {r['ms']['overhead (total - inference)']['median']:7.2f} ms  "
              f"{r['label']}  ({r['objects_per_s']:.1f} objects/s)")
    print(f"verdict (digits-cnn, 1 object/event): {verdict}")
    print(f"loadavg before {figures['loadavg_before']}  after the function runs {figures['loadavg_after_runs']}  "
          f"at the end {figures['loadavg_after']}  ({figures['host_cpus']} CPUs)   runtime {figures['runtime_s']} s")
    print(f"python yardstick sum(range(200_000)): {figures['python_speed_ms_before']} ms before, "
          f"{figures['python_speed_ms_after']} ms after")
    print(f"figures: {CACHE / 'events.json'}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
