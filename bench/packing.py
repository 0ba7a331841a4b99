"""Packing curve: total training images/s of N trials training at once on one device, each its own
process (as Ray runs trials), against one trial alone.

    python bench/packing.py --quick                                # CPU here: 1x2 threads vs 2x1
    python bench/packing.py --device cuda --quick --json bench/packing-gpu.json   # 1, 2, 4, 8 trials

Every trial runs the same function (`train_steps`): build the default Trainer of the model, take
WARMUP_STEPS untimed steps, wait at a barrier for all the others, then time --steps steps of
`Trainer.train_step` (the loop's own step on on-device uint8 batches; replayed as a CUDA graph on
CUDA, the default). Each process reports its images and its timed interval; the total rate is all
images over the span from the first start to the last end after the barrier. Processes start with
multiprocessing's spawn (a fresh interpreter each, as a Ray worker is; CUDA cannot be forked).
Imports torch and genmodels only.

On the CPU the question is threads: is one trial with 2 threads faster than two trials with one each?
On a GPU it is packing: how many trials fill it (--gpus-per-trial 1/N)?
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WARMUP_STEPS = 5
POLL_SECONDS = 5  # how often the parent checks for a trial that died
STEPS = {("vae", "cpu"): (400, 150), ("gan", "cpu"): (30, 10),
         ("vae", "cuda"): (1000, 300), ("gan", "cuda"): (300, 100)}  # (full, --quick)
GPU_TRIALS = (1, 2, 4, 8)
DATA_CANDIDATES = tuple(Path(p) for p in (os.environ.get("GENSWEEP_DATA_DIR", "data"), "data",
                                            REPO / "tests" / "data"))


def train_steps(model: str, device: str, threads: int, steps: int, batch_size: int,
                data_root: str, seed: int, barrier, results) -> None:
    """One trial: default Trainer, warm-up, barrier, `steps` timed steps; puts its timings."""
    import torch

    from genmodels.data import iterate_batches, load_dataset
    from genmodels.gan import GANConfig
    from genmodels.loop import TrainConfig, Trainer
    from genmodels.vae import VAEConfig

    data = load_dataset("mnist", data_root)
    cfg = TrainConfig(batch_size=batch_size, device=device, num_threads=threads, seed=seed)
    trainer = Trainer.create(model, VAEConfig() if model == "vae" else GANConfig(), cfg, data)
    images = trainer.data.train_images

    def batches():
        while True:
            for index in iterate_batches(images, batch_size, trainer.batch_generator):
                yield images[index]

    source = batches()
    dev = trainer.device

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(WARMUP_STEPS):
        trainer.train_step(next(source))
    sync()
    barrier.wait()
    start = time.time()  # wall clock: comparable across processes
    for _ in range(steps):
        trainer.train_step(next(source))
    sync()
    results.put({"start": start, "end": time.time(), "images": steps * batch_size})


def run_packed(model: str, trials: int, threads: int, args) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(trials), ctx.Queue()
    steps = args.steps or STEPS[(model, args.device_type)][args.quick]
    procs = [ctx.Process(target=train_steps,
                         args=(model, args.device, threads, steps, args.batch_size,
                               str(args.data_root), seed, barrier, results))
             for seed in range(trials)]
    for p in procs:
        p.start()
    reports = []
    while len(reports) < trials:  # never wait forever on a trial that died before reporting
        try:
            reports.append(results.get(timeout=POLL_SECONDS))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:
                for p in procs:
                    p.terminate()
                raise RuntimeError(f"a trial process exited with {failed[0]}; see its traceback "
                                   "above") from None
    for p in procs:
        p.join()
    span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    total = sum(r["images"] for r in reports)
    return {"model": model, "trials": trials, "threads_per_trial": threads, "steps": steps,
            "total_img_s": total / span, "per_trial_img_s": total / span / trials, "span_s": span}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["vae", "gan", "both"], default="both")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--trials", default=None,
                   help="comma-separated trial counts (default: 1,2,4,8 on CUDA; on the CPU "
                        "1 trial with all cores vs one trial per core)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per trial")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="fewer steps")
    args = p.parse_args(argv)

    import torch

    from genmodels.device import available_cpus, resolve_device

    device = resolve_device(args.device)
    args.device, args.device_type = str(device), device.type
    args.data_root = (Path(args.data_dir).resolve() if args.data_dir
                      else next(d for d in DATA_CANDIDATES if d.is_dir()))
    cpus = available_cpus()
    if args.trials:
        counts = [int(n) for n in args.trials.split(",")]
        layouts = [(n, max(1, cpus // n) if device.type == "cpu" else 1) for n in counts]
    elif device.type == "cuda":
        layouts = [(n, 1) for n in GPU_TRIALS]
    else:
        layouts = [(1, cpus), (cpus, 1)]  # the same cores, shared two ways
    models = ["vae", "gan"] if args.model == "both" else [args.model]

    start = time.perf_counter()
    rows = []
    for model in models:
        for trials, threads in layouts:
            row = run_packed(model, trials, threads, args)
            base = next((r for r in rows if r["model"] == model), row)
            row["vs_one_trial"] = row["total_img_s"] / base["total_img_s"]
            rows.append(row)
            print(f"{model:<4} {trials} trial(s) x {threads} thread(s): "
                  f"{row['total_img_s']:>9,.0f} img/s in all, {row['per_trial_img_s']:>9,.0f} "
                  f"per trial, {row['vs_one_trial']:.2f}x one trial", flush=True)
    total = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpus} CPUs"
    print(f"device {device} ({name}), data {args.data_root}, total {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "name": name, "rows": rows,
                                               "total_s": total}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
