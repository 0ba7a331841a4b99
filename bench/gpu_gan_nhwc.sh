#!/usr/bin/env bash
# The second fused-GAN GPU round of 2026-11-27 (issue 12): the "streams" layout with each member's
# convolution handed to cuDNN channels-last (NHWC), against the same layout before (NCHW, cuDNN
# transposing every input and output) in one run. torch + genmodels only. From the repository root:
#
#     rm -rf .gpu/old && mkdir -p .gpu/old && git archive BEFORE genmodels bench | tar -x -C .gpu/old
#     bash bench/gpu_gan_nhwc.sh OUT                # on the GPU (carry .gpu), about 3 minutes
#     DEV=cpu DATA=tests/data Q="--steps 1" GM=2 OM=2 PROCS=1 G=off P=fp32 PM=2 bash bench/gpu_gan_nhwc.sh /tmp/out
#                                                   # the script's plumbing on a CPU
source bench/gpu_setup.sh "$@"
echo "== 0. the same training graphed as eager, streams as one stream"
timeout 120 python bench/check_graphs.py --data-dir "$DATA" | tee "$O/check_graphs.txt"
echo "== 1. fused GAN, streams, NHWC members, fp32 and bf16, against 1 and 4 unfused trials (graphed)"
timeout 150 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
    --members ${GM:-16 32 64} --procs ${PROCS:-1 4} --layouts streams \
    --precisions ${P:-fp32,bf16} --graphs ${G:-on} --json "$O/gan-nhwc.json"
echo "== 2. the same before (.gpu/old: NCHW members), against 1 unfused trial (graphed)"
(cd .gpu/old && PYTHONPATH=$PWD:$PWD/../site timeout 90 python bench/bench_fused.py --device "$D" $Q \
    --data-dir "../../$DATA" --model gan --members ${OM:-32 64} --procs 1 --layouts streams \
    --precisions ${P:-fp32,bf16} --graphs ${G:-on} --json "$O/gan-nchw.json")
echo "== 3. where a fused GAN step (streams, NHWC, K = ${PM:-32}) spends its device time"
timeout 60 python bench/profile_fused.py --model gan --device "$D" --members ${PM:-32} --layout streams \
    --steps 5 --rows 16 --data-dir "$DATA"
