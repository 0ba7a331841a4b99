"""Training throughput: gensweep's loop against the common torchvision + DataLoader pipeline.

    python bench/bench_training.py --data-dir ../shared/data
    python bench/bench_training.py --data-dir ../shared/data --device cuda --precision bf16

Both pipelines train the same model with the same optimizer step (`task.update`), batch size and
device, one after the other in this process:
- gensweep: the split held as one uint8 tensor on the device, batches drawn by a permutation;
- reference: `torchvision.datasets.MNIST(transform=ToTensor())` + `DataLoader(shuffle=True)`, the
  pipeline of PyTorch's own examples (num_workers=1 and pinned memory on CUDA, 0 on the CPU).
It prints images per second for both and the ratio (gensweep / reference).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from genmodels.data import iterate_batches, load_dataset, resolve_data_dir
from genmodels.gan import GANConfig
from genmodels.training import TrainConfig, Trainer
from genmodels.vae import VAEConfig

WARMUP_STEPS = 5  # not timed: allocator warm-up, cuDNN autotuning
DEFAULT_STEPS = {"vae": 300, "gan": 40}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, batches, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `step` after the warm-up; `batches` is an endless iterator."""
    for _ in range(WARMUP_STEPS):
        step(next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    sync(device)
    return time.perf_counter() - start


def gensweep_batches(trainer: Trainer):
    while True:
        for index in iterate_batches(trainer.data.train_images, trainer.train_cfg.batch_size,
                                     trainer.batch_generator):
            yield trainer.data.train_images[index]


def reference_batches(data_dir: str, batch_size: int, device: torch.device):
    dataset = torchvision.datasets.MNIST(str(resolve_data_dir(data_dir)), train=True,
                                         transform=ToTensor())
    cuda = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=1 if cuda else 0, pin_memory=cuda)
    while True:
        for x, _ in loader:
            yield x.to(device, non_blocking=cuda)


def bench_model(model: str, args: argparse.Namespace) -> dict[str, float]:
    model_cfg = VAEConfig() if model == "vae" else GANConfig()
    train_cfg = TrainConfig(batch_size=args.batch_size, device=args.device,
                            precision=args.precision)
    data = load_dataset("mnist", args.data_dir)
    trainer = Trainer.create(model, model_cfg, train_cfg, data)
    steps = args.steps or DEFAULT_STEPS[model]
    images = steps * args.batch_size
    ours = time_steps(trainer.task.train_step, gensweep_batches(trainer), steps, trainer.device)
    ref = time_steps(trainer.task.update,
                     reference_batches(args.data_dir, args.batch_size, trainer.device),
                     steps, trainer.device)
    return {"model": model, "steps": steps, "gensweep_img_s": images / ours,
            "reference_img_s": images / ref, "ratio": ref / ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per pipeline")
    parser.add_argument("--models", nargs="+", default=["vae", "gan"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'model':<6}{'steps':>7}{'gensweep img/s':>17}{'reference img/s':>17}{'ratio':>8}")
    for model in args.models:
        r = bench_model(model, args)
        print(f"{r['model']:<6}{r['steps']:>7}{r['gensweep_img_s']:>17.0f}"
              f"{r['reference_img_s']:>17.0f}{r['ratio']:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
