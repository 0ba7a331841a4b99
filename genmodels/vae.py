"""The VAE of the seed report (Tables 1 and 2) and its loss, eq. (10) of Kingma & Welling (2014).

Dropout: the seed's tables say "dropout = 0.9", which is TensorFlow's *keep* probability. PyTorch's
`nn.Dropout(p)` takes the *drop* probability, so the same network is `dropout=0.1` here.

Likelihood: the decoder returns logits; its final sigmoid (Table 2) is folded into the Bernoulli
log-likelihood, computed with `binary_cross_entropy_with_logits` for numerical stability. Pixels are
continuous Bernoulli targets in [0, 1] by default (grey levels as probabilities); with
`binarize=True` they are binarized dynamically (a fresh Bernoulli draw per training batch, one fixed
draw of the test set), the setting published MNIST likelihoods use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.device import at_least_fp32

PIXELS = 28 * 28


@dataclass
class VAEConfig:
    latent_dim: int = 20  # size of z (Table 1: "20 x 2" = a mean and a log-variance per unit)
    hidden_dim: int = 512  # width of every hidden layer (Tables 1 and 2)
    dropout: float = 0.1  # drop probability; the seed's "dropout = 0.9" is the keep probability
    lr: float = 1e-3  # Adam learning rate
    binarize: bool = False  # dynamic binarization of the pixels (see the module docstring)

    def __post_init__(self) -> None:
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if not isinstance(self.hidden_dim, int) or self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive integer, got {self.hidden_dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"dropout is a drop probability in [0, 1), got {self.dropout!r} "
                "(a keep probability of 0.9 is dropout=0.1)"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class VAE(nn.Module):
    def __init__(self, latent_dim: int = 20, dropout: float = 0.1, hidden_dim: int = 512):
        super().__init__()
        self.latent_dim = latent_dim
        # Table 1: encoder
        self.encoder = nn.Sequential(
            nn.Linear(PIXELS, hidden_dim), nn.ELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, 2 * latent_dim),  # [mu, log sigma^2]
        )
        # Table 2: decoder (the final sigmoid lives in the loss and in `sample`)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.ELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.ELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, PIXELS),
        )

    @classmethod
    def from_config(cls, cfg: VAEConfig) -> VAE:
        return cls(latent_dim=cfg.latent_dim, dropout=cfg.dropout, hidden_dim=cfg.hidden_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): the sample stays differentiable in mu and sigma.
        `eps` may be given (e.g. to replay a fused member's noise); by default it is drawn."""
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of the 784 pixels, shaped [N, 1, 28, 28]."""
        return self.decoder(z).view(-1, 1, 28, 28)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, eps)), mu, logvar

    @torch.no_grad()
    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images in [0, 1] for latent codes z (the sigmoid of Table 2)."""
        return torch.sigmoid(self.decode(z))


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per example, analytically (Kingma & Welling, appendix B):
    -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
    """log p(x | z) per example, summed over pixels (every dimension after the first
    `batch_dims`), from logits (stable for saturated pixels). Targets x are broadcast: a fused
    group's logits [K, N, 1, 28, 28] (`batch_dims` 2) take the images [N, 1, 28, 28] all see."""
    nll = F.binary_cross_entropy_with_logits(at_least_fp32(logits), x.expand_as(logits), reduction="none")
    return -nll.flatten(batch_dims).sum(dim=-1)


def elbo_terms(model: VAE, x: torch.Tensor,
               eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-example terms of eq. (10) with one reparameterized sample (M = 1 at our batch size):

        ELBO = -KL(q(z|x) || p(z)) + log p(x | z),   z = mu + sigma * eps.

    Returns tensors of shape [N] in nats: `elbo`, `recon` (the log-likelihood) and `kl`; [K, N]
    for a fused group of K (`genmodels.fused.vae.FusedVAE`).
    """
    logits, mu, logvar = model(x, eps)
    recon = bernoulli_log_likelihood(logits, x, batch_dims=mu.dim() - 1)
    kl = gaussian_kl(at_least_fp32(mu), at_least_fp32(logvar))
    return {"elbo": recon - kl, "recon": recon, "kl": kl}


def iwae_bound(model: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """Importance-weighted bound on log p(x) per example (Burda et al. 2016, eq. 8), in nats:

        log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x).

    K = 1 is the ELBO in expectation; the bound tightens towards log p(x) as K grows.
    """
    mu, logvar = model.encode(x)
    mu, logvar = mu.float(), logvar.float()
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(k, *mu.shape, device=mu.device)  # [K, N, latent]
    normal = torch.distributions.Normal
    log_q = normal(mu, std).log_prob(z).sum(-1)
    log_prior = normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
    logits = model.decode(z.flatten(0, 1).to(x.dtype)).view(k, len(x), -1)
    log_lik = bernoulli_log_likelihood(logits, x.flatten(1), batch_dims=2)
    log_w = log_lik + log_prior - log_q
    return torch.logsumexp(log_w, dim=0) - math.log(k)
