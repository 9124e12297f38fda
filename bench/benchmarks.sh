#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: export the benchmark models, make inputs, package bundles with optimized
# and int8 artifacts, bench each in the main venv and in the OpenVINO venv, merge.
#
#   bench/benchmarks.sh [MODEL ...]      MODEL: densenet121 unet2d unet2d-shapes digits-cnn lesion-unet digits-sklearn
#
# Needs the dev and bench extras in .venv (pip install -e '.[dev,bench]'); bench/openvino.sh makes
# .venv-openvino. Results go to bench/results/MODEL/{main,openvino,merged}/. Bundles and inputs are
# kept in bench/.cache/ (not in git). RUNS (60) and ROUNDS (12) set the timed runs per candidate and the
# round-robin rounds they are split into. On a shared 2-core machine a full run takes about 40 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY=.venv/bin/python
ONNXFN=.venv/bin/onnxfn
C=bench/.cache
I=$C/inputs
B=$C/bundles
R=bench/results
DIGITS=0,1,2,3,4,5,6,7,8,9
INT8="--int8 x86_64 --min-int8-speedup 0"   # keep int8 even where it is slower: the bench shows by how much

prepare() {
    [ -f $C/densenet121.onnx ] || $PY bench/export_densenet.py
    [ -f $C/unet2d.onnx ] || $PY bench/export_unet.py
    [ -f $I/phantoms-256-eval.npy ] || $PY bench/make_inputs.py
    [ -f $C/digits-sklearn.pkl ] || $PY bench/export_sklearn.py
}

package() {
    [ -f $B/$1/manifest.json ] && [ -z "${REPACKAGE:-}" ] && return 0   # REPACKAGE=1 rebuilds the bundles
    case "$1" in
    densenet121) $ONNXFN package $C/densenet121.onnx --out $B/densenet121 --name densenet121 --task classification \
        --activation softmax --scaling unit --mean 0.5 --std 0.25 --force --optimize-for native $INT8 \
        --calibration $I/phantoms-224-calib.npy --validation $I/phantoms-224-eval.npy >/dev/null ;;
    unet2d) $ONNXFN package $C/unet2d.onnx --out $B/unet2d --name unet2d --task segmentation --keep-size \
        --pad-multiple 16 --scaling unit --activation sigmoid --decision threshold --labels foreground --force \
        --optimize-for native $INT8 --min-dice 0 \
        --calibration $I/phantoms-256-calib.npy --validation $I/phantoms-256-eval.npy >/dev/null ;;
    digits-cnn) $ONNXFN package models/digits-cnn/model.onnx --out $B/digits-cnn --name digits-cnn --version 1.0.0 \
        --task classification --activation softmax --labels $DIGITS --scaling unit --force \
        --optimize-for native $INT8 --calibration $I/digits-calib.npy >/dev/null ;;
    lesion-unet) $ONNXFN package models/lesion-unet/model.onnx --out $B/lesion-unet --name lesion-unet \
        --version 1.0.0 --task segmentation --keep-size --pad-multiple 4 --scaling window --window 40,400 \
        --rescale 1,-1024 --activation sigmoid --decision threshold --labels lesion --force \
        --optimize-for native $INT8 --calibration $I/phantoms-256-calib.npy --validation $I/phantoms-256-eval.npy \
        >/dev/null ;;
    esac
}

bench_one() {
    local name=$1; shift
    local target=$1; shift
    mkdir -p $R/$name
    set -- "$@" --runs=${RUNS:-60} --rounds=${ROUNDS:-12}
    $ONNXFN bench "$target" --out $R/$name/main "$@" 2>$R/$name/main.log | tee $R/$name/main.txt
    if [ -z "${NO_OPENVINO:-}" ]; then
        # the OpenVINO venv's onnxruntime is another version: its CPU provider is measured alongside, on the
        # portable artifact only (the pre-optimized .ort files are made for onnxruntime $(...) of the main venv)
        bench/openvino.sh "$target" --out $R/$name/openvino --artifacts model.onnx --spinning off --prepacking on \
            $(printf '%s\n' "$@" | grep -E '^--(inputs|shapes|runs|rounds|warmup|threads)=' || true) \
            2>$R/$name/openvino.log | tee $R/$name/openvino.txt
        $ONNXFN bench --merge $R/$name/main/results.json $R/$name/openvino/results.json --out $R/$name/merged \
            > $R/$name/merged.txt
    fi
}

prepare
for model in ${@:-densenet121 unet2d unet2d-shapes digits-cnn lesion-unet digits-sklearn}; do
    cat /proc/loadavg
    case "$model" in
    densenet121) package densenet121
        bench_one densenet121 $B/densenet121 --inputs=$I/phantoms-224-eval.npy --torch bench.factories:densenet121 ;;
    unet2d) package unet2d
        bench_one unet2d $B/unet2d --inputs=$I/phantoms-256-eval.npy --torch bench.factories:unet ;;
    unet2d-shapes)
        bench_one unet2d-shapes $B/unet2d --shapes=1x1x128x128,1x1x256x256 --inputs=$I/phantoms-256-eval.npy \
            --levels ALL --spinning off --prepacking on --torch bench.factories:unet --no-compile ;;
    digits-cnn) package digits-cnn
        bench_one digits-cnn $B/digits-cnn --inputs=models/data/digits-heldout-nchw.npy --torch bench.factories:digits_cnn ;;
    lesion-unet) package lesion-unet
        bench_one lesion-unet $B/lesion-unet --inputs=$I/phantoms-256-eval.npy --torch bench.factories:lesion_unet ;;
    digits-sklearn)
        NO_OPENVINO=${NO_OPENVINO:-} bench_one digits-sklearn models/digits-sklearn \
            --inputs=models/data/digits-heldout-nf.npy --sklearn=$C/digits-sklearn.pkl ;;
    esac
done
