#!/usr/bin/env bash
# The fused GAN's changes of 2026-11-27 afternoon, built on a CPU and never run on CUDA yet (issue
# 12), measured in one run against the code before them (60bec18, run from .gpu/old):
# - the "members" layout: each member's whole network as its own chain of calls on its own dense
#   channels-last activations, side by side on CUDA streams;
# - every member's conv weights made channels-last (and bf16 under autocast) in one copy a layer,
#   in both CUDA layouts;
# - G's step without D's weight gradients (711.3 MFLOP an image instead of 784.5), for the unfused
#   trials too;
# - dropout as one multiply by a mask that carries its scale (2026-11-27 evening);
# - cuDNN's grouped convolutions (HFTA's choice) handed channels-last tensors (part 7, last);
# then torch.func against the fused layers, never measured on a GPU either. torch + genmodels only.
# Every fused precision is also compared with unfused trials in that precision (bf16 against fp32
# alone would credit fusing with what bf16 does for one trial), and part 1b times the GAN with
# dropout, as a GAN sweep samples it (parts 1 and 2 leave it out, as every round before did).
# From the repository root:
#
#     rm -rf .gpu/old && mkdir -p .gpu/old && git archive 60bec18 genmodels bench | tar -x -C .gpu/old
#     bash bench/gpu_gan_members.sh OUT             # on the GPU (carry .gpu), about 7 minutes
#     DEV=cpu DATA=tests/data Q="--steps 1" GM=2 OM=2 PROCS=1 G=off P=fp32 UP=fp32 PM=2 PP=fp32 GS=2 \
#         VM=2 VQ="--model vae --steps 1" bash bench/gpu_gan_members.sh /tmp/out   # the plumbing on a CPU
# The parts run in the order of what their numbers decide (a timeout still leaves the first ones);
# PARTS="0 8 1 3" runs only those (bench/gpu_members_fix.sh does); part 8, bench/refill.py, came
# later (2026-11-28) and runs only when asked for.
source bench/gpu_setup.sh "$@"
want() { [[ " ${PARTS:-0 1 5 1b 7 3 4 2 6} " == *" $1 "* ]]; }  # in the order below
if want 0; then
    echo "== 0. graphed as eager; one stream and the members layout against the default layout"
    timeout 170 python bench/check_graphs.py --data-dir "$DATA" | tee "$O/check_graphs.txt"
fi
if want 8; then
    echo "== 8. a fused VAE group in an ASHA sweep: freed slots refilled, against a group that only shrinks"
    timeout 120 python bench/refill.py --device "$D" --members ${RM:-16} --configs ${RC:-128} \
        --epochs ${RE:-8} --train-subset ${RS:-0} --data-dir "$DATA" | tee "$O/refill.txt"
fi
if want 1; then
    echo "== 1. fused GAN, streams and members, fp32 and bf16, against 1 and 4 unfused trials (graphed)"
    timeout 260 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
        --members ${GM:-16 64} --procs ${PROCS:-1 4} --layouts streams,members --gan-dropout none \
        --precisions ${P:-fp32,bf16} --unfused-precisions ${UP:-fp32,bf16} --graphs ${G:-on} \
        --json "$O/gan-members.json" --plot "$O/gan-members.png"
fi
if want 5; then
    echo "== 5. torch.func (stack_module_state + vmap) against the fused layers"
    timeout 60 python bench/bench_vmap.py --device "$D" --members ${VM:-4 16} ${VQ:-} --data-dir "$DATA" \
        | tee "$O/vmap.txt"
fi
if want 1b; then
    echo "== 1b. the same with dropout in every configuration, as a GAN sweep samples it"
    timeout 100 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
        --members ${OM:-64} --procs 1 --layouts streams,members --precisions ${PP:-bf16} \
        --unfused-precisions ${PP:-bf16} --graphs ${G:-on} --json "$O/gan-dropout.json"
fi
if want 7; then
    echo "== 7. HFTA's way: one grouped call per layer, now channels-last (last measured NCHW fp32 eager)"
    timeout 90 python bench/bench_fused.py --device "$D" $Q --data-dir "$DATA" --model gan \
        --members ${GM:-16 64} --procs 1 --layouts grouped --gan-dropout none --precisions ${PP:-bf16} \
        --unfused-precisions ${PP:-bf16} --graphs ${G:-on} --json "$O/gan-grouped.json"
fi
if want 3; then
    echo "== 3. the G step with and without D's weight gradients, one trial and K = ${GS:-64}"
    timeout 40 python bench/gan_g_step.py --device "$D" --data-dir "$DATA"
    timeout 60 python bench/gan_g_step.py --device "$D" --members ${GS:-64} --data-dir "$DATA"
fi
if want 4; then
    echo "== 4. where a fused GAN step (members, ${PP:-bf16}, K = ${PM:-32}) spends its device time"
    timeout 60 python bench/profile_fused.py --model gan --device "$D" --members ${PM:-32} --layout members \
        --precision ${PP:-bf16} --steps 5 --rows 16 --data-dir "$DATA" | tee "$O/profile-members.txt"
fi
if want 2; then
    echo "== 2. the same before (.gpu/old at 60bec18), streams, against 1 unfused trial (graphed)"
    (cd .gpu/old && PYTHONPATH=$PWD:$PWD/../site timeout 90 python bench/bench_fused.py --device "$D" $Q \
        --data-dir "../../$DATA" --model gan --members ${OM:-64} --procs 1 --layouts streams \
        --precisions ${P:-fp32,bf16} --graphs ${G:-on} --json "$O/gan-before.json")
fi
if want 6; then
    echo "== 6. D's dropout, forward + backward: the mask with its scale against a bool mask and a division"
    timeout 30 python bench/dropout.py --device "$D" --members ${GS:-64} --dtype float32
    timeout 30 python bench/dropout.py --device "$D" --members ${GS:-64} --dtype bfloat16
fi
