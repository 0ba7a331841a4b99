"""The other way to fuse: torch.func (stacked module state + vmap) against `genmodels.fused`.

    python bench/bench_vmap.py                                   # CPU, both models
    python bench/bench_vmap.py --device cuda --members 16 64     # a GPU (torch + genmodels only)

Issue 12 asks which of two ways to give K members their own weights and BatchNorm statistics is
faster on each device: our fused layers (stacked weights, batched matrix products, K convolution
calls, BatchNorm over K x C channels; `genmodels.fused`), or PyTorch's model-ensembling recipe:
`torch.func.stack_module_state` over K standalone models and `vmap(functional_call(...))`, with
`randomness="different"` so every member draws its own dropout masks and noise.

Both are timed on the same K members (same weights) for the part of a step that differs: the
forward pass, the loss and the backward pass (the optimizer step over the stacked parameters is the
same `StackedAdam` either way). Before timing, both ways compute the losses of the same members on
the same images and noise without dropout: they must agree to rounding, or the comparison is void.

One difference is not about speed: vmap needs every member's tensors to have the same shapes, so
members cannot differ in latent size (a searched hyperparameter) unless the standalone models are
padded first, which is what `genmodels.fused` does. Here every member has the same latent size.
On this repo's 2-core, 24 GiB CPU box the vmapped GAN ran out of memory at K = 4, so the CPU
default for the GAN is K = 2 (bench/RESULTS.md). Imports torch and genmodels only.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.bench_fused import BATCH, DEFAULT_DATA, TEST_DATA, sync  # noqa: E402
from genmodels.data import load_dataset, to_unit_interval  # noqa: E402
from genmodels.fused.gan import (  # noqa: E402
    FusedDiscriminator,
    FusedGenerator,
    fused_discriminator_loss,
    fused_generator_loss,
)
from genmodels.fused.tasks import default_conv_layout  # noqa: E402
from genmodels.fused.vae import FusedVAE, fused_elbo_terms  # noqa: E402
from genmodels.gan import Discriminator, Generator, discriminator_loss, generator_loss  # noqa: E402
from genmodels.vae import VAE, elbo_terms  # noqa: E402

LATENT = {"vae": 20, "gan": 100}  # the seeds' latent sizes, the same for every member here
AGREE = 1e-4  # relative difference of the two ways' losses, fp32


def members(model: str, k: int, dropout: bool) -> list:
    """K standalone models from K seeds, each its own dropout (0 for the agreement check)."""
    out = []
    for i in range(k):
        torch.manual_seed(i)
        p = 0.05 * (1 + i % 4) if dropout else 0.0
        out.append(VAE(LATENT["vae"], p) if model == "vae"
                   else (Generator(LATENT["gan"]), Discriminator(p)))
    return out


class VmapVAE:
    """K VAEs as torch.func runs them: one stacked state, one vmapped call of the standalone loss."""

    def __init__(self, models: list[VAE]):
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")  # only its structure is used

        def member_loss(params, buffers, x, eps):
            def model(images, noise):
                return functional_call(self.base, (params, buffers), (images, noise))
            return -elbo_terms(model, x, eps)["elbo"].mean()

        self.losses = vmap(member_loss, in_dims=(0, 0, None, 0), randomness="different")

    def loss(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:  # [K]
        return self.losses(self.params, self.buffers, x, eps)


class VmapGAN:
    """K GANs as torch.func runs them: D's loss on real and generated images, G's loss, per member."""

    def __init__(self, pairs: list[tuple[Generator, Discriminator]]):
        self.g_params, self.g_buffers = stack_module_state([g for g, _ in pairs])
        self.d_params, self.d_buffers = stack_module_state([d for _, d in pairs])
        self.g_base = copy.deepcopy(pairs[0][0]).to("meta")
        self.d_base = copy.deepcopy(pairs[0][1]).to("meta")

        def member_losses(g_params, g_buffers, d_params, d_buffers, real, h):
            def d(images):
                return functional_call(self.d_base, (d_params, d_buffers), (images,))
            fake = functional_call(self.g_base, (g_params, g_buffers), (h,))
            return discriminator_loss(d(real), d(fake.detach())), generator_loss(d(fake))

        self.losses = vmap(member_losses, in_dims=(0, 0, 0, 0, None, 0), randomness="different")

    def loss(self, real: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # [K]
        loss_d, loss_g = self.losses(self.g_params, self.g_buffers, self.d_params, self.d_buffers,
                                     real, h)
        return loss_d + loss_g


class FusedGAN:
    """The same K GANs in `genmodels.fused`'s layers and the same losses."""

    def __init__(self, pairs: list[tuple[Generator, Discriminator]], dropouts: list[float],
                 layout: str):
        self.g = FusedGenerator([g for g, _ in pairs], layout)
        self.d = FusedDiscriminator([d for _, d in pairs], dropouts, layout)

    def to(self, device: torch.device) -> FusedGAN:
        self.g.to(device)
        self.d.to(device)
        return self

    def loss(self, real: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # [K]
        fake = self.g(h)
        return (fused_discriminator_loss(self.d(real), self.d(fake.detach()))
                + fused_generator_loss(self.d(fake)))


def build(model: str, way: str, k: int, device: torch.device, dropout: bool):
    models = members(model, k, dropout)
    if model == "vae":
        if way == "vmap":
            return VmapVAE([m.to(device) for m in models])
        return FusedVAE(models, [m.encoder[2].p for m in models]).to(device)
    pairs = [(g.to(device), d.to(device)) for g, d in models]
    if way == "vmap":
        return VmapGAN(pairs)
    return FusedGAN(pairs, [d.features[2].p for _, d in pairs], default_conv_layout(device)).to(device)


def losses(model: str, net, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-member losses [K] of one step's forward pass, on the shared images and given noise."""
    if model == "vae":
        if isinstance(net, VmapVAE):
            return net.loss(images, noise)
        return -fused_elbo_terms(net, images, noise)["elbo"].mean(dim=1)
    return net.loss(images * 2 - 1, noise)


def ms_per_step(model: str, net, images: torch.Tensor, k: int, steps: int,
                device: torch.device) -> float:
    """Forward, loss and backward of all K members, in milliseconds per step."""
    def step(i: int) -> None:
        x = images[(i * BATCH) % (len(images) - BATCH):][:BATCH]
        noise = torch.randn(k, BATCH, LATENT[model], device=device)
        losses(model, net, x, noise).sum().backward()

    for i in range(2):  # warm-up
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return 1000 * (time.perf_counter() - start) / steps


def check_agreement(model: str, k: int, images: torch.Tensor, device: torch.device) -> float:
    """Largest relative difference of the two ways' losses on the same members, images (up to a
    batch of them) and noise (no dropout: each way draws its own masks)."""
    torch.manual_seed(0)
    x = images[:BATCH]
    noise = torch.randn(k, len(x), LATENT[model], device=device)
    a = losses(model, build(model, "vmap", k, device, dropout=False), x, noise)
    b = losses(model, build(model, "fused", k, device, dropout=False), x, noise)
    return float(((a - b).abs() / b.abs()).max().detach())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", choices=["vae", "gan", "both"], default="both")
    p.add_argument("--members", type=int, nargs="+", default=None,
                   help="group sizes K (default: 4 8 16 for the VAE, 2 for the GAN on a CPU; "
                        "16 64 on a GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row")
    p.add_argument("--data-dir", default=None, help=f"default {DEFAULT_DATA}, else the repo's tests/data")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    data_dir = args.data_dir or (DEFAULT_DATA if DEFAULT_DATA.exists() else TEST_DATA)
    images = to_unit_interval(load_dataset("mnist", data_dir).train_images[:4096]).to(device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {name}; batch {BATCH}; forward + loss + backward of K members per step")
    models = ["vae", "gan"] if args.model == "both" else [args.model]
    for model in models:
        sizes = args.members or ([16, 64] if cuda else ([4, 8, 16] if model == "vae" else [2]))
        steps = args.steps or (20 if cuda else (40 if model == "vae" else 3))
        for k in sizes:
            apart = check_agreement(model, k, images, device)
            if apart > AGREE:
                print(f"{model} K = {k}: the two ways' losses differ by {apart:.1e} (> {AGREE:.0e}); "
                      "not timed")
                return 1
            fused = ms_per_step(model, build(model, "fused", k, device, True), images, k, steps, device)
            vmapped = ms_per_step(model, build(model, "vmap", k, device, True), images, k, steps, device)
            print(f"{model}  K = {k:<3} genmodels.fused {fused:9.1f} ms   torch.func vmap {vmapped:9.1f} ms"
                  f"   vmap / fused {vmapped / fused:5.2f}x   (losses agree to {apart:.1e})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
