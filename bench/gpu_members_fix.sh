#!/usr/bin/env bash
# The next GPU round (issue 12), about 4 minutes: does the "members" layout train right on CUDA now?
# On an H200 (2026-11-28, bench/RESULTS.md) it raced: two eager runs of one seed differed by 0.74
# relative in their losses, because tensors made on the current stream and read in a side stream's
# backward could have their memory handed on too early. `SideStreams.run` now marks every tensor a
# job is handed as used on the job's stream (genmodels/fused/streams.py). This round checks that
# (part 0: bench/check_graphs.py must pass, members eager-vs-eager 0 included), then times the
# members layout against streams again, as part 1 of bench/gpu_gan_members.sh did with the race,
# and repeats the G-step gradient check now made in deterministic arithmetic.
# If part 0 passes and members still beats streams: make it the CUDA default
# (genmodels/fused/tasks.py::default_conv_layout, test_the_fused_gan_layout_follows_the_measurements,
# README) and drop the GPU refusal in sweeps/runner.py::check_options; if part 0 passes only, drop
# the refusal. From the repository root (build .gpu as bench/gpu_setup.sh says):
#
#     bash bench/gpu_members_fix.sh OUT             # on the GPU, carry .gpu
#     DEV=cpu DATA=tests/data Q="--steps 1" GM=2 PROCS=1 G=off P=fp32 UP=fp32 GS=2 \
#         bash bench/gpu_members_fix.sh /tmp/out    # the plumbing on a CPU (part 0 needs CUDA)
# The parts run in the order of what their numbers decide (a timeout still leaves the first ones).
source bench/gpu_setup.sh "$@"
echo "== 0. graphed as eager; the members layout eager against eager and against the default layout"
timeout 170 python bench/check_graphs.py --data-dir "$DATA" | tee "$O/check_graphs.txt"
echo "== 1. fused GAN, streams and members, fp32 and bf16, against 1 and 4 unfused trials (graphed)"
timeout 260 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
    --members ${GM:-16 64} --procs ${PROCS:-1 4} --layouts streams,members --gan-dropout none \
    --precisions ${P:-fp32,bf16} --unfused-precisions ${UP:-fp32,bf16} --graphs ${G:-on} \
    --json "$O/gan-members.json"
echo "== 2. G's gradients with and without D's weight gradients, deterministic arithmetic"
timeout 40 python bench/gan_g_step.py --device "$D" --data-dir "$DATA"
timeout 60 python bench/gan_g_step.py --device "$D" --members ${GS:-64} --data-dir "$DATA"
