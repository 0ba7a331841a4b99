#!/usr/bin/env bash
# The next GPU round (issue 12), about 5 minutes: does the "members" layout train right on CUDA now?
# On an H200 (2026-11-28, bench/RESULTS.md) it raced: two eager runs of one seed differed by 0.74
# relative in their losses, because tensors made on the current stream and read in a side stream's
# backward could have their memory handed on too early. `SideStreams.run` now marks every tensor a
# job is handed as used on the job's stream (genmodels/fused/streams.py). This round checks that
# (part 0: bench/check_graphs.py must pass, members eager-vs-eager 0 included; the default
# "streams" layout now marks its weight copies too), then measures refilled slots against groups
# that only shrink (part 8, bench/refill.py: on a CPU the two tie, on a GPU refilling should pay
# about 1.4x, the projection in RESULTS), then times the members layout against
# streams again (part 1, as on 2026-11-28 with the race), and repeats the G-step gradient check
# (part 3), now made in deterministic arithmetic.
# If part 0 passes and members still beats streams: make it the CUDA default
# (genmodels/fused/tasks.py::default_conv_layout, test_the_fused_gan_layout_follows_the_measurements,
# README) and drop the GPU refusal in sweeps/options.py::check_options; if part 0 passes only, drop
# the refusal. From the repository root (build .gpu as bench/gpu_setup.sh says):
#
#     bash bench/gpu_members_fix.sh OUT             # on the GPU, carry .gpu
#     DEV=cpu DATA=tests/data Q="--steps 1" GM=2 PROCS=1 G=off P=fp32 UP=fp32 GS=2 RM=2 RC=4 RE=2 \
#         RS=256 bash bench/gpu_members_fix.sh /tmp/out    # the plumbing on a CPU (part 0 needs CUDA)

# Parts 0, 8, 1 and 3 of bench/gpu_gan_members.sh, with the same overrides (DEV, DATA, GM, ...).
PARTS="0 8 1 3" exec bash bench/gpu_gan_members.sh "$@"
