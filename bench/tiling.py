"""Tiled vs whole-image inference on the demo U-Net (models/lesion-unet): time, peak RSS, mask agreement.

    python bench/tiling.py [--sizes 1024 2048 4096] [--tiles 256 512] [--repeats 2] [--threads 2]

16-bit PNG phantoms (models/train/phantoms, HU + 1024) are written once; every case then runs in a fresh
subprocess (so its peak RSS, VmHWM from /proc/self/status at its end, is its own): decode the PNG, build the
session, then time pre-processing + inference (+ blending) + the mask, and save the mask. Cases are alternated
(whole, tile A, tile B, whole, ...) so a busy machine slows all alike; the time printed is the median over
`--repeats`. `base MB` is the subprocess's RSS before the timed part (interpreter, onnxruntime, session,
decoded image); `agree` is the fraction of pixels whose mask value equals whole-image inference's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import procfs  # bench/procfs.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SEED = 900003


def case(png: Path, tile: int, threads: int, mask_path: Path) -> dict:
    """One measurement, in this (fresh) process: tile 0 = whole-image inference."""
    from onnxfn.bundles import bundle as bundles
    from onnxfn.bundles.images import Tiling
    from onnxfn.codecs import payload
    from onnxfn.runtime import session as sessions
    from onnxfn.tasks import postprocess, preprocess, tiling

    b = bundles.load(ROOT / "models" / "lesion-unet")
    spec, out_spec = b.manifest.inputs[0], b.manifest.primary_output
    session = sessions.create(b.root / "model.onnx", threads)
    body = png.read_bytes()
    image = payload.decode_image(payload.classify(body, "image/png", 1 << 30), 1 << 30)
    base = procfs.status()["VmRSS"]

    def infer(feed):
        return session.run([out_spec.name], {spec.name: feed})[0]
    start = time.perf_counter()
    if tile:
        spec = dataclasses.replace(spec, image=dataclasses.replace(spec.image, tiling=Tiling((tile, tile))))
        output, _ = tiling.run(image, spec, infer)
    else:
        feed, _ = preprocess.prepare(image, spec)
        output = infer(feed)
        del feed
    mask = postprocess._labels(output, out_spec, spec)
    seconds = time.perf_counter() - start
    np.save(mask_path, mask)
    footprint = tiling.footprint(image.height, image.width, 1, 1, spec) if tile else None
    return {"seconds": seconds, "base_mb": base, "peak_mb": procfs.status()["VmHWM"], "footprint": footprint}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", nargs=3, metavar=("PNG", "TILE", "MASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        png, tile, mask = args.case
        print(json.dumps(case(Path(png), int(tile), args.threads, Path(mask))))
        return
    from models.train import phantoms
    print(f"demo U-Net, {args.threads} threads, median of {args.repeats}; 16-bit phantoms")
    print(f"{'image':>10} {'mode':>10} {'seconds':>8} {'base MB':>8} {'peak MB':>8} {'footprint MB':>13} {'agree':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            png = Path(tmp) / f"{size}.png"
            phantoms.write_png16(png, phantoms.make_phantom(SEED, (size, size))[0])
            modes = [0] + args.tiles
            runs: dict[int, list[dict]] = {m: [] for m in modes}
            for _ in range(args.repeats):
                for mode in modes:
                    runs[mode].append(run_case(png, mode, args.threads, Path(tmp) / f"{size}-{mode}.npy"))
            whole = np.load(Path(tmp) / f"{size}-0.npy")
            for mode in modes:
                agree = float((np.load(Path(tmp) / f"{size}-{mode}.npy") == whole).mean())
                r = runs[mode]
                fp = r[0]["footprint"]
                print(f"{size:>5}x{size:<4} {'whole' if not mode else f'tile {mode}':>10} "
                      f"{statistics.median(x['seconds'] for x in r):8.2f} {max(x['base_mb'] for x in r):8.0f} "
                      f"{max(x['peak_mb'] for x in r):8.0f} {'' if fp is None else f'{fp / 2**20:.0f}':>13} "
                      f"{agree:9.6f}", flush=True)


def run_case(png: Path, tile: int, threads: int, mask: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--case", str(png), str(tile),
                           str(mask)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"case {png.name} tile {tile} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
