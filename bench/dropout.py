"""The fused discriminator's dropout, forward + backward, timed in turns in one process: the mask
that carries its scale (`MemberDropout`, one multiply each way) against the arithmetic before it
(a bool mask, then a division by 1 - p: two passes each way, and fp32 out of a bf16 activation).

    python bench/dropout.py                                  # this CPU, K = 4
    python bench/dropout.py --device cuda --members 64 --dtype bfloat16

Each round draws masks and runs D's four dropout layers (the channel-stacked activations of a
batch of 128, K members, the dropouts of `bench_fused`'s GAN configurations) forward and backward, both ways,
after checking that the two give the same outputs and gradients for the same random numbers.
Imports torch and genmodels only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.bench_fused import BATCH, member_configs, sync  # noqa: E402
from genmodels.fused.layers import MemberDropout  # noqa: E402

# D's activations after each LeakyReLU (Table 3): channels and side
D_LAYERS = ((64, 14), (128, 7), (256, 4), (512, 2))


def before(layer: MemberDropout, x: torch.Tensor) -> torch.Tensor:
    """The arithmetic `MemberDropout.forward` did up to commit 4225d55."""
    p = layer.stacked_p(x.dim())
    keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= p
    return x * keep / (1 - p)


def now(layer: MemberDropout, x: torch.Tensor) -> torch.Tensor:
    return layer(x)


def pass_through(way, layers, inputs, seed: int = 0) -> list[torch.Tensor]:
    """Forward and backward through every layer; the outputs and the inputs' gradients."""
    torch.manual_seed(seed)
    outputs = [way(layer, x) for layer, x in zip(layers, inputs)]
    torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
    grads = [x.grad for x in inputs]
    for x in inputs:
        x.grad = None
    return [o.detach() for o in outputs] + grads


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="the activations' dtype (bfloat16: as under --precision bf16)")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)
    device, k, dtype = torch.device(args.device), args.members, getattr(torch, args.dtype)
    dropouts = torch.tensor([cfg.dropout for cfg in member_configs("gan", k)])
    layers = [MemberDropout(dropouts, channels=c).to(device) for c, _ in D_LAYERS]
    inputs = [torch.randn(BATCH, k * c, side, side, device=device, dtype=dtype, requires_grad=True)
              for c, side in D_LAYERS]
    old, new = pass_through(before, layers, inputs), pass_through(now, layers, inputs)
    # A multiply by 1 / (1 - p) rounds where a division by 1 - p rounded (a last bit in fp32). In
    # bf16 the new way rounds the scale and the product to bf16 (2^-9 each), where the old one gave
    # fp32, rounded to bf16 here to compare: three roundings apart at most.
    tolerance = {"atol": 0, "rtol": 2 ** -21 if dtype == torch.float32 else 2 ** -7}
    for a, b in zip(old, new):
        torch.testing.assert_close(b, a.to(b.dtype), **tolerance)
    print(f"{device}, K = {k}, {args.dtype}: the same outputs and gradients both ways, to the last bits")

    times = {before: [], now: []}
    for r in range(args.rounds):
        for way in ((before, now) if r % 2 == 0 else (now, before)):  # in turns: no drift favours one
            sync(device)
            start = time.perf_counter()
            pass_through(way, layers, inputs, seed=r)
            sync(device)
            times[way].append(time.perf_counter() - start)
    old_ms, new_ms = (1e3 * statistics.median(times[w]) for w in (before, now))
    print(f"D's dropout forward + backward, median of {args.rounds}: bool mask and division "
          f"{old_ms:.2f} ms, scaled mask {new_ms:.2f} ms ({new_ms / old_ms:.2f}x the time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
