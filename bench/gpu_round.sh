#!/usr/bin/env bash
# The fused-trial GPU round (issue 12) as one prepared script for a lent GPU machine (torch +
# genmodels only). From the repository root, with the data as in bench/gpu_checks.sh:
#
#     bash bench/gpu_round.sh OUT                   # on the GPU, about 3 minutes
#     DEV=cpu DATA=tests/data Q="--steps 1" VM=2 PM=2 GM=2 G=off bash bench/gpu_round.sh /tmp/out
#                                                   # the script's plumbing on a CPU
source bench/gpu_setup.sh "$@"
echo "== 0. CUDA graphs: the same training as eager"
timeout 100 python bench/check_graphs.py --data-dir "$DATA"
echo "== 1. the optimizer step alone"
timeout 60 python bench/bench_optim.py --device "$D"
echo "== 2. fused VAE against unfused trials, graphed"
timeout 150 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model vae --members ${VM:-16 64 128} \
    --procs 1 4 --graphs ${G:-on} --precisions fp32,tf32 --json "$O/vae.json"
echo "== 3. where a fused VAE step (K = 64) spends its device time"
timeout 60 python bench/profile_fused.py --model vae --device "$D" --members ${PM:-64} --steps 5 --rows 20 --data-dir "$DATA"
echo "== 4. fused GAN against one unfused trial, graphed"
timeout 150 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan --members ${GM:-32 64} --procs 1 \
    --layouts matmul --precisions bf16,tf32 --graphs ${G:-on} --json "$O/gan.json"
