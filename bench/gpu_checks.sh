#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (torch + genmodels only: Ray, Optuna
# and MLflow are not installed there). From the repository root:
#
#     bash bench/gpu_checks.sh OUT DATA_DIR          # on the GPU
#     QUICK=1 bash bench/gpu_checks.sh /tmp/out tests/data   # a check of the script on a CPU
#
# The CUDA-graph step (genmodels/graphs.py, `cuda_graphs`):
# 0. check_graphs: a graphed step trains the same models as the eager one (VAE, GAN, fused both).
# 1. run.py: our loop eager / graphs / bf16+graphs / channels-last+graphs against the common
#    pipeline, and the share of a default 10-epoch trial (with graphs) spent training.
# 2. bench_fused: fused GAN (K calls, one batched matrix product; tf32, bf16) and fused VAE, eager
#    and graphed, against 1 and 4 unfused trials eager and graphed, alone on the GPU (it times).
# 3. (PARTS=3) the share of a default 10-epoch trial spent training on 60,000 images (Fashion-MNIST:
#    MNIST here has 10,000), and the packing curve of graphed trials.
# Each part has its own time limit, so one overrunning part leaves the others' results.
set -u
OUT=${1:-bench/h200}
DATA=${2:-.gpu/data}
mkdir -p "$OUT"
if [ -n "${QUICK:-}" ]; then  # seconds on a CPU: the script's plumbing, not numbers
    DEVICE=cpu GRAPHS=off FUSED="--members 1 2 --steps 1 --procs 1" PRECISIONS=fp32,bf16
    VAE_MEMBERS="2" RUN="--quick --steps 2 --share-epochs 1" LIMIT=600
    VARIANTS=graphs,fp32  # bf16 on a CPU is minutes per GAN step
    PACK="--model vae --steps 2"
else
    DEVICE=cuda GRAPHS=off,on FUSED="--quick --members 8 32 64 --procs 1 4" PRECISIONS=tf32,bf16
    VAE_MEMBERS="16 64" RUN="--quick --share-epochs 10" LIMIT=130
    VARIANTS=graphs,fp32,bf16+graphs,channels-last+graphs
    PACK="--quick --trials 1,2,4,8"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
python -c "import torch; print('torch', torch.__version__, 'cuDNN TF32 default', torch.backends.cudnn.allow_tf32)"

PARTS=${PARTS:-012}
[[ $PARTS == *0* ]] && echo "== 0. CUDA graphs: the same training as eager"
[[ $PARTS == *0* ]] && timeout 90 python bench/check_graphs.py --data-dir "$DATA"

[[ $PARTS == *1* ]] && echo "== 1. our loop (eager, graphs, bf16, channels-last) against the common pipeline"
[[ $PARTS == *1* ]] && timeout "$LIMIT" python bench/run.py --device "$DEVICE" --data-dir "$DATA" $RUN --skip eval \
    --variants "$VARIANTS" --json "$OUT/run-graphs.json"

[[ $PARTS == *2* ]] && echo "== 2. fused GAN and VAE, eager and graphed, against unfused trials"
[[ $PARTS == *2* ]] && timeout "$LIMIT" python bench/bench_fused.py --device "$DEVICE" --data-dir "$DATA" --model gan \
    $FUSED --layouts matmul,per-member --precisions "$PRECISIONS" --graphs "$GRAPHS" \
    --json "$OUT/fused-gan-graphs.json"
[[ $PARTS == *2* ]] && timeout 60 python bench/bench_fused.py --device "$DEVICE" --data-dir "$DATA" --model vae $FUSED \
    --members $VAE_MEMBERS --graphs "$GRAPHS" --json "$OUT/fused-vae-graphs.json"

if [[ $PARTS == *3* ]]; then
    echo "== 3. share of a default 10-epoch trial on 60,000 images; packing of graphed trials"
    timeout "$LIMIT" python bench/run.py --device "$DEVICE" --data-dir "$DATA" --dataset fashion-mnist \
        $RUN --variants graphs --skip train,eval --json "$OUT/share-fashion.json"
    timeout "$LIMIT" python bench/packing.py --device "$DEVICE" --data-dir "$DATA" $PACK --json "$OUT/packing-graphs.json"
fi
