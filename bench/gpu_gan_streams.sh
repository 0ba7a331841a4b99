#!/usr/bin/env bash
# The next fused-trial GPU round (issue 12), prepared on a CPU-only day (2026-11-27) for the next
# lent GPU: torch + genmodels only. From the repository root, the data as in bench/gpu_checks.sh
# (carry .gpu: .gpu/data with MNIST's raw files, filelock and tqdm in .gpu/site):
#
#     bash bench/gpu_gan_streams.sh OUT             # on the GPU, about 4-5 minutes
#     DEV=cpu DATA=tests/data Q="--steps 1" GM=2 VM=2 PROCS=1 G=off bash bench/gpu_gan_streams.sh /tmp/out
#                                                   # the script's plumbing on a CPU
#
# What it answers:
# 0. Does the fused GAN's "streams" layout (its members' convolutions side by side on CUDA
#    streams, genmodels/fused/streams.py) train exactly as the same calls one after another, and
#    the same graphed as eager? (check_graphs: every line 0 or rounding.)
# 1. Is it faster? The fused GAN in fp32 and tf32 with its members' convolutions one after another
#    ("per-member", the fp32 default), side by side ("streams") and as one batched product
#    ("matmul", the tf32/bf16 default), all against one and four packed unfused graphed trials in
#    the same run: the targets are 10x one trial and 3x four packed.
# 2. The fused VAE's rows again, now that gradients are handed over (set_to_none), in one run.
# 3. Where a fused GAN step's device time goes in the streams layout (K = 32, fp32).
source bench/gpu_setup.sh "$@"
echo "== 0. streams: the same training as one stream, graphed as eager"
timeout 120 python bench/check_graphs.py --data-dir "$DATA" | tee "$O/check_graphs.txt"
echo "== 1. fused GAN, three layouts, fp32 and tf32, against 1 and 4 unfused trials (graphed)"
timeout 200 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
    --members ${GM:-32 64} --procs ${PROCS:-1 4} --layouts per-member,streams,matmul \
    --precisions fp32,tf32 --graphs ${G:-on} --json "$O/gan.json"
echo "== 2. fused VAE against 1 and 4 unfused trials (graphed)"
timeout 100 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model vae \
    --members ${VM:-16 64} --procs ${PROCS:-1 4} --precisions fp32,tf32 --graphs ${G:-on} \
    --json "$O/vae.json"
echo "== 3. where a fused GAN step (streams, K = ${PM:-32}) spends its device time"
timeout 60 python bench/profile_fused.py --model gan --device "$D" --members ${PM:-32} --layout streams \
    --steps 5 --rows 20 --data-dir "$DATA"
