"""K GANs of the seed report (Tables 3 and 4) trained as one: each member its own generator and
discriminator weights, BatchNorm statistics, D dropout and latent size.

Convolutions run over the channel-stacked layout [N, K*C, H, W], as K calls (side by side on CUDA
streams on a GPU, see `genmodels.fused.layers`). G's fully connected projection runs as a batched
matrix product.
Noise h is padded to the largest latent size L; the projection's padded input columns are zero
and the padded noise coordinates are zeroed, so each member's generator computes exactly its
standalone output. Members share each real minibatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.fused.layers import (
    MemberBatchNorm,
    MemberConv2d,
    MemberConvTranspose2d,
    MemberDropout,
    MemberLinear,
    PaddedLatents,
    member_state,
    prefixed,
    to_channels,
    to_members,
)
from genmodels.gan import LEAKY_SLOPE, Discriminator, Generator


class FusedGenerator(PaddedLatents, nn.Module):
    """Table 4 for K members: h [K, N, L] -> images [K, N, 1, 28, 28] in [-1, 1]."""

    def __init__(self, members: list[Generator], latent_width: int | None = None):
        super().__init__()
        self.register_latents([g.latent_dim for g in members], latent_width)
        self.project = MemberLinear.from_linears([g.project[0] for g in members],
                                                 in_features=self.latent_dim)
        self.project_norm = MemberBatchNorm([g.project[1] for g in members])
        deconv = [g.deconv for g in members]
        self.up1 = MemberConvTranspose2d([d[0] for d in deconv])  # 3 x 3 x 256
        self.norm1 = MemberBatchNorm([d[1].norm for d in deconv])  # per (channel, position)
        self.up2 = MemberConvTranspose2d([d[3] for d in deconv])  # 7 x 7 x 128
        self.norm2 = MemberBatchNorm([d[4] for d in deconv])
        self.up3 = MemberConvTranspose2d([d[6] for d in deconv])  # 14 x 14 x 64
        self.norm3 = MemberBatchNorm([d[7] for d in deconv])
        self.up4 = MemberConvTranspose2d([d[9] for d in deconv])  # 28 x 28 x 1

    def member(self, k: int) -> Generator:
        """Member k as a standalone `Generator` (its own weights and BatchNorm statistics)."""
        generator = Generator(self.latent_dims[k]).to(self.latent_mask.device)
        generator.load_state_dict({
            **prefixed("project.0", member_state(self.project, k, cols=self.latent_dims[k])),
            **prefixed("project.1", self.project_norm.member_state(k)),
            **prefixed("deconv.0", member_state(self.up1, k)),
            **prefixed("deconv.1.norm", self.norm1.member_state(k)),
            **prefixed("deconv.3", member_state(self.up2, k)),
            **prefixed("deconv.4", self.norm2.member_state(k)),
            **prefixed("deconv.6", member_state(self.up3, k)),
            **prefixed("deconv.7", self.norm3.member_state(k)),
            **prefixed("deconv.9", member_state(self.up4, k)),
        })
        return generator

    def mask_noise(self, h: torch.Tensor) -> torch.Tensor:
        return torch.where(self.latent_mask.unsqueeze(1), h, torch.zeros((), dtype=h.dtype, device=h.device))


    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k, n = self.num_members, h.shape[1]
        x = self.project(self.mask_noise(h))  # [K, N, 512]
        x = F.relu(self.project_norm(to_channels(x)))  # [N, K*512]
        x = self.up1(x.view(n, -1, 1, 1))
        x = F.relu(self.norm1(x.flatten(1)).view_as(x))
        x = F.relu(self.norm2(self.up2(x)))
        x = F.relu(self.norm3(self.up3(x)))
        return to_members(torch.tanh(self.up4(x)), k)


class FusedDiscriminator(nn.Module):
    """Table 3 for K members: images shared [N, 1, 28, 28] or per member [K, N, 1, 28, 28] ->
    logits [K, N]."""

    def __init__(self, members: list[Discriminator], dropouts: list[float]):
        super().__init__()
        p = torch.tensor(dropouts, dtype=torch.float32)
        feats = [d.features for d in members]
        # features: (conv, [bn], leaky, dropout) blocks; conv at 0, 3, 7, 11 and bn at 4, 8, 12
        self.convs = nn.ModuleList(MemberConv2d([f[i] for f in feats]) for i in (0, 3, 7, 11))
        self.norms = nn.ModuleList(MemberBatchNorm([f[i] for f in feats]) for i in (4, 8, 12))
        self.drops = nn.ModuleList(MemberDropout(p, channels=c) for c in (64, 128, 256, 512))
        self.classifier = MemberLinear.from_linears([d.classifier for d in members])

    @property
    def num_members(self) -> int:
        return len(self.classifier.weight)

    def member(self, k: int) -> Discriminator:
        """Member k as a standalone `Discriminator`."""
        discriminator = Discriminator(float(self.drops[0].p[k])).to(self.classifier.weight.device)
        state = prefixed("classifier", member_state(self.classifier, k))
        for conv, index in zip(self.convs, (0, 3, 7, 11)):
            state.update(prefixed(f"features.{index}", member_state(conv, k)))
        for norm, index in zip(self.norms, (4, 8, 12)):
            state.update(prefixed(f"features.{index}", norm.member_state(k)))
        discriminator.load_state_dict(state)
        return discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.num_members
        x = x if x.dim() == 4 else to_channels(x)  # shared real images stay [N, 1, 28, 28]
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i > 0:
                x = self.norms[i - 1](x)
            x = self.drops[i](F.leaky_relu(x, LEAKY_SLOPE))
        features = x.flatten(1).view(len(x), k, -1).transpose(0, 1)  # [K, N, 512*2*2]
        return self.classifier(features).squeeze(2)
