"""Two layouts of the fused GAN, timed step against step in one process: rounds of a few steps of
each, taking turns (which goes first alternates), so drift in the machine's speed (other load,
clocks) falls on both alike. Prints each layout's median milliseconds per step and the ratio.

    python bench/ab_layouts.py --members 4 --layouts per-member,members          # this CPU
    python bench/ab_layouts.py --device cuda --members 64 --layouts streams,members \
        --precision bf16 --graphs on

`bench/bench_fused.py` times its rows one after another, minutes apart; on this shared 2-core box
its rows for the same layout moved by 10-25% between two runs (bench/RESULTS.md), more than the
difference this script is for. Imports torch and genmodels only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.bench_fused import BATCH, DEFAULT_DATA, build_task, sync, training_data  # noqa: E402
from genmodels.device import PRECISIONS  # noqa: E402
from genmodels.fused.gan import GAN_LAYOUTS  # noqa: E402
from genmodels.graphs import WARMUP_STEPS, GraphedStep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--layouts", default="per-member,members", help=f"two of {', '.join(GAN_LAYOUTS)}")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--graphs", choices=["on", "off"], default="off", help="replay steps as CUDA graphs")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="steps of each layout per round")
    p.add_argument("--data-dir", default=None, help=f"default {DEFAULT_DATA}, else the repo's tests/data")
    args = p.parse_args(argv)
    layouts = args.layouts.split(",")
    if len(layouts) != 2 or not set(layouts) <= set(GAN_LAYOUTS):
        p.error(f"--layouts takes two of {', '.join(GAN_LAYOUTS)}, got {args.layouts!r}")

    device = torch.device(args.device)
    data = training_data(args.data_dir, device)
    batches = data.train_images[:BATCH * args.steps].split(BATCH)
    steps = {}
    for layout in layouts:
        task = build_task("gan", args.members, data, device, layout, args.precision)
        step = GraphedStep(task) if args.graphs == "on" else task.train_step
        for i in range(1 + (WARMUP_STEPS + 1 if args.graphs == "on" else 0)):  # graphs: the capture
            step(batches[i % len(batches)])
        steps[layout] = step
    times = {layout: [] for layout in layouts}
    for r in range(args.rounds):
        for layout in (layouts if r % 2 == 0 else layouts[::-1]):
            sync(device)
            start = time.perf_counter()
            for batch in batches:
                steps[layout](batch)
            sync(device)
            times[layout].append((time.perf_counter() - start) / len(batches) * 1000)
    print(f"fused GAN, K = {args.members}, {args.precision}, graphs {args.graphs}, {device}, "
          f"{torch.get_num_threads()} threads; {args.rounds} rounds of {len(batches)} steps each")
    median = {layout: statistics.median(t) for layout, t in times.items()}
    for layout, t in times.items():
        print(f"  {layout:<10} median {median[layout]:8.1f} ms a step  (rounds: "
              f"{', '.join(f'{x:.0f}' for x in t)})")
    a, b = layouts
    print(f"  {b} takes {median[b] / median[a]:.2f}x the time of {a}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
