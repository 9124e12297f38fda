"""`onnxfn bench`: every way this machine can run a model, side by side, with accuracy.

Candidates (all measured on this machine, each in its own worker process):

- ONNX Runtime, for each installed execution provider (CPUExecutionProvider; OpenVINO when the
  `onnxruntime` module is onnxruntime-openvino, which lives in its own venv: bench there with
  `--out` and join the files with `--merge`), each artifact of the bundle this CPU can run
  (pre-optimized ones are loaded with ORT_DISABLE_ALL, as the function loads them), graph
  optimization levels (EXTENDED, ALL), intra-op threads 1..quota, spinning off/on (on only with
  more than one thread), prepacking on/off. Sessions are built with the runner's own
  `session_options`, so what is measured is what the function would build;
- the source framework as a baseline: PyTorch eager (an importable `module:function` factory or a
  TorchScript file) and `torch.compile`, at the same threads and inputs; scikit-learn's
  `predict_proba` from a pickle.

Per candidate: session creation and first-run times, latency p50/p90/p99 over N timed runs after
warm-up, peak RSS of its worker process (VmHWM; also the increase over the worker's RSS before the
model was loaded), and accuracy against the reference (the source framework's outputs when one is
given, else the portable artifact on the CPU provider, ORT_ENABLE_ALL, fewest threads): max abs
difference, top-1 agreement (classification), mask Dice (segmentation).

Repeatability: the timed runs are split in rounds; each round runs one batch of every candidate in
turn (round-robin, the order rotated and reversed between rounds), so slow phases of a shared
machine hit every candidate alike. Min/median/max of the per-round medians are reported and a
candidate whose round medians spread by more than `noise` (default 15 %) of their median is
flagged noisy.

`--write` records the fastest CPU-provider candidate within tolerance as the bundle's `tuning`
entry for this machine's CPU class (architecture + the instruction-set features onnxfn knows),

Modules: options (BenchOptions, BenchError), target (what is benched, its inputs), plan (the
candidates), workers (one process per candidate), run (plan, load, time, collect, report steps),
verdict (accuracy by the one judge, onnxfn.tools.accuracy; winner; comparisons), stats, report
(table, report.md, latency.png, results.json), merge, tuning (--write), environment (machine,
libraries), command (`onnxfn bench`).
"""
from onnxfn.tools.bench.command import main
from onnxfn.tools.bench.options import BenchError, BenchOptions, options_from_args, parse_shapes
from onnxfn.tools.bench.plan import Candidate
from onnxfn.tools.bench.report import accuracy_text, markdown, ms, save, table
from onnxfn.tools.bench.stats import geomean, summarize
from onnxfn.tools.bench.target import Target, load_target
from onnxfn.tools.bench.tuning import tuning_entry, write_tuning

# The functions run.run, plan.plan and merge.merge are not re-exported: their names are their modules'.
# The names bench/summarize.py imports:
_accuracy_text, _ms = accuracy_text, ms

__all__ = ["BenchError", "BenchOptions", "Candidate", "Target", "geomean", "load_target", "main", "markdown",
           "options_from_args", "parse_shapes", "save", "summarize", "table", "tuning_entry", "write_tuning"]
