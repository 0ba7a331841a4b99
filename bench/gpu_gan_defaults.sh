#!/usr/bin/env bash
# The third fused-GAN GPU round of 2026-11-27 (issue 12): the defaults a GAN sweep on GPUs now
# gets (--fuse 16, members' convolutions side by side on CUDA streams, channels-last), and whether
# cuDNN's own algorithm search (torch.backends.cudnn.benchmark, off in the product) would add
# more. torch + genmodels only. From the repository root:
#
#     bash bench/gpu_gan_defaults.sh OUT            # on the GPU (carry .gpu), about 2.5 minutes
#     DEV=cpu DATA=tests/data Q="--steps 1" GM=2 PROCS=1 G=off P=fp32 bash bench/gpu_gan_defaults.sh /tmp/out
#                                                   # the script's plumbing on a CPU
source bench/gpu_setup.sh "$@"
echo "== 0. the same training graphed as eager, side streams as one stream"
timeout 120 python bench/check_graphs.py --data-dir "$DATA" | tee "$O/check_graphs.txt"
echo "== 1. fused GAN, the default layout, K = 16, against 1 and 4 unfused trials (graphed)"
timeout 100 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
    --members ${GM:-16} --procs ${PROCS:-1 4} --layouts auto --precisions ${P:-fp32,tf32,bf16} \
    --graphs ${G:-on} --json "$O/gan-defaults.json"
echo "== 2. the same with cuDNN's algorithm search on both sides"
timeout 80 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
    --members ${GM:-16} --procs 1 --layouts auto --precisions ${P:-fp32,bf16} \
    --graphs ${G:-on} --cudnn-benchmark --json "$O/gan-cudnn-benchmark.json"
