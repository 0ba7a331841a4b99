"""The fused groups' optimizer step alone: `StackedAdam` with its member calls on 1, 4, 8 or 16
CUDA streams, eager and replayed as a CUDA graph, against `torch.optim.Adam(fused=True)` over the
same numbers as one parameter group (one lr for all: a floor, not something a group can use).

    python bench/bench_optim.py --device cuda             # the GPU run (torch + genmodels only)
    python bench/bench_optim.py --members 4 --steps 5     # on the CPU

Prints milliseconds per step for a fused VAE and a fused GAN (generator and discriminator).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.bench_fused import member_configs  # noqa: E402
from genmodels.fused.gan import FusedDiscriminator, FusedGenerator  # noqa: E402
from genmodels.fused.optim import StackedAdam  # noqa: E402
from genmodels.fused.vae import FusedVAE  # noqa: E402
from genmodels.gan import Discriminator, Generator  # noqa: E402
from genmodels.vae import VAE  # noqa: E402


def stacked_params(model: str, k: int, device: torch.device) -> list[torch.nn.Parameter]:
    cfgs = member_configs(model, k)
    if model == "vae":
        vae = FusedVAE([VAE.from_config(c) for c in cfgs], [c.dropout for c in cfgs])
        return list(vae.to(device).parameters())
    dropouts = [c.dropout for c in cfgs]
    g = FusedGenerator([Generator(c.latent_dim) for c in cfgs], "per-member")
    d = FusedDiscriminator([Discriminator(c.dropout) for c in cfgs], dropouts, "per-member")
    return list(g.to(device).parameters()) + list(d.to(device).parameters())


def ms_per_step(step, steps: int, device: torch.device, graph: bool) -> float:
    for _ in range(3):
        step()
    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream(device).wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            step()
        step = captured.replay
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--members", type=int, nargs="+", default=None, help="default 64 on CUDA, 4 on CPU")
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 5)
    torch.manual_seed(0)
    for model in ("vae", "gan"):
        for k in args.members or ([64] if cuda else [4]):
            params = stacked_params(model, k, device)
            for p in params:  # any gradient will do: the step's cost does not depend on its values
                p.grad = torch.randn_like(p)
            active = torch.ones(k, dtype=torch.bool, device=device)
            numbers = sum(p.numel() for p in params)
            rows = []
            for streams in ((1, 4, 8, 16) if cuda else (1,)):
                opt = StackedAdam(params, [1e-3 * (1 + i % 3) for i in range(k)], ([0.9] * k, [0.999] * k),
                                  streams=streams)
                for graph in ((False, True) if cuda else (False,)):
                    ms = ms_per_step(lambda opt=opt, active=active: opt.step(active), steps, device, graph)
                    mode = "graphed" if graph else "eager"
                    rows.append((f"StackedAdam, {streams:2} stream(s), {mode}", ms))
            flat = [torch.nn.Parameter(p.detach().clone()) for p in params]
            for p, stacked in zip(flat, params):
                p.grad = stacked.grad.clone()
            reference = torch.optim.Adam(flat, lr=1e-3, fused=True)
            rows.append(("torch.optim.Adam(fused=True), one lr for all, eager",
                         ms_per_step(reference.step, steps, device, False)))
            print(f"{model}, K = {k} ({numbers / 1e6:.1f}M numbers) on {device}:")
            for name, ms in rows:
                rate = numbers * 28 / ms / 1e6  # read p, g, m, v; write p, m, v
                print(f"  {name:<55} {ms:8.3f} ms/step  {rate:7.1f} GB/s (7 x 4 B per number)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
