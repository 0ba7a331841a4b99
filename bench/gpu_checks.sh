#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (torch + genmodels only: Ray, Optuna
# and MLflow are not installed there). From the repository root:
#
#     bash bench/gpu_checks.sh OUT DATA_DIR          # on the GPU: 317 s on an H200
#     QUICK=1 bash bench/gpu_checks.sh /tmp/out tests/data   # a check of the script on a CPU
#
# 1. bench_fused: the fused GAN's convolution layouts (K calls, one batched matrix product) in
#    fp32, tf32 and bf16 against 1 and 4 unfused trials, alone on the GPU (it times); the fused
#    VAE in fp32 and tf32.
# 2. The VAE's CUDA-graph compile ("reduce-overhead") against eager for a whole short run: the
#    steady-state gain is known (bench/RESULTS.md); this says what the compilation costs a trial.
# 3. gan_curve: four GAN configurations at once, each in its own process, towards IS 9 / fcd 10.
# Each part has its own time limit, so one overrunning part leaves the others' results.
set -u
OUT=${1:-bench/h200}
DATA=${2:-.gpu/data}
mkdir -p "$OUT"
if [ -n "${QUICK:-}" ]; then  # seconds on a CPU: the script's plumbing, not numbers
    DEVICE=cpu FUSED="--members 1 2 --steps 1 --procs 1" PRECISIONS=fp32,bf16 VAE_MEMBERS="2"
    VAE_PRECISIONS=fp32
    TRAIN="--train-subset 256 --epochs 1" CURVE="--epochs 2 --eval-every 1 --eval-samples 200 --test-samples 200 --train-subset 256 --budget-s 5"
    LIMIT_FUSED=600 LIMIT_CURVE=600
else
    DEVICE=cuda FUSED="--quick --members 1 8 32 --procs 1 4" PRECISIONS=fp32,tf32,bf16 VAE_MEMBERS="16 64"
    VAE_PRECISIONS=fp32,tf32  # the VAE's matrix products: bf16 lost there already
    TRAIN="--epochs 5" CURVE="--epochs 200 --budget-s 120"
    LIMIT_FUSED=180 LIMIT_CURVE=170
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
python -c "import torch; print('torch', torch.__version__, 'cuDNN TF32 default', torch.backends.cudnn.allow_tf32)"

echo "== 1. fused GAN: layouts x precisions against unfused trials"
timeout "$LIMIT_FUSED" python bench/bench_fused.py --device "$DEVICE" --data-dir "$DATA" --model gan \
    $FUSED --layouts per-member,matmul --precisions "$PRECISIONS" --json "$OUT/fused-gan-layouts.json"
echo "== 1b. fused VAE: its matrix products in fp32 and tf32"
timeout 90 python bench/bench_fused.py --device "$DEVICE" --data-dir "$DATA" --model vae $FUSED \
    --members $VAE_MEMBERS --procs 1 --precisions "$VAE_PRECISIONS" --json "$OUT/fused-vae-tf32.json"

echo "== 2. VAE: a whole short run, eager against CUDA graphs (compile reduce-overhead)"
for mode in off reduce-overhead; do
    [ "$DEVICE" = cpu ] && [ "$mode" != off ] && continue  # CUDA graphs are CUDA only
    TIMEFORMAT="vae compile $mode: wall %R s"
    time { timeout 90 python -m genmodels.train vae --data-dir "$DATA" --device "$DEVICE" $TRAIN \
        --compile-mode "$mode" --no-progress --out "$OUT/vae-$mode" > "$OUT/vae-$mode.log" 2>&1
        echo "exit $?"; }
    grep -E "epoch +[0-9]+|test_elbo" "$OUT/vae-$mode.log" | tail -3
done
rm -rf "$OUT"/vae-off "$OUT"/vae-reduce-overhead  # figures and checkpoints: not results

echo "== 3. GAN curve: four configurations at once, one process each"
for config in default batch64 lr5e-4 ttur; do
    timeout "$LIMIT_CURVE" python bench/gan_curve.py --data-dir "$DATA" --device "$DEVICE" \
        --configs "$config" $CURVE --cache-dir "$OUT/cache" --json "$OUT/gan_curve-$config.json" \
        > "$OUT/gan_curve-$config.log" 2>&1 &
done
wait
tail -n 3 "$OUT"/gan_curve-*.log
rm -rf "$OUT/cache"
