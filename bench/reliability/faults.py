"""Storage faults: is every call answered within its deadline, the cache never corrupt, and recovery automatic?

    python bench/reliability/faults.py [--calls 3] [--deadline 3] [--clients auto,boto3]

A real S3 server (SeaweedFS `weed mini`, tests/support/s3server.py) holds the digits-cnn bundle; a loopback fault
proxy (tests/support/faultproxy.py) stands in front of it, and the function (the real fdk, driven over its unix
socket by onnxfn.tools.dev.agent.Function) loads MODEL_URI=s3://... through the proxy with ONNXFN_STORAGE_TIMEOUT=1
and ONNXFN_DEADLINE_MARGIN_MS=300. Per S3 client (lean SigV4, boto3) and per fault:

  cold   a fresh process and an empty cache, the fault set before its first call: --calls gateway /predict calls
         with a --deadline s Fn-Deadline each; then the fault is cleared and calls (10 s deadline) are made until
         one answers 200 ("recovery": how many it took, at most 5), in the same process;
  warm   the model loaded (ONNXFN_REVALIDATE_SECONDS=1, so the background revalidation meets the fault), then the
         fault, and --calls calls again, more (40 at most) until the revalidation has met the fault.

  events a function serving lesion-unet from the image's folder processes one S3 notification for a CT phantom
         while every PUT of its result JSON (written last, after the mask) gets 503 SlowDown, or every result
         write meets a black hole; then the fault clears and the same event is delivered again. Printed: the
         invocation's status and time, whether a JSON (the mark of a complete result) was left, and whether the
         redelivery completed the result.

Faults: latency 0.3 s per request (within the deadline), latency 30 s (beyond it), a TCP reset after 4,096 bytes
of each answer's body (the manifest passes, the 254 KB model is cut), a burst of 3 503 SlowDown, 503 SlowDown
until cleared, and a black hole (requests read, never answered). Printed per row: statuses (with codes), the
slowest answer against the deadline, whether every 503 had Retry-After, recovery, and the cache check (every
file in blobs/ matches the sha256 it is named by, nothing left in tmp/). `main(argv)` returns the figures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "shared", ROOT / "bench", ROOT):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from onnxfn.tools.dev.agent import Function  # noqa: E402
from tests.support.faultproxy import Fault, FaultProxy  # noqa: E402
from tests.support.models import DIGIT, MODELS  # noqa: E402
from tests.support.s3server import S3Server  # noqa: E402

FAULTS = {
    "latency-0.3s": Fault.latency(0.3),
    "latency-30s": Fault.latency(30.0),
    "reset-4KiB": Fault.reset(4096),
    "slowdown-x3": Fault.slowdown(3),
    "slowdown": Fault.slowdown(),
    "blackhole": Fault.blackhole(),
}
RECOVERY_CALLS = 5


def cache_check(root: Path) -> str:
    """"ok (n verified)" or what is wrong: blobs not matching their sha256, partial downloads left."""
    blobs = sorted((root / "blobs").glob("*"))
    bad = [p.name[:12] for p in blobs if hashlib.sha256(p.read_bytes()).hexdigest() != p.name]
    left = sorted(p.name for p in (root / "tmp").glob("*"))
    if bad or left:
        return f"CORRUPT {bad}" if bad else f"PARTIAL LEFT {left}"
    return f"ok ({len(blobs)} verified)"


def call(fn: Function, deadline: float) -> dict:
    """One gateway /predict: status, code, seconds, before the deadline?, Retry-After."""
    end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=deadline)
    t0 = time.perf_counter()
    try:
        reply = fn.call(DIGIT, "image/png", method="POST", url="/predict", deadline=deadline)
    except Exception as e:  # the agent got no answer at all: the worst outcome, reported
        return {"status": -1, "code": type(e).__name__, "seconds": time.perf_counter() - t0, "in_time": False,
                "retry_after": False}
    seconds = time.perf_counter() - t0
    body = reply.json()
    return {"status": reply.http_status, "code": body.get("code", "") if isinstance(body, dict) else "",
            "seconds": seconds, "in_time": dt.datetime.now(dt.timezone.utc) < end,
            "retry_after": bool(reply.http_headers.get("retry-after"))}


def summarize(results: list[dict], deadline: float) -> dict:
    """Statuses with codes, the slowest answer, all in time, Retry-After on every 503."""
    statuses: dict[str, int] = {}
    for r in results:
        key = f"{r['status']} {r['code']}".strip()
        statuses[key] = statuses.get(key, 0) + 1
    return {"calls": len(results), "statuses": statuses, "max_s": round(max(r["seconds"] for r in results), 2),
            "deadline_s": deadline, "all_in_time": all(r["in_time"] for r in results),
            "retry_after_on_503": all(r["retry_after"] for r in results if r["status"] == 503),
            "no_5xx_but_503": all(r["status"] in (200, 503) for r in results)}


def recovery(fn: Function) -> int | None:
    """Calls (10 s deadline) until a 200, or None after RECOVERY_CALLS."""
    for n in range(1, RECOVERY_CALLS + 1):
        if call(fn, 10.0)["status"] == 200:
            return n
    return None


def scenario(s3: S3Server, proxy: FaultProxy, uri: str, client: str, fault: Fault, phase: str, calls: int,
             deadline: float) -> dict:
    """One row: a function under `fault`, cold or warm; its calls, recovery and cache check."""
    with tempfile.TemporaryDirectory(prefix="onnxfn-faults-") as tmp:
        env = {**s3.env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint, "MODEL_URI": uri, "ONNXFN_BAKED_BUNDLE": "",
               "ONNXFN_CACHE_DIR": str(Path(tmp) / "cache"), "ONNXFN_STORAGE_TIMEOUT": "1",
               "ONNXFN_DEADLINE_MARGIN_MS": "300", "ONNXFN_S3_CLIENT": client, "ONNXFN_THREADS": "1",
               "ONNXFN_REVALIDATE_SECONDS": "1" if phase == "warm" else "300"}
        proxy.clear()
        fn = Function(env=env, timeout=40).start()
        try:
            if phase == "warm":
                assert call(fn, 10.0)["status"] == 200, "the warm phase needs a loaded model"
                time.sleep(1.1)  # past ONNXFN_REVALIDATE_SECONDS: the next call revalidates in the background
            injected = proxy.injected()
            proxy.set(fault)
            results = [call(fn, deadline) for _ in range(calls)]
            while phase == "warm" and proxy.injected() == injected and len(results) < 40:
                time.sleep(0.1)  # until the background revalidation has met the fault
                results.append(call(fn, deadline))
            faults = proxy.injected() - injected
            proxy.clear()
            row = {**summarize(results, deadline), "injected": faults,
                   "recovery_calls": recovery(fn), "alive": fn.alive}
            row["cache"] = cache_check(Path(tmp) / "cache")
            return row
        finally:
            fn.stop()
            proxy.clear()


def events_row(s3: S3Server, proxy: FaultProxy, bucket: str, client: str, fault: Fault, deadline: float) -> dict:
    """One event whose result writes meet `fault`, then its redelivery with the fault cleared."""
    from models.train.phantoms import make_phantom, write_png16
    key = f"ct/{client}-{fault.kind}.png"
    with tempfile.TemporaryDirectory(prefix="onnxfn-faults-") as tmp:
        hu, _ = make_phantom(7, (128, 128))
        write_png16(Path(tmp) / "p.png", hu)
        s3.client().put_object(Bucket=bucket, Key=key, Body=(Path(tmp) / "p.png").read_bytes())
    env = {**s3.env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint, "MODEL_URI": str(MODELS / "lesion-unet"),
           "ONNXFN_BAKED_BUNDLE": "", "ONNXFN_EVENT_SOURCES": f"s3://{bucket}/", "ONNXFN_STORAGE_TIMEOUT": "1",
           "ONNXFN_DEADLINE_MARGIN_MS": "300", "ONNXFN_S3_CLIENT": client, "ONNXFN_THREADS": "1"}
    event = json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": bucket}, "object": {"key": key}}}]}).encode()
    result = f"results/{key}.json"
    fn = Function(env=env, entry=ROOT / "functions" / "events.py", timeout=40).start()
    try:
        fn.call(b'{"inputs": []}', "application/json")  # the model loaded first (no storage involved)
        injected = proxy.injected()
        proxy.set(fault)
        t0 = time.perf_counter()
        end = time.monotonic() + deadline
        reply = fn.call(event, "application/json", deadline=deadline)
        seconds, in_time = time.perf_counter() - t0, time.monotonic() < end
        faults = proxy.injected() - injected
        proxy.clear()
        left = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=f"results/{key}")
                      .get("Contents", []))
        again = fn.call(event, "application/json", deadline=10.0)
        summary = again.json()
        complete = again.status == 200 and summary.get("written") == 1 and _complete(s3, bucket, result)
        return {"status": reply.status, "seconds": round(seconds, 2), "deadline_s": deadline, "in_time": in_time,
                "injected": faults, "left": left, "json_left": result in left, "redelivery_completes": complete}
    finally:
        fn.stop()
        proxy.clear()


def _complete(s3: S3Server, bucket: str, key: str) -> bool:
    """The result JSON exists and the mask it names too."""
    client = s3.client()
    answer = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return client.head_object(Bucket=bucket, Key=answer["result"]["mask"]["key"])["ContentLength"] > 0


def run(calls: int, deadline: float, clients: list[str], faults: list[str]) -> dict:
    """Every client x fault x phase; the rows by name."""
    rows = {}
    with S3Server() as s3, FaultProxy(s3.endpoint) as proxy:
        bucket = s3.new_bucket("faults")
        for path in (MODELS / "digits-cnn").iterdir():
            s3.client().put_object(Bucket=bucket, Key="m/" + path.name, Body=path.read_bytes())
        for client in clients:
            for name in faults:
                for phase in ("cold", "warm"):
                    row = scenario(s3, proxy, f"s3://{bucket}/m/", client, FAULTS[name], phase, calls, deadline)
                    rows[f"{client} {name} {phase}"] = row
                    print_row(f"{client} {name} {phase}", row)
        for client in clients:
            for name, fault in (("json-write-503", Fault.slowdown(match=r"^PUT .*\.json$")),
                                ("writes-blackhole", Fault.blackhole(match=r"^PUT "))):
                row = events_row(s3, proxy, bucket, client, fault, deadline)
                rows[f"{client} events {name}"] = row
                print_events_row(f"{client} events {name}", row)
    return rows


def event_ok(row: dict) -> bool:
    """An events row passes: failed in time (502, to be delivered again), no JSON left, completed on redelivery."""
    return row["status"] == 502 and row["in_time"] and not row["json_left"] and row["redelivery_completes"]


def print_events_row(name: str, row: dict) -> None:
    print(f"  {name:30} invocation {row['status']} in {row['seconds']:.2f}/{row['deadline_s']:.0f} s "
          f"in time {'yes' if row['in_time'] else 'NO'}  faults {row['injected']:3}  left {row['left'] or 'nothing'}  "
          f"redelivery completes {'yes' if row['redelivery_completes'] else 'NO'}  "
          f"{'PASS' if event_ok(row) else 'FAIL'}", flush=True)


def row_ok(row: dict) -> bool:
    """A row passes: every call in time, 200 or 503 with Retry-After, alive, recovered, the cache verified."""
    if "statuses" not in row:
        return event_ok(row)
    return (row["all_in_time"] and row["retry_after_on_503"] and row["no_5xx_but_503"] and row["alive"]
            and row["recovery_calls"] is not None and row["cache"].startswith("ok"))


def print_row(name: str, row: dict) -> None:
    statuses = ", ".join(f"{k} x{v}" for k, v in row["statuses"].items())
    ok = row_ok(row)
    print(f"  {name:30} {statuses:45} max {row['max_s']:5.2f}/{row['deadline_s']:.0f} s "
          f"in time {'yes' if row['all_in_time'] else 'NO'}  Retry-After {'yes' if row['retry_after_on_503'] else 'NO'}"
          f"  faults {row['injected']:3}  recovery {row['recovery_calls'] or 'NONE'} call(s)  cache {row['cache']}"
          f"  {'PASS' if ok else 'FAIL'}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    """Run the fault rows with `argv` (the command line's when None), print them and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3, help="calls per row while the fault is on")
    parser.add_argument("--deadline", type=float, default=3.0, help="each faulty call's Fn-Deadline, s")
    parser.add_argument("--clients", default="auto,boto3", help="ONNXFN_S3_CLIENT values (auto: the lean client)")
    parser.add_argument("--faults", default=",".join(FAULTS), help="a subset of: " + ", ".join(FAULTS))
    args = parser.parse_args(argv)
    print(f"storage faults: {args.calls} calls per row, Fn-Deadline {args.deadline} s, digits-cnn from s3:// "
          "through the fault proxy (storage timeout 1 s, deadline margin 300 ms)", flush=True)
    t0 = time.perf_counter()
    rows = run(args.calls, args.deadline, args.clients.split(","), args.faults.split(","))
    passed = sum(map(row_ok, rows.values()))
    print(f"  {passed}/{len(rows)} rows pass in {time.perf_counter() - t0:.0f} s")
    return {"rows": rows, "passed": passed, "total": len(rows), "ok": passed == len(rows),
            "command": "python bench/reliability/faults.py " + " ".join(argv if argv is not None else sys.argv[1:])}


if __name__ == "__main__":
    main()
