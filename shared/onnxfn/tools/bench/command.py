"""`onnxfn bench` on the command line: measure (or merge), optionally record the tuning, save and print."""
from __future__ import annotations

import sys
from pathlib import Path

from onnxfn.tools.accuracy import Thresholds
from onnxfn.tools.bench.merge import merge
from onnxfn.tools.bench.options import BenchError, options_from_args
from onnxfn.tools.bench.report import save, summary
from onnxfn.tools.bench.run import run
from onnxfn.tools.bench.target import load_target
from onnxfn.tools.bench.tuning import record


def main(args) -> int:
    """`onnxfn bench` (cli.py hands its parsed arguments here)."""
    argv = ["onnxfn", *sys.argv[1:]] if sys.argv[1:2] == ["bench"] else []
    if args.merge:
        result = merge(args.merge, Thresholds(max_abs_diff=args.max_abs_diff, min_top1=args.min_top1,
                                              min_dice=args.min_dice))
        result["command"] = argv
        out = args.out or Path(args.merge[0]).parent / "merged"
    else:
        if args.target is None:
            raise BenchError("name a bundle folder or an .onnx model (or --merge RESULTS.json ...)")
        target = load_target(args.target)
        if args.write and not target.is_bundle:
            raise BenchError("--write records the winner in a bundle's manifest: name a bundle folder, not a model")
        result = run(target, options_from_args(args), argv)
        out = args.out or Path("bench-results") / target.name
    if args.write:
        result["written"] = record(result)
    files = save(result, out)
    print(summary(result, files))
    return 0
