#!/usr/bin/env bash
# Every GPU number of docs/benchmarks.md, re-measured in one run of about 5 minutes on one GPU.
# Needs torch, torchvision and this checkout (no Ray, Optuna or MLflow).
#
#   bash bench/gpu.sh OUT [DATA_DIR]     # OUT: a folder for the logs and JSON; DATA_DIR: MNIST
set -euo pipefail
out=${1:?usage: bash bench/gpu.sh OUT [DATA_DIR]}
data=${2:-${GENSWEEP_DATA_DIR:-data}}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1 || true

# 1. One trial's loop: CUDA graphs against eager steps, fp32 and bf16 (the "One trial's loop" rows)
timeout 90 python bench/run.py --device cuda --quick --data-dir "$data" \
    --variants fp32,graphs,bf16+graphs --json "$out/run.json" 2>&1 | tee "$out/run.txt"

# 2. Fused groups K = 1, 4, 16, 64 against one graphed unfused trial and four packed processes:
#    the VAE in fp32 and tf32, the GAN in fp32 and bf16 (the "Fused trials" table)
timeout 100 python bench/bench_fused.py --device cuda --quick --model vae --data-dir "$data" \
    --members 1 4 16 64 --procs 1 4 --graphs on --precisions fp32,tf32 \
    --json "$out/fused-vae.json" 2>&1 | tee "$out/fused-vae.txt"
timeout 100 python bench/bench_fused.py --device cuda --quick --model gan --data-dir "$data" \
    --members 1 4 16 64 --procs 1 4 --graphs on --precisions fp32,bf16 --unfused-precisions fp32,bf16 \
    --json "$out/fused-gan.json" 2>&1 | tee "$out/fused-gan.txt"
echo "done: $out"
