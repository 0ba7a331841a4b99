#!/usr/bin/env bash
# The first fused-GAN GPU round of 2026-11-27 (issue 12; ran on an H200, bench/RESULTS.md "The fused
# GAN on CUDA streams, channels-last"): torch + genmodels only. From the repository root, the data
# as in bench/gpu_checks.sh (carry .gpu: .gpu/data with MNIST's raw files, filelock and tqdm in
# .gpu/site):
#
#     bash bench/gpu_gan_streams.sh OUT             # on the GPU, about 4-5 minutes
#     DEV=cpu DATA=tests/data Q="--steps 1" GM=2 RM=2 VM=2 PROCS=1 G=off P=fp32 bash bench/gpu_gan_streams.sh /tmp/out
#                                                   # the script's plumbing on a CPU
#
# What it answers:
# 0. Does the fused GAN's "streams" layout (its members' convolutions side by side on CUDA
#    streams, genmodels/fused/streams.py) train exactly as the same calls one after another, and
#    the same graphed as eager? (check_graphs: every line 0 or rounding.)
# 1. Is it faster? The streams layout in fp32, tf32 and bf16 at K = 32 and 64 against one and four
#    packed unfused graphed trials (the targets: 10x one trial, 3x four packed), then the
#    two layouts it would replace at K = 64 (per-member: K calls one after another, the fp32
#    default; matmul: one batched product, the tf32/bf16 default) against one trial in the same run.
# 2. The fused VAE's rows again, now that gradients are handed over (set_to_none).
# 3. Where a fused GAN step (streams, K = 32) spends its device time.
source bench/gpu_setup.sh "$@"
echo "== 0. streams: the same training as one stream, graphed as eager"
timeout 120 python bench/check_graphs.py --data-dir "$DATA" | tee "$O/check_graphs.txt"
echo "== 1a. fused GAN on streams, fp32, tf32 and bf16, against 1 and 4 unfused trials (graphed)"
timeout 150 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
    --members ${GM:-32 64} --procs ${PROCS:-1 4} --layouts streams \
    --precisions ${P:-fp32,tf32,bf16} --graphs ${G:-on} --json "$O/gan-streams.json"
echo "== 1b. the layouts streams would replace, K = 64, against 1 unfused trial (graphed)"
timeout 90 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
    --members ${RM:-64} --procs 1 --layouts per-member,matmul \
    --precisions ${P:-fp32,bf16} --graphs ${G:-on} --json "$O/gan-reference.json"
echo "== 2. fused VAE against 1 and 4 unfused trials (graphed)"
timeout 90 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model vae \
    --members ${VM:-16 64} --procs ${PROCS:-1 4} --precisions ${P:-fp32,tf32} --graphs ${G:-on} \
    --json "$O/vae.json"
echo "== 3. where a fused GAN step (streams, K = ${PM:-32}) spends its device time"
timeout 60 python bench/profile_fused.py --model gan --device "$D" --members ${PM:-32} --layout streams \
    --steps 5 --rows 20 --data-dir "$DATA"
