"""K VAEs of the seed report (Tables 1 and 2) trained as one: each member its own weights, dropout
probability and latent size.

Latent sizes differ, so latent tensors are padded to the largest size L. Member k's coordinates
beyond its own L_k are forced to exactly zero with `torch.where` (a multiply by a 0 mask would keep
a NaN): mu = log sigma^2 = 0 there, so those coordinates add exactly 0 to the KL, z = 0 there, and
the decoder's padded input columns (zero weights) see zero input and get zero gradient. The padded
rows and columns therefore stay zero forever, and each member computes what its standalone model
computes. Each member's weights are copied from a standalone `VAE` built the usual way, so its
initial weights are drawn exactly as the standalone model's are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.fused.layers import (
    MemberDropout,
    MemberLinear,
    PaddedLatents,
    member_state,
    prefixed,
    stacked,
)
from genmodels.vae import VAE


class FusedVAE(PaddedLatents, nn.Module):
    def __init__(self, members: list[VAE], dropouts: list[float], latent_width: int | None = None):
        super().__init__()
        self.register_latents([m.latent_dim for m in members], latent_width)
        p = torch.tensor(dropouts, dtype=torch.float32)

        def linears(modules: list[nn.Sequential], index: int) -> list[nn.Linear]:
            return [m[index] for m in modules]

        enc = [m.encoder for m in members]
        dec = [m.decoder for m in members]
        L = self.latent_dim
        # Table 1: encoder (the last layer's mu rows are [0, L_k), its log-variance rows [L, L + L_k))
        self.enc1 = MemberLinear.from_linears(linears(enc, 0))
        self.enc2 = MemberLinear.from_linears(linears(enc, 3))
        heads = linears(enc, 6)
        hidden = heads[0].in_features

        def head(half: int) -> MemberLinear:  # 0: the mu rows, 1: the log-variance rows
            parts = [(h.weight.chunk(2)[half], h.bias.chunk(2)[half]) for h in heads]
            return MemberLinear(stacked([w for w, _ in parts], (L, hidden)),
                                stacked([b for _, b in parts], (L,)))

        self.enc_mu, self.enc_logvar = head(0), head(1)
        # Table 2: decoder (its first layer's padded input columns are zero)
        self.dec1 = MemberLinear.from_linears(linears(dec, 0), in_features=L)
        self.dec2 = MemberLinear.from_linears(linears(dec, 3))
        self.dec3 = MemberLinear.from_linears(linears(dec, 6))
        self.dec4 = MemberLinear.from_linears(linears(dec, 9))
        self.drop = nn.ModuleList(MemberDropout(p) for _ in range(5))  # one per dropout layer, in order
        self.hidden_dim = members[0].encoder[0].out_features

    def member(self, k: int) -> VAE:
        """Member k as a standalone `VAE` (its own weights, unpadded; for figures and exports)."""
        latent = self.latent_dims[k]
        vae = VAE(latent, float(self.drop[0].p[k]), self.hidden_dim).to(self.latent_mask.device)
        mu, logvar = member_state(self.enc_mu, k, latent), member_state(self.enc_logvar, k, latent)
        state = {
            **prefixed("encoder.0", member_state(self.enc1, k)),
            **prefixed("encoder.3", member_state(self.enc2, k)),
            **prefixed("encoder.6", {name: torch.cat([mu[name], logvar[name]]) for name in mu}),
            **prefixed("decoder.0", member_state(self.dec1, k, cols=latent)),
            **prefixed("decoder.3", member_state(self.dec2, k)),
            **prefixed("decoder.6", member_state(self.dec3, k)),
            **prefixed("decoder.9", member_state(self.dec4, k)),
        }
        vae.load_state_dict(state)
        return vae

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x shared [N, 1, 28, 28] or per member [K, N, 1, 28, 28] -> mu, log sigma^2 [K, N, L]."""
        x = x.flatten(1) if x.dim() == 4 else x.flatten(2)
        h = self.drop[0](F.elu(self.enc1(x)))
        h = self.drop[1](torch.tanh(self.enc2(h)))
        mask = self.latent_mask.unsqueeze(1)
        zero = torch.zeros((), dtype=h.dtype, device=h.device)
        return torch.where(mask, self.enc_mu(h), zero), torch.where(mask, self.enc_logvar(h), zero)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor,
                       eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        return torch.where(self.latent_mask.unsqueeze(1), z, torch.zeros((), dtype=z.dtype, device=z.device))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits [K, N, 1, 28, 28] of latent codes z [K, N, L] (padded coordinates 0)."""
        h = self.drop[2](torch.tanh(self.dec1(z)))
        h = self.drop[3](F.elu(self.dec2(h)))
        h = self.drop[4](F.elu(self.dec3(h)))
        return self.dec4(h).view(self.num_members, -1, 1, 28, 28)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, eps)), mu, logvar

    @torch.no_grad()
    def sample(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(z))
