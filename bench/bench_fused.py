"""Trial-epochs per hour: fused groups of K members against unfused trials, on one device.

    python bench/bench_fused.py                          # CPU, both models, K = 1 2 4 8 16
    python bench/bench_fused.py --device cuda --quick    # the GPU run (torch + genmodels only)
    python bench/bench_fused.py --device cuda --quick --model gan --precisions fp32,tf32,bf16
    python bench/bench_fused.py --device cuda --quick --model gan --graphs on \
        --precisions fp32,bf16 --unfused-precisions fp32,bf16   # each precision against its own
    python bench/bench_fused.py --model gan --quick --repeats 3   # every row 3 times, in turns: medians

For each model it times, on the same device in one run:
- fused groups of K = 1, 2, 4, 8, 16 members (one process, `genmodels.fused`), every member with
  its own hyperparameters (different latent sizes, dropout and learning rates);
- unfused trials: P separate processes, each training one standalone model (`genmodels.tasks`),
  started together behind a barrier, P = 1 and as many as the device sensibly holds (`--procs`),
  in fp32 or also in other precisions (`--unfused-precisions`).
A trial-epoch is one member (or one standalone trial) training over the whole training split once
plus its per-epoch evaluation (VAE: test ELBO over the test split; GAN: its fixed-noise samples; the
classifier scores are left out on both sides). Steps are timed after warm-up steps, and the
per-epoch time is scaled from the timed steps, so a run takes seconds per row, not epochs.

Imports torch, torchvision and genmodels only: it runs where Ray, Optuna and MLflow are absent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from genmodels.data import DEFAULT_VAL_FRACTION, ImageData, load_dataset  # noqa: E402
from genmodels.device import PRECISIONS, autocast_factory, setup_device  # noqa: E402
from genmodels.fused.tasks import FusedConfig, FusedGANTask, FusedVAETask  # noqa: E402
from genmodels.gan import GANConfig  # noqa: E402
from genmodels.graphs import WARMUP_STEPS, GraphedStep  # noqa: E402
from genmodels.loop import TrainConfig  # noqa: E402
from genmodels.tasks import GANTask, VAETask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("GENSWEEP_DATA_DIR", "data"))
TEST_DATA = REPO / "tests" / "data"
BATCH = 128  # the training default
MEMBER_SIZES = (1, 2, 4, 8, 16)
SEED = 0


def member_configs(model: str, k: int, gan_dropout: bool = True) -> list:
    """K different configurations, as a sweep would sample them (sizes and rates vary). Every
    configuration has some dropout (0.05-0.2), as a sweep's nearly always does (both models search
    it): the unfused trials train these same configurations, so neither side is spared the dropout
    masks. `gan_dropout=False` gives the GAN the seed's network without dropout, as every GAN row
    in docs/benchmarks.md before the section "Dropout in the fused GAN" had it."""
    from genmodels.vae import VAEConfig

    dropouts = [0.05 * (1 + i % 4) for i in range(k)]
    if model == "vae":
        return [VAEConfig(latent_dim=8 + 4 * (i % 6), dropout=dropouts[i], lr=1e-3 * (1 + i % 3))
                for i in range(k)]
    return [GANConfig(latent_dim=64 + 16 * (i % 4), lr_g=2e-4 * (1 + i % 3), lr_d=2e-4,
                      dropout=dropouts[i] if gan_dropout else 0.0) for i in range(k)]


def build_task(model: str, k: int | None, data: ImageData, device: torch.device,
               precision: str = "fp32", trial: int = 0,
               cudnn_benchmark: bool = False, gan_dropout: bool = True):
    """A fused task of k members, or (k None) one standalone trial's task (the `trial`-th
    configuration), in `precision` (set for the process as a run sets it: `setup_device`).
    `cudnn_benchmark`: let cuDNN time its algorithms for each new shape and keep the fastest
    (torch.backends.cudnn.benchmark; the product leaves it off, PyTorch's default).
    `gan_dropout`: see `member_configs`."""
    setup_device(str(device), precision, torch.get_num_threads())
    torch.backends.cudnn.benchmark = cudnn_benchmark
    autocast = autocast_factory(device, precision)
    torch.manual_seed(SEED)
    train_cfg = TrainConfig(device=str(device), iwae_samples=0, precision=precision)
    if k is None:
        task_class = VAETask if model == "vae" else GANTask
        return task_class(member_configs(model, trial + 1, gan_dropout)[trial], data, device, train_cfg,
                          autocast)
    cfgs = member_configs(model, k, gan_dropout)
    task_class = FusedVAETask if model == "vae" else FusedGANTask
    return task_class(FusedConfig(cfgs), data, device, train_cfg, autocast)


def training_data(data_dir: str | None, device: torch.device) -> ImageData:
    """What a trial trains and validates on: MNIST's training images less the validation split,
    from `data_dir` (default $GENSWEEP_DATA_DIR or ./data where it exists, else the repo's
    tests/data), on `device`."""
    data_dir = data_dir or (DEFAULT_DATA if DEFAULT_DATA.exists() else TEST_DATA)
    return load_dataset("mnist", data_dir).hold_out(DEFAULT_VAL_FRACTION).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trial_epoch(task, data: ImageData, device: torch.device, steps: int, warmup: int,
                     graphs: bool = False) -> float:
    """Seconds of one trial-epoch of `task`: its steps over the training split (scaled from
    `steps` timed steps) plus one evaluation (validation ELBO for the VAE, samples for the GAN)."""
    images = data.train_images
    order = torch.randperm(len(images), device=device)
    batches = [order[i * BATCH:(i + 1) * BATCH] for i in range(len(images) // BATCH)]
    step = GraphedStep(task) if graphs else task.train_step  # --graphs on: replayed
    for i in range(warmup + (WARMUP_STEPS + 1 if graphs else 0)):  # graphs: capture untimed
        step(images[batches[i % len(batches)]])
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(images[batches[i % len(batches)]])
    sync(device)
    step_seconds = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    if isinstance(task, (VAETask, FusedVAETask)):
        task.evaluate(epoch=1, last=False)
    task.sample_images()
    sync(device)
    return step_seconds * len(batches) + (time.perf_counter() - start)


def fused(model: str, k: int, data: ImageData, device: torch.device, precision: str,
          steps: int, warmup: int, graphs: bool, options: dict) -> float:
    """Trial-epochs per hour of one fused group of k members (its memory freed after)."""
    task = build_task(model, k, data, device, precision, **options)
    try:
        return k * 3600 / time_trial_epoch(task, data, device, steps, warmup, graphs)
    finally:
        del task
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _unfused_worker(model, trial, data, device, steps, warmup, threads, graphs, options,
                    barrier, results) -> None:
    torch.set_num_threads(threads)
    device = torch.device(device)
    data = data.to(device)
    task = build_task(model, None, data, device, trial=trial, **options)
    time_trial_epoch(task, data, device, 2, 1)  # warm the process up (CUDA context, allocator)
    barrier.wait()
    results.put(time_trial_epoch(task, data, device, steps, warmup, graphs))


def unfused(model: str, data: ImageData, device: str, procs: int, steps: int, warmup: int,
            threads: int, graphs: bool = False, **options) -> float:
    """Trial-epochs per hour of `procs` standalone trials running at once as separate processes.
    `options`: `build_task`'s precision, cudnn_benchmark and gan_dropout."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs + 1), ctx.Queue()
    # Process i trains configuration i, as fused member i does.
    workers = [ctx.Process(target=_unfused_worker, args=(model, i, data, device, steps, warmup,
                                                         threads, graphs, options,
                                                         barrier, results))
               for i in range(procs)]
    for w in workers:
        w.start()
    barrier.wait()
    # Each process reports the seconds of one trial-epoch while all of them run at once.
    seconds = [results.get() for _ in workers]
    for w in workers:
        w.join()
    return sum(3600 / s for s in seconds)


@dataclass
class Timings:
    """What one run times, resolved from its options, and every row's rates so far (one per
    repeat), each row once and in the order it was first timed."""
    data: ImageData
    device: torch.device
    steps: int
    warmup: int
    threads: int
    procs: list[int]
    members: list[int]
    precisions: list[str]
    unfused_precisions: list[str]
    graph_modes: list[str]
    options: dict  # build_task's cudnn_benchmark and gan_dropout
    timed: dict[tuple, dict] = field(default_factory=dict)

    def entry(self, row: dict) -> dict:
        return self.timed.setdefault(tuple(row.items()), {**row, "rates": []})

    def time_unfused(self, model: str, tag: str) -> tuple[float, dict]:
        """Time the unfused rows of `model` once; returns the first row's rate (one trial in the
        first precision and graph mode: what every row is compared with) and one trial's rate in
        each (precision, graphs)."""
        cuda = self.device.type == "cuda"
        reference, one_trial = None, {}
        for graphs in self.graph_modes:
            for precision in self.unfused_precisions:
                for n in self.procs:
                    # On the CPU the threads are shared out; on a GPU each process keeps the host threads.
                    per_proc = max(1, self.threads // n) if not cuda else 1
                    rate = unfused(model, self.data.to("cpu"), str(self.device), n, self.steps,
                                   self.warmup, per_proc, graphs == "on", precision=precision,
                                   **self.options)
                    reference = reference or rate
                    if n == 1:
                        one_trial[precision, graphs] = rate
                    self.entry({"model": model, "mode": f"unfused x{n}", "precision": precision,
                                "graphs": graphs})["rates"].append(rate)
                    print(f"{tag}{model}  unfused, {n} process(es), {precision:<4} graphs {graphs:<3}  "
                          f"{rate:10.1f} trial-epochs/h   {rate / reference:5.2f}x one trial", flush=True)
        return reference, one_trial

    def time_fused(self, model: str, tag: str, reference: float, one_trial: dict) -> None:
        """Time the fused groups of `model` once: every K, each in every precision and graph mode
        asked for. A row that fails (out of memory, say) keeps its error, is not timed again, and
        the others go on."""
        variants = [(precision, graphs) for precision in self.precisions for graphs in self.graph_modes]
        for k in self.members:
            for precision, graphs in variants:
                entry = self.entry({"model": model, "mode": f"fused K={k}",
                                    "precision": precision, "graphs": graphs})
                if "error" in entry:
                    continue
                label = f"{tag}{model}  fused, K = {k:<2} {precision:<4} graphs {graphs:<3}"
                try:
                    rate = fused(model, k, self.data, self.device, precision, self.steps,
                                 self.warmup, graphs == "on", self.options)
                except Exception as err:
                    entry["error"] = f"{type(err).__name__}: {err}"
                    print(f"{label} FAILED: {entry['error']}", flush=True)
                    continue
                entry["rates"].append(rate)
                # Also against one unfused trial in the row's own precision, where one ran: bf16
                # against fp32 alone would credit fusing with what bf16 does for one trial too.
                own = one_trial.get((precision, graphs))
                same = f"   {rate / own:5.2f}x one {precision} trial" if own and own != reference else ""
                print(f"{label} {rate:10.1f} trial-epochs/h   {rate / reference:5.2f}x one trial{same}",
                      flush=True)


def summarize(entry: dict) -> dict:
    """A timed row as the JSON keeps it: its median rate over the repeats (and each repeat's, when
    there were several), or the error that stopped it."""
    rates = entry.pop("rates")
    if "error" in entry:
        return entry
    row = {**entry, "trial_epochs_per_hour": statistics.median(rates)}
    if len(rates) > 1:
        row["repeats"] = rates
    return row


def print_medians(rows: list[dict]) -> None:
    """Each row's median over the repeats, its range, and the median against the median of the
    model's first row (one unfused trial)."""
    print("\nmedians over the repeats (range in brackets):")
    reference = {}
    for row in rows:
        if "error" in row:
            continue
        rate, rates = row["trial_epochs_per_hour"], row["repeats"]
        reference.setdefault(row["model"], rate)
        mode = row["mode"] + (f" {row['convs']}" if "convs" in row else "")
        print(f"{row['model']}  {mode:<22} {row['precision']:<4} graphs {row['graphs']:<3} "
              f"{rate:10.1f} [{min(rates):.1f}-{max(rates):.1f}] trial-epochs/h   "
              f"{rate / reference[row['model']]:5.2f}x one trial")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", choices=["vae", "gan", "both"], default="both")
    p.add_argument("--members", type=int, nargs="+", default=list(MEMBER_SIZES))
    p.add_argument("--procs", type=int, nargs="+", default=None,
                   help="unfused processes at once (default: 1 and the CPU count on CPU; 1, 4, 8 on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--quick", action="store_true", help="fewer steps (a GPU run in about 2 minutes)")
    p.add_argument("--data-dir", default=None, help="default $GENSWEEP_DATA_DIR or ./data, else the repo's "
                        "tests/data")
    p.add_argument("--precisions", default="fp32",
                   help=f"precisions of the fused rows, from {', '.join(PRECISIONS)}")
    p.add_argument("--unfused-precisions", default="fp32",
                   help="precisions of the unfused trials (default fp32, PyTorch's default); a fused "
                        "row is also compared with one unfused trial in its own precision where run")
    p.add_argument("--gan-dropout", choices=["sweep", "none"], default="sweep",
                   help="sweep: every GAN configuration has some dropout, as a GAN sweep samples it "
                        "(default); none: the seed's network, as every GAN row measured before it existed")
    p.add_argument("--graphs", default="off",
                   help="off, on or off,on: the steps (fused and unfused) eager, replayed as CUDA "
                        "graphs (genmodels.graphs; CUDA only), or both")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="every row with torch.backends.cudnn.benchmark on (cuDNN times its "
                        "algorithms per shape and keeps the fastest)")
    p.add_argument("--repeats", type=int, default=1,
                   help="time every row this many times, in turns (all rows, then all again), and "
                        "keep each row's median: runs on a shared machine vary by 10-25%%")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    precisions = args.precisions.split(",")
    unfused_precisions, graph_modes = args.unfused_precisions.split(","), args.graphs.split(",")
    if "on" in graph_modes and args.device == "cpu":
        p.error("--graphs on needs a CUDA device (CUDA graphs)")
    for value, allowed, flag in ((precisions, PRECISIONS, "--precisions"),
                                 (unfused_precisions, PRECISIONS, "--unfused-precisions"),
                                 (graph_modes, ("off", "on"), "--graphs")):
        if not set(value) <= set(allowed):
            p.error(f"{flag} takes values from {', '.join(allowed)}, got {','.join(value)}")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    threads = torch.get_num_threads()
    steps = args.steps or ((20 if cuda else 6) if args.quick else (60 if cuda else 15))
    warmup = 5 if cuda else 2
    procs = args.procs or ([1, 4, 8] if cuda else sorted({1, threads}))
    data = training_data(args.data_dir, device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {threads} threads"
    gan_dropout = args.gan_dropout == "sweep"
    options = {"cudnn_benchmark": args.cudnn_benchmark, "gan_dropout": gan_dropout}
    print(f"device {name}; {len(data.train_images)} training images, batch {BATCH}; "
          f"{steps} timed steps per row; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, "
          f"benchmark {args.cudnn_benchmark}; GAN dropout {args.gan_dropout}")

    timings = Timings(data, device, steps, warmup, threads, procs, args.members, precisions,
                      unfused_precisions, graph_modes, options)
    models = ["vae", "gan"] if args.model == "both" else [args.model]
    for repeat in range(1, args.repeats + 1):  # all rows, then all again: drift hits every row
        tag = f"[{repeat}/{args.repeats}] " if args.repeats > 1 else ""
        for model in models:
            reference, one_trial = timings.time_unfused(model, tag)
            timings.time_fused(model, tag, reference, one_trial)
    rows = [summarize(entry) for entry in timings.timed.values()]
    failed = [row["error"] for row in rows if "error" in row]
    if args.repeats > 1:
        print_medians(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "steps": steps, "rows": rows,
                                               "cudnn_benchmark": args.cudnn_benchmark,
                                               "gan_dropout": args.gan_dropout}, indent=2))
    if failed:
        print(f"{len(failed)} fused row(s) failed", file=sys.stderr)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
