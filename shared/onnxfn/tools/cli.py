"""The `onnxfn` command: package, invoke, serve, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from onnxfn.errors import OnnxfnError

DEMOS = Path(__file__).resolve().parents[3] / "models"
SAMPLES = Path(__file__).resolve().parents[3] / "samples"


def _pair(text: str, cast=float) -> list:
    values = [cast(v) for v in text.replace("x", ",").split(",")]
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two values, got {text!r}")
    return values


def _numbers(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnxfn", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    pk = sub.add_parser("package", help="build a bundle from an ONNX model")
    pk.add_argument("model", type=Path)
    pk.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    pk.add_argument("--name")
    pk.add_argument("--version", default="1")
    pk.add_argument("--task", choices=("classification", "segmentation", "detection", "tensor"), default="tensor")
    pk.add_argument("--description", default="")
    pk.add_argument("--layout", help="NCHW, NHWC, CHW, HWC, NHW, HW or NF (guessed from the shape); NCDHW or NDHWC "
                                     "for a 3-D model (with --frames volume)")
    pk.add_argument("--frames", choices=("first", "each", "volume"),
                    help="multi-frame DICOM: answer frame 0, each frame, or the frames stacked as a volume "
                         "(refused without it)")
    pk.add_argument("--color", choices=("L", "RGB"))
    size = pk.add_mutually_exclusive_group()
    size.add_argument("--size", type=lambda t: _pair(t, int), help="HEIGHTxWIDTH the image is resized to")
    size.add_argument("--keep-size", action="store_true", help="dynamic models: keep the image's size")
    pk.add_argument("--pad-multiple", type=int, help="pad kept-size images up to a multiple of N")
    pk.add_argument("--tile", type=lambda t: _pair(t, int), metavar="HEIGHTxWIDTH",
                    help="segmentation with kept size: run images too large for the function's memory tile by tile")
    pk.add_argument("--overlap", type=float, help="with --tile: the fraction of a tile neighbours share (0.25)")
    pk.add_argument("--blend", choices=("gaussian", "constant"), help="with --tile: how tiles are blended (gaussian)")
    pk.add_argument("--fit", choices=("stretch", "pad", "crop"))
    pk.add_argument("--resample", choices=("nearest", "bilinear", "bicubic", "lanczos", "area"))
    pk.add_argument("--scaling", choices=("unit", "raw", "window", "minmax"))
    pk.add_argument("--window", type=_pair, metavar="CENTER,WIDTH")
    pk.add_argument("--window-source", choices=("manifest", "file"))
    pk.add_argument("--rescale", type=_pair, metavar="SLOPE,INTERCEPT", help="for non-DICOM images")
    pk.add_argument("--mean", type=_numbers)
    pk.add_argument("--std", type=_numbers)
    pk.add_argument("--channel-order", choices=("RGB", "BGR"))
    pk.add_argument("--output", help="the output the task reads (default: the first)")
    pk.add_argument("--activation", choices=("none", "softmax", "sigmoid"))
    pk.add_argument("--decision", choices=("argmax", "threshold"))
    pk.add_argument("--threshold", type=float)
    pk.add_argument("--labels", help="comma-separated labels, or @FILE with one label a line")
    pk.add_argument("--detection-format", choices=("boxes", "yolo"),
                    help="detection: post-NMS boxes/scores/labels outputs, or one raw yolo output (guessed)")
    pk.add_argument("--yolo-layout", choices=("auto", "features_first", "anchors_first"),
                    help="yolo: [1, 4+C, A] (features_first) or [1, A, 4+C] (anchors_first); auto by default")
    pk.add_argument("--boxes-output", help="detection (boxes): the [N, 4] boxes output (guessed)")
    pk.add_argument("--scores-output", help="detection (boxes): the [N] scores output (guessed)")
    pk.add_argument("--labels-output", help="detection (boxes): the [N] class-index output (guessed)")
    pk.add_argument("--score-threshold", type=float, help="detection: lowest score kept (default 0.25)")
    pk.add_argument("--iou-threshold", type=float, help="detection: NMS IoU above which a box is suppressed (0.45)")
    pk.add_argument("--max-detections", type=int, help="detection: most boxes answered (default 100)")
    pk.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    pk.add_argument("--example", type=Path, metavar="FILE.npz",
                    help="one valid array per input name: warm-ups and gates run on it instead of zeros "
                         "(needed when zeros are not valid for an input: sizes, axes, indices)")
    pk.add_argument("--image-input", action="store_true",
                    help="tensor task: the first input takes images on /predict and events (pre-processed as the "
                         "image options say); the answer is the model's outputs as OIP tensors")
    pk.add_argument("--optimize-for", action="append", default=[], choices=("native", "x86_64", "aarch64"),
                    help="add an offline-optimized artifact for this machine's CPU class (native) or another "
                         "architecture (made portable-safe, marked unverified); repeatable")
    pk.add_argument("--int8", action="append", default=[], metavar="TARGET",
                    help="add a static int8 (QDQ) artifact for TARGET: native, x86_64-vnni, x86_64-avxvnni, "
                         "x86_64 (no VNNI: reduce_range) or aarch64; needs --calibration; repeatable")
    pk.add_argument("--onnx-format", action="store_true",
                    help="save this machine's derived artifacts as .onnx instead of memory-mappable .ort")
    pk.add_argument("--calibration", type=Path, help=".npy/.npz of model inputs [N, ...] or a folder of images")
    pk.add_argument("--validation", type=Path, help="inputs the accuracy gate checks (default: the calibration set)")
    pk.add_argument("--max-abs-diff", type=float, default=1e-3, help="fp32 artifacts vs portable (default 1e-3)")
    pk.add_argument("--min-top1", type=float, default=0.99, help="int8 classifiers: top-1 agreement (default 0.99)")
    pk.add_argument("--min-dice", type=float, default=0.99, help="int8 segmenters: mask Dice vs portable (0.99)")
    pk.add_argument("--min-int8-speedup", type=float, default=1.0,
                    help="int8 artifacts for this machine's class must run this much faster than fp32 (1.0)")

    iv = sub.add_parser("invoke", help="one inference through the function's core; prints the answer")
    iv.add_argument("file", type=Path, help="an image, a DICOM file, or OIP request JSON")
    iv.add_argument("--model", help="bundle URI (default: MODEL_URI, else the demo digits model)")
    iv.add_argument("--content-type")

    sv = sub.add_parser("serve", help="local HTTP front: the function under the real fdk, called as API Gateway does")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--model", help="bundle URI (default: MODEL_URI, else the demo digits model)")

    sub.add_parser("demo", help="run the demo models on the bundled samples through the real fdk")

    pv = sub.add_parser("prove", help="check a bundle's ONNX model against its source framework's saved outputs")
    pv.add_argument("bundle", type=Path)
    pv.add_argument("--inputs", type=Path, required=True, help=".npy of inputs in the model's shape and layout")
    pv.add_argument("--outputs", type=Path, required=True, help=".npy of the source framework's outputs on them")
    pv.add_argument("--framework", required=True, help='source framework and version, e.g. "tensorflow 2.21.0"')
    pv.add_argument("--max-abs", type=float, default=1e-4, help="largest absolute difference allowed")
    pv.add_argument("--min-agreement", type=float, default=0.995, help="smallest argmax agreement allowed")

    bn = sub.add_parser("bench", help="measure every engine and setting for a model on this machine, with accuracy")
    bn.add_argument("target", nargs="?", type=Path, help="a bundle folder or an .onnx model")
    bn.add_argument("--runs", type=int, help="timed runs per candidate and shape (default 30; --quick 6)")
    bn.add_argument("--warmup", type=int, help="untimed runs per candidate and shape first (default 3; --quick 1)")
    bn.add_argument("--rounds", type=int, help="round-robin rounds the runs are split into (default 6; --quick 3)")
    bn.add_argument("--threads", help="intra-op thread counts, e.g. 1,2 (default 1..the CPU quota)")
    bn.add_argument("--levels", help="graph optimization levels (default EXTENDED,ALL)")
    bn.add_argument("--providers", help="execution providers: cpu,openvino (default: those installed)")
    bn.add_argument("--spinning", help="intra-op spinning: off,on (default both; --quick off)")
    bn.add_argument("--prepacking", help="weight prepacking: on,off (default both; --quick on)")
    bn.add_argument("--artifacts", help="only these artifacts of the bundle (comma-separated paths)")
    bn.add_argument("--shapes", help="input shapes to time, e.g. 1x1x128x128,1x1x256x256 (NAME=SHAPE+NAME=SHAPE "
                                     "for several inputs)")
    bn.add_argument("--inputs", type=Path, help=".npy/.npz of sample inputs [N, ...] (default: the bundle's "
                                                "samples.npy, else generated)")
    bn.add_argument("--samples", type=int, help="inputs the accuracy is measured on (default 16; --quick 4)")
    bn.add_argument("--torch", help="PyTorch baseline: module:function returning an nn.Module, or a TorchScript file")
    bn.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    bn.add_argument("--sklearn", type=Path, help="scikit-learn baseline: a pickled estimator with predict_proba")
    bn.add_argument("--quick", action="store_true", help="few runs; spinning and prepacking at their defaults; "
                                                         "no torch.compile")
    bn.add_argument("--out", type=Path, help="folder for results.json, report.md, latency.png "
                                             "(default bench-results/NAME)")
    bn.add_argument("--write", action="store_true", help="record the fastest CPU-provider candidate within "
                                                         "tolerance as the bundle's tuning for this CPU class")
    bn.add_argument("--merge", nargs="+", type=Path, metavar="RESULTS_JSON",
                    help="join results of separate runs (e.g. the OpenVINO venv's) instead of measuring")
    bn.add_argument("--gap", type=float, help="seconds between batches (default 0.02; --quick 0)")
    bn.add_argument("--noise", type=float, default=0.15, help="flag a candidate whose round medians spread more "
                                                              "than this fraction of their median (0.15)")
    bn.add_argument("--max-abs-diff", type=float, default=1e-3, help="fp32 candidates vs the reference (1e-3)")
    bn.add_argument("--min-top1", type=float, default=0.99, help="int8 classifiers: top-1 agreement (0.99)")
    bn.add_argument("--min-dice", type=float, default=0.99, help="int8 segmenters: mask Dice (0.99)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return {"package": _package, "invoke": _invoke, "serve": _serve, "demo": _demo,
                "prove": _prove, "bench": _bench}[args.command](args)
    except OnnxfnError as e:
        print(f"onnxfn {args.command}: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _package(args) -> int:
    from onnxfn.tools.accuracy import Thresholds
    from onnxfn.tools.artifacts import default_int8_target
    from onnxfn.tools.package import Options, build
    image = {k: v for k, v in {
        "color": args.color, "size": args.size, "pad_multiple": args.pad_multiple, "fit": args.fit,
        "resample": args.resample, "scaling": args.scaling, "window_source": args.window_source,
        "rescale": args.rescale, "mean": args.mean, "std": args.std, "channel_order": args.channel_order,
        "frames": args.frames,
        "window": {"center": args.window[0], "width": args.window[1]} if args.window else None,
        "tiling": {k: v for k, v in {"tile": args.tile, "overlap": args.overlap, "blend": args.blend}.items()
                   if v is not None} if args.tile else None,
    }.items() if v is not None}
    if (args.overlap is not None or args.blend) and not args.tile:
        print("onnxfn package: --overlap and --blend go with --tile", file=sys.stderr)
        return 2
    detection = {k: v for k, v in {
        "format": args.detection_format, "layout": args.yolo_layout, "boxes": args.boxes_output,
        "scores": args.scores_output, "labels": args.labels_output, "score_threshold": args.score_threshold,
        "iou_threshold": args.iou_threshold, "max_detections": args.max_detections,
    }.items() if v is not None}
    labels = None
    if args.labels:
        labels = (Path(args.labels[1:]).read_text().split("\n") if args.labels.startswith("@")
                  else args.labels.split(","))
        labels = [label.strip() for label in labels if label.strip()]
    options = Options(name=args.name, version=args.version, task=args.task, description=args.description,
                      layout=args.layout, image=image, output=args.output, activation=args.activation,
                      decision=args.decision, threshold=args.threshold, labels=labels, detection=detection,
                      force=args.force, example=args.example, image_input=args.image_input,
                      optimize_for=args.optimize_for, calibration=args.calibration, validation=args.validation,
                      ort_format=not args.onnx_format,
                      int8=[default_int8_target() if t == "native" else t for t in args.int8],
                      thresholds=Thresholds(max_abs_diff=args.max_abs_diff, min_top1=args.min_top1,
                                            min_dice=args.min_dice, min_int8_speedup=args.min_int8_speedup),
                      progress=lambda line: print(f"onnxfn package: {line}", file=sys.stderr, flush=True))
    try:
        bundle = build(args.model, args.out, options)
    finally:
        for line in options.report:
            print(f"onnxfn package: {line}", file=sys.stderr)
    print(json.dumps(bundle.manifest.to_dict(), indent=2))
    print(f"onnxfn package: wrote {bundle.root}", file=sys.stderr)
    return 0


def _settings(model: str | None):
    from onnxfn.settings import Settings
    settings = Settings.from_env()
    if model:
        from dataclasses import replace
        settings = replace(settings, model_uri=model)
    return settings


def _invoke(args) -> int:
    from onnxfn.app import App, Request
    settings = _settings(args.model)
    app = App(lambda: settings)
    reply = app.handle(Request("POST", "/", {"content-type": args.content_type or ""}, args.file.read_bytes()))
    print(json.dumps(reply.body, indent=2))
    return 0 if reply.status < 400 else 1


def _serve(args) -> int:
    from onnxfn.tools.dev.serve import serve
    env = {"MODEL_URI": _settings(args.model).model_uri}
    serve(args.host, args.port, env)
    return 0


def _demo(args) -> int:
    """Each demo bundle answers its bundled sample, through the real fdk, as a direct invocation."""
    from onnxfn.tools.dev.agent import Function
    runs = [(f"digits-{source}", "digit-7.png", "image/png") for source in ("cnn", "keras", "paddle", "sklearn")]
    runs.append(("lesion-unet", "phantom.dcm", "application/dicom"))
    for bundle, sample, ctype in runs:
        with Function(env={"MODEL_URI": str(DEMOS / bundle)}) as fn:
            answer = fn.call((SAMPLES / sample).read_bytes(), ctype).json()
        if "result" in answer and "mask" in answer["result"]:
            answer["result"]["mask"]["data"] = answer["result"]["mask"]["data"][:40] + "..."
        print(f"== {bundle} <- samples/{sample}")
        print(json.dumps(answer, indent=2))
    return 0


def _prove(args) -> int:
    from onnxfn.tools.proof import prove
    result = prove(args.bundle, args.inputs, args.outputs, args.framework, max_abs=args.max_abs,
                   min_agreement=args.min_agreement)
    if not result.passed:
        print(f"onnxfn prove: {result.report()}\nonnxfn prove: {args.bundle} left unchanged", file=sys.stderr)
        return 1
    print(json.dumps({"proof": result.proof}, indent=2))
    print(f"onnxfn prove: {result.report()}\nonnxfn prove: recorded in {args.bundle / 'manifest.json'}",
          file=sys.stderr)
    return 0


def _bench(args) -> int:
    from onnxfn.tools.bench import main as bench
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
