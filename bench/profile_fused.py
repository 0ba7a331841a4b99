"""Where a fused group's training step spends its device time: torch.profiler's table of the
operators (and their kernels) of a few steps, most expensive first.

    python bench/profile_fused.py --device cuda --members 32 --layout matmul --precision bf16
    python bench/profile_fused.py --model vae --members 16 --steps 3     # on the CPU

Imports torch and genmodels only (it runs on a bare GPU machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.bench_fused import BATCH, build_task, sync, training_data  # noqa: E402
from genmodels.device import PRECISIONS  # noqa: E402
from genmodels.fused.gan import GAN_LAYOUTS  # noqa: E402

WARMUP_STEPS = 5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["vae", "gan"], default="gan")
    p.add_argument("--device", default="cpu")
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--layout", choices=GAN_LAYOUTS, default="per-member")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--steps", type=int, default=10, help="profiled steps")
    p.add_argument("--rows", type=int, default=25, help="operators shown")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    data = training_data(args.data_dir, device)
    task = build_task(args.model, args.members, data, device, args.layout, args.precision)
    batches = data.train_images[:BATCH * args.steps].split(BATCH)
    for i in range(WARMUP_STEPS):
        task.train_step(batches[i % len(batches)])
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches:
            task.train_step(batch)
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{args.model}, K = {args.members}, {args.layout}, {args.precision}, {args.steps} steps "
          f"on {device}")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
