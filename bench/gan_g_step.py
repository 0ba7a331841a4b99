"""The GAN's generator step with and without D's weight gradients, timed in turns in one process.

    python bench/gan_g_step.py                          # this CPU, one standalone GAN, batch 128
    python bench/gan_g_step.py --device cuda --members 64

G's loss is backpropagated through D to reach G. A plain `loss.backward()` also computes D's
weight gradients on the way, and they are thrown away: the next D step clears them before its own
backward. `loss.backward(inputs=G's parameters)` makes autograd skip them (each convolution's
backward then computes its input gradient only), which is what `genmodels.tasks.GANTask` and
`genmodels.fused.tasks.FusedGANTask` now do. This times the G step's forward + backward both ways,
for one standalone GAN or a fused group of `--members`, and checks that G's gradients are the same
(bit for bit, in deterministic fp32 arithmetic).
Imports torch and genmodels only.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.bench_fused import BATCH, DEFAULT_DATA, SEED, build_task, sync, training_data  # noqa: E402
from genmodels.data import to_unit_interval  # noqa: E402
from genmodels.fused.gan import fused_generator_loss  # noqa: E402
from genmodels.gan import generator_loss  # noqa: E402


@contextlib.contextmanager
def exact_arithmetic():
    """cuDNN's deterministic algorithms and no TF32 while the gradients are compared: otherwise two
    runs of the *same* G step already differ on CUDA (the H200 round of 2026-11-28 printed DIFFER
    for that reason). No change on a CPU."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--members", type=int, default=0, help="a fused group of K (0: one standalone GAN)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--data-dir", default=None, help=f"default {DEFAULT_DATA}, else the repo's tests/data")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    data = training_data(args.data_dir, device)
    task = build_task("gan", args.members or None, data, device)
    task.update(to_unit_interval(data.train_images[:BATCH]))  # one whole step first (warm-up)
    generator, discriminator = task.generator, task.discriminator
    shape = ((args.members,) if args.members else ()) + (BATCH, generator.latent_dim)
    h = torch.randn(shape, device=device)

    def g_step(only_g: bool) -> list[torch.Tensor]:
        generator.zero_grad(set_to_none=True)
        logits = discriminator(generator(h))
        loss = (fused_generator_loss(logits).sum() if args.members else generator_loss(logits))
        loss.backward(inputs=list(generator.parameters()) if only_g else None)
        return [q.grad for q in generator.parameters()]

    def seeded_g_step(only_g: bool) -> list[torch.Tensor]:
        torch.manual_seed(SEED)  # the same dropout masks in D both ways
        return g_step(only_g)

    with exact_arithmetic():
        same = all(torch.equal(a, b) for a, b in zip(seeded_g_step(False), seeded_g_step(True)))
    times = {False: [], True: []}
    for r in range(args.rounds):
        for only_g in ((False, True) if r % 2 == 0 else (True, False)):
            sync(device)
            start = time.perf_counter()
            g_step(only_g)
            sync(device)
            times[only_g].append((time.perf_counter() - start) * 1000)
    full, only = statistics.median(times[False]), statistics.median(times[True])
    what = f"a fused group of {args.members}" if args.members else "one standalone GAN"
    print(f"G step (forward + backward), {what}, batch {BATCH}, {device}, {torch.get_num_threads()} "
          f"threads, median of {args.rounds}: with D's weight gradients {full:.1f} ms, without "
          f"{only:.1f} ms ({only / full:.2f}x); G's gradients {'the same' if same else 'DIFFER'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
