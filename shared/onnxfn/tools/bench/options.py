"""What `onnxfn bench` is asked to do: its options (from the command line or code), their defaults,
and the bench's error."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from onnxfn.errors import OnnxfnError
from onnxfn.runtime import cpu
from onnxfn.tools.accuracy import Thresholds

#: The version of the results.json format.
SCHEMA = 1


class BenchError(OnnxfnError):
    """What the bench cannot do, in a sentence (the command exits 2 with it)."""
    status, code = 400, "bench_error"


@dataclass
class BenchOptions:
    """The bench's settings; None fields take `resolved()`'s defaults (fewer with `quick`)."""
    runs: int | None = None
    warmup: int | None = None
    rounds: int | None = None
    threads: list[int] | None = None
    levels: list[str] | None = None
    providers: list[str] | None = None          # "cpu", "openvino"; default: those installed
    spinning: list[bool] | None = None
    prepacking: list[bool] | None = None
    artifacts: list[str] | None = None          # artifact paths to bench (default: all this CPU runs)
    shapes: list[dict[str, tuple[int, ...]]] | None = None
    inputs: Path | None = None
    samples: int | None = None                  # accuracy inputs
    torch: str | None = None
    compile: bool | None = None
    sklearn: Path | None = None
    quick: bool = False
    gap: float | None = None                    # pause between batches (lets spinning threads stop)
    noise: float = 0.15
    thresholds: Thresholds = field(default_factory=Thresholds)
    seed: int = 0
    progress: Callable[[str], None] | None = None

    def resolved(self) -> "BenchOptions":
        """Fill what was not given: full defaults, or --quick's few runs and fewer settings."""
        q = self.quick
        return replace(
            self,
            runs=self.runs if self.runs is not None else (6 if q else 30),
            warmup=self.warmup if self.warmup is not None else (1 if q else 3),
            rounds=max(1, min(self.rounds if self.rounds is not None else (3 if q else 6),
                              self.runs if self.runs is not None else (6 if q else 30))),
            threads=sorted(set(self.threads)) if self.threads else list(range(1, cpu.threads() + 1)),
            levels=self.levels or ["EXTENDED", "ALL"],
            spinning=self.spinning if self.spinning is not None else ([False] if q else [False, True]),
            prepacking=self.prepacking if self.prepacking is not None else ([True] if q else [True, False]),
            samples=self.samples if self.samples is not None else (4 if q else 16),
            compile=self.compile if self.compile is not None else not q,
            gap=self.gap if self.gap is not None else (0.0 if q else 0.02),
            progress=self.progress or (lambda line: print(f"onnxfn bench: {line}", file=sys.stderr, flush=True)),
        )


def parse_shapes(text: str) -> list[dict[str, tuple[int, ...]]]:
    """`1x1x128x128,1x1x256x256` (the model's one input, or the first dynamic one) or
    `image=1x1x128x128+mask=1x128x128,...`: one case per comma-separated item."""
    cases = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        case: dict[str, tuple[int, ...]] = {}
        for part in item.split("+"):
            name, _, dims = part.rpartition("=")
            try:
                shape = tuple(int(d) for d in dims.lower().split("x"))
            except ValueError:
                raise BenchError(f"--shapes {item!r}: expected sizes like 1x1x256x256 (or NAME=1x1x256x256)") from None
            if not shape or any(d < 1 for d in shape):
                raise BenchError(f"--shapes {item!r}: sizes must be positive")
            case[name or ""] = shape
        cases.append(case)
    if not cases:
        raise BenchError("--shapes is empty")
    return cases


def _bools(text: str, what: str) -> list[bool]:
    table_ = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
    values = []
    for t in filter(None, (v.strip().lower() for v in text.split(","))):
        if t not in table_:
            raise BenchError(f"--{what}: {t!r} is not on or off")
        values.append(table_[t])
    return values


def options_from_args(args) -> BenchOptions:
    """BenchOptions from `onnxfn bench`'s parsed arguments, checked."""
    threads = None
    if args.threads:
        try:
            threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
        except ValueError:
            raise BenchError(f"--threads {args.threads!r}: expected numbers like 1,2") from None
        if not threads or min(threads) < 1:
            raise BenchError("--threads: each count must be 1 or more")
    for name in ("runs", "warmup", "rounds", "samples"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (value == 0 and name in ("runs", "rounds", "samples"))):
            raise BenchError(f"--{name} must be {'0 or more' if name == 'warmup' else '1 or more'}")
    if args.runs is not None and args.rounds is not None and args.rounds > args.runs:
        raise BenchError("--rounds cannot exceed --runs (each round runs at least one batch)")
    return BenchOptions(
        runs=args.runs, warmup=args.warmup, rounds=args.rounds, threads=threads,
        levels=[v.strip().upper() for v in args.levels.split(",")] if args.levels else None,
        providers=[v.strip().lower() for v in args.providers.split(",")] if args.providers else None,
        spinning=_bools(args.spinning, "spinning") if args.spinning else None,
        prepacking=_bools(args.prepacking, "prepacking") if args.prepacking else None,
        artifacts=[v.strip() for v in args.artifacts.split(",")] if args.artifacts else None,
        shapes=parse_shapes(args.shapes) if args.shapes else None, inputs=args.inputs, samples=args.samples,
        torch=args.torch, compile=False if args.no_compile else None, sklearn=args.sklearn, quick=args.quick,
        gap=args.gap, noise=args.noise,
        thresholds=Thresholds(max_abs_diff=args.max_abs_diff, min_top1=args.min_top1, min_dice=args.min_dice))
