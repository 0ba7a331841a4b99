"""The DCGAN-style GAN of the seed report (Tables 3 and 4) and its losses, eq. (2).

The discriminator returns a logit; its final sigmoid (Table 3) is folded into
`binary_cross_entropy_with_logits`, which is the same loss without the float overflow of log(sigmoid).
Images live in [-1, 1] (the generator ends in tanh), as in Radford et al. (2016).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.convs import Conv2d, ConvTranspose2d
from genmodels.device import at_least_fp32

KERNEL = 5  # every conv and transposed conv is 5x5, stride 2 (Tables 3 and 4)
STRIDE = 2
LEAKY_SLOPE = 0.2  # DCGAN's LeakyReLU slope
INIT_STD = 0.02  # DCGAN's N(0, 0.02) weight init


@dataclass
class GANConfig:
    latent_dim: int = 100  # size of the noise h fed to G
    lr_g: float = 2e-4  # Adam learning rate of the generator
    lr_d: float = 2e-4  # Adam learning rate of the discriminator
    beta1: float = 0.5  # Adam betas of Radford et al. (2016)
    beta2: float = 0.999
    dropout: float = 0.0  # dropout after each LeakyReLU of D; 0 is the seed's network

    def __post_init__(self) -> None:
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        for name in ("lr_g", "lr_d"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout is a drop probability in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):  # PositionBatchNorm's too
        nn.init.normal_(module.weight, 1.0, INIT_STD)
        nn.init.zeros_(module.bias)


class Discriminator(nn.Module):
    """Table 3: 28 -> 14 -> 7 -> 4 -> 2 by 5x5 stride-2 convs, then FC to one logit."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()

        def block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [
                Conv2d(c_in, c_out, KERNEL, STRIDE, padding=2, bias=not batch_norm)
            ]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.LeakyReLU(LEAKY_SLOPE), nn.Dropout(dropout)]
            return layers

        self.features = nn.Sequential(
            *block(1, 64, batch_norm=False),  # 14 x 14 x 64
            *block(64, 128, batch_norm=True),  # 7 x 7 x 128
            *block(128, 256, batch_norm=True),  # 4 x 4 x 256
            *block(256, 512, batch_norm=True),  # 2 x 2 x 512
        )
        self.classifier = nn.Linear(512 * 2 * 2, 1)  # the sigmoid is in the loss
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N] of 'x is real'."""
        return self.classifier(self.features(x).flatten(1)).squeeze(1)


class PositionBatchNorm(nn.Module):
    """BatchNorm with statistics per (channel, position) instead of per channel.

    Used after G's first transposed conv: from a 1 x 1 input, its nine outputs per channel are nine
    *different* linear maps of the same ReLU'd (so non-negative, non-zero-mean) vector, i.e. a fully
    connected layer shaped as 3 x 3 x 256. BatchNorm2d would normalize each channel over positions
    and leave the sample-independent spatial pattern in place; that pattern dominates and the
    generator collapses onto one or two images within a few hundred steps (measured: the batch
    spread of its outputs falls from 0.14 at init to 0.06, against 0.29 with this layer;
    docs/benchmarks.md). Normalizing each feature on its own, as for any FC layer, removes it.
    """

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.shape = (channels, size, size)
        self.norm = nn.BatchNorm1d(channels * size * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(1)).view(-1, *self.shape)


class Generator(nn.Module):
    """Table 4: h -> FC 512x1x1 -> 3x3x256 -> 7x7x128 -> 14x14x64 -> 28x28x1 (tanh)."""

    def __init__(self, latent_dim: int = 100):
        super().__init__()
        self.latent_dim = latent_dim
        self.project = nn.Sequential(  # 1 x 1 x 512
            nn.Linear(latent_dim, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU()
        )

        def up(c_in: int, c_out: int, padding: int, output_padding: int,
               norm: nn.Module | None = None) -> list[nn.Module]:
            return [
                ConvTranspose2d(c_in, c_out, KERNEL, STRIDE, padding, output_padding,
                                   bias=False),
                norm or nn.BatchNorm2d(c_out), nn.ReLU(),
            ]

        # out = (in - 1) * 2 - 2 * padding + 5 + output_padding
        self.deconv = nn.Sequential(
            *up(512, 256, padding=1, output_padding=0,
                norm=PositionBatchNorm(256, 3)),  # 3 x 3 x 256
            *up(256, 128, padding=1, output_padding=0),  # 7 x 7 x 128
            *up(128, 64, padding=2, output_padding=1),  # 14 x 14 x 64
            ConvTranspose2d(64, 1, KERNEL, STRIDE, padding=2, output_padding=1),  # 28 x 28 x 1
            nn.Tanh(),
        )
        self.apply(_init_weights)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.project(h).view(-1, 512, 1, 1))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """G's output (tanh, in [-1, 1], any precision) as float images in [0, 1], the range the data,
    the figures and the scorer use."""
    return (images.float() + 1) / 2


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross-entropy of logits [N] against `target` (1: real, 0: fake), in fp32 at
    least; per member [K] for a fused group's logits [K, N]."""
    logits = at_least_fp32(logits)
    labels = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=-1)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (2), D's side: maximize log D(x) + log(1 - D(G(h))), i.e. minimize the BCE of
    'real' on x and 'fake' on G(h) (Goodfellow et al. 2014, eq. 1)."""
    return bce(real_logits, 1.0) + bce(fake_logits, 0.0)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (2), G's side, non-saturating: maximize log D(G(h)) rather than minimize
    log(1 - D(G(h))), which gives G strong gradients early on (Goodfellow et al. 2014, sec. 3)."""
    return bce(fake_logits, 1.0)
