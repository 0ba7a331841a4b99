"""Would a fused group on the CPU gain from running its members on threads? Two standalone GAN
training steps (batch 128), timed in turns two ways:

- one after the other, each op on all of torch's intra-op threads (how a fused group runs its
  members on a CPU: K calls per layer, each multi-threaded);
- side by side, one Python thread per model, each op on one intra-op thread (what a "threads"
  layout would do; two processes of one thread each are bench_fused.py's unfused rows).

    python bench/cpu_threads.py [--rounds 5] [--steps 3]

torch and genmodels only; the first round is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from genmodels.gan import Discriminator, Generator, discriminator_loss, generator_loss  # noqa: E402

BATCH, LATENT, LR, BETAS, DROPOUT = 128, 100, 2e-4, (0.5, 0.999), 0.1


def make_gan():
    g, d = Generator(LATENT), Discriminator(DROPOUT)
    return (g, d, torch.optim.Adam(g.parameters(), LR, betas=BETAS),
            torch.optim.Adam(d.parameters(), LR, betas=BETAS))


def gan_step(gan, real: torch.Tensor) -> None:
    """One D step and one G step, as genmodels.tasks.GANTask.update takes them."""
    g, d, opt_g, opt_d = gan
    fake = g(torch.randn(len(real), LATENT))
    loss_d = discriminator_loss(d(real), d(fake.detach()))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    loss_g = generator_loss(d(fake))
    opt_g.zero_grad()
    loss_g.backward(inputs=list(g.parameters()))
    opt_g.step()


def one_after_the_other(gans, real, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for _ in range(steps):
        for gan in gans:
            gan_step(gan, real)
    return time.perf_counter() - start


def side_by_side(gans, real, steps: int) -> float:
    torch.set_num_threads(1)  # each Python thread's ops on its own core

    def train(gan):
        for _ in range(steps):
            gan_step(gan, real)

    workers = [threading.Thread(target=train, args=(gan,)) for gan in gans]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps of each model per timing")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    gans = [make_gan() for _ in range(threads)]
    real = torch.rand(BATCH, 1, 28, 28) * 2 - 1
    print(f"{len(gans)} GANs, {args.steps} steps each per timing, {threads} CPU threads")
    seq, par = [], []
    for round_ in range(args.rounds + 1):
        a = one_after_the_other(gans, real, args.steps, threads)
        b = side_by_side(gans, real, args.steps)
        if round_ == 0:
            continue  # warm-up
        seq.append(a)
        par.append(b)
        print(f"round {round_}: one after the other {a:.2f} s, side by side {b:.2f} s ({a / b:.2f}x)",
              flush=True)
    a, b = statistics.median(seq), statistics.median(par)
    print(f"median: one after the other {a:.2f} s, side by side on threads {b:.2f} s: {a / b:.2f}x")
    torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
