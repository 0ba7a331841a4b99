"""K GANs of the seed report (Tables 3 and 4) trained as one: each member its own generator and
discriminator weights, BatchNorm statistics, D dropout and latent size.

Convolutions run over the channel-stacked layout [N, K*C, H, W] (one grouped call, K calls, or
one batched matrix product: `layout`, see `genmodels.fused.layers`), or, in the "members" layout,
each member's network runs as its own chain of standalone calls on its own CUDA stream, its
activations never stacked. G's fully connected projection runs as a batched matrix product.
Noise h is padded to the largest latent size L; the projection's padded input columns are zero
and the padded noise coordinates are zeroed, so each member's generator computes exactly its
standalone output. Members share each real minibatch.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.device import at_least_fp32
from genmodels.fused.layers import (
    CONV_LAYOUTS,
    MemberBatchNorm,
    MemberConv2d,
    MemberConvTranspose2d,
    MemberDropout,
    MemberLinear,
    autocast_dtype,
    member_slices,
    member_state,
    prefixed,
    stacked,
    to_channels,
    to_members,
)
from genmodels.fused.streams import SideStreams, side_streams_on
from genmodels.gan import LEAKY_SLOPE, Discriminator, Generator

# The fused GAN's layouts: one of the convolution layouts for every layer, or "members": member k's
# whole network as one chain of calls on its own activations (dense, channels-last on CUDA), the K
# chains side by side on CUDA streams (one after another on a CPU). Its layers keep the stacked
# parameters of the others ("per-member" is their own layout), so checkpoints, the optimizer and
# `member(k)` are the same in every layout.
MEMBERS = "members"
GAN_LAYOUTS = (*CONV_LAYOUTS, MEMBERS)


def check_gan_layout(layout: str) -> str:
    """The layout the layers are built with: "members" runs the network itself, on "per-member" layers."""
    if layout not in GAN_LAYOUTS:
        raise ValueError(f"the fused GAN's layout must be one of {GAN_LAYOUTS}, got {layout!r}")
    return "per-member" if layout == MEMBERS else layout


class FusedGenerator(nn.Module):
    """Table 4 for K members: h [K, N, L] -> images [K, N, 1, 28, 28] in [-1, 1]."""

    def __init__(self, members: list[Generator], layout: str = "grouped",
                 latent_width: int | None = None):
        super().__init__()
        self.layout, layout = layout, check_gan_layout(layout)
        self.side_streams: SideStreams | None = None  # "members": made on the first call
        self.num_members = len(members)
        self.latent_dims = [g.latent_dim for g in members]
        self.latent_dim = latent_width or max(self.latent_dims)  # L, the padded size
        mask = torch.arange(self.latent_dim) < torch.tensor(self.latent_dims).unsqueeze(1)
        self.register_buffer("latent_mask", mask)  # [K, L]
        self.project = MemberLinear.from_linears([g.project[0] for g in members],
                                                 in_features=self.latent_dim)
        self.project_norm = MemberBatchNorm([g.project[1] for g in members])
        deconv = [g.deconv for g in members]
        self.up1 = MemberConvTranspose2d([d[0] for d in deconv], layout)  # 3 x 3 x 256
        self.norm1 = MemberBatchNorm([d[1].norm for d in deconv])  # per (channel, position)
        self.up2 = MemberConvTranspose2d([d[3] for d in deconv], layout)  # 7 x 7 x 128
        self.norm2 = MemberBatchNorm([d[4] for d in deconv])
        self.up3 = MemberConvTranspose2d([d[6] for d in deconv], layout)  # 14 x 14 x 64
        self.norm3 = MemberBatchNorm([d[7] for d in deconv])
        self.up4 = MemberConvTranspose2d([d[9] for d in deconv], layout)  # 28 x 28 x 1

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

    def pad_latent(self, codes: list[torch.Tensor]) -> torch.Tensor:
        return stacked(codes, (len(codes[0]), self.latent_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k, n = self.num_members, h.shape[1]
        x = self.project(self.mask_noise(h))  # [K, N, 512]
        if self.layout == MEMBERS:
            return self.forward_members(x)
        x = F.relu(self.project_norm(to_channels(x)))  # [N, K*512]
        x = self.up1(x.view(n, -1, 1, 1))
        x = F.relu(self.norm1(x.flatten(1)).view_as(x))
        x = F.relu(self.norm2(self.up2(x)))
        x = F.relu(self.norm3(self.up3(x)))
        return to_members(torch.tanh(self.up4(x)), k)

    def forward_members(self, projected: torch.Tensor) -> torch.Tensor:
        """The "members" layout from the projection [K, N, 512] on: each member's [N, 512] (a
        dense slice) through its own BatchNorms and transposed convolutions."""
        layers = zip(self.project_norm.per_member(), self.up1.per_member(), self.norm1.per_member(),
                     self.up2.per_member(), self.norm2.per_member(), self.up3.per_member(),
                     self.norm3.per_member(), self.up4.per_member())
        self.side_streams = side_streams_on(self.side_streams, projected.device)
        jobs = [partial(generator_member, x, *calls) for x, calls in zip(projected.unbind(0), layers)]
        return torch.stack(self.side_streams.run(jobs))


class FusedDiscriminator(nn.Module):
    """Table 3 for K members: images shared [N, 1, 28, 28] or per member [K, N, 1, 28, 28] ->
    logits [K, N]."""

    def __init__(self, members: list[Discriminator], dropouts: list[float], layout: str = "grouped"):
        super().__init__()
        self.layout, layout = layout, check_gan_layout(layout)
        self.side_streams: SideStreams | None = None  # "members": made on the first call
        self.num_members = len(members)
        p = torch.tensor(dropouts, dtype=torch.float32)
        feats = [d.features for d in members]
        # features: (conv, [bn], leaky, dropout) blocks; conv at 0, 3, 7, 11 and bn at 4, 8, 12
        self.convs = nn.ModuleList(MemberConv2d([f[i] for f in feats], layout) for i in (0, 3, 7, 11))
        self.norms = nn.ModuleList(MemberBatchNorm([f[i] for f in feats]) for i in (4, 8, 12))
        self.drops = nn.ModuleList(MemberDropout(p, channels=c) for c in (64, 128, 256, 512))
        self.classifier = MemberLinear.from_linears([d.classifier for d in members])

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
        if self.layout == MEMBERS:
            return self.forward_members(x)
        k = self.num_members
        x = x if x.dim() == 4 else to_channels(x)  # shared real images stay [N, 1, 28, 28]
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i > 0:
                x = self.norms[i - 1](x)
            x = self.drops[i](F.leaky_relu(x, LEAKY_SLOPE))
        features = x.flatten(1).view(len(x), k, -1).transpose(0, 1)  # [K, N, 512*2*2]
        return self.classifier(features).squeeze(2)

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """The "members" layout: each member's images (or the shared ones) through its own chain."""
        k, n, size = self.num_members, len(x) if x.dim() == 4 else x.shape[1], x.shape[-1]
        images = [x] * k if x.dim() == 4 else x.unbind(0)
        dtype = autocast_dtype(x.device, self.classifier.weight.dtype)
        # Every layer's dropout masks, drawn here in layer order for all members at once: the same
        # random numbers the channel-stacked layouts draw, and no draws inside the side streams.
        drops = []
        for conv, drop in zip(self.convs, self.drops):
            size = conv.output_size(size)
            drops.append(drop.per_member((n, k * drop.channels, size, size), dtype))
        norms = [norm.per_member() for norm in self.norms]
        convs = [conv.per_member() for conv in self.convs]
        classifier = zip(self.classifier.weight.unbind(0), member_slices(self.classifier.bias, k))
        self.side_streams = side_streams_on(self.side_streams, x.device)
        jobs = [partial(discriminator_member, images[m], [c[m] for c in convs], [b[m] for b in norms],
                        [d[m] for d in drops], *head) for m, head in enumerate(classifier)]
        return torch.stack(self.side_streams.run(jobs))  # [K, N]


def generator_member(x, project_norm, up1, norm1, up2, norm2, up3, norm3, up4) -> torch.Tensor:
    """One member's generator (Table 4) from its projection [N, 512], as `Generator` computes it."""
    x = up1(F.relu(project_norm(x)).view(len(x), -1, 1, 1))
    x = F.relu(norm1(x.flatten(1)).view(x.shape))  # per (channel, position): `PositionBatchNorm`
    x = F.relu(norm2(up2(x)))
    x = F.relu(norm3(up3(x)))
    return torch.tanh(up4(x))


def discriminator_member(x, convs, norms, drops, weight, bias) -> torch.Tensor:
    """One member's discriminator (Table 3): logits [N], as `Discriminator` computes them."""
    for i, (conv, drop) in enumerate(zip(convs, drops)):
        x = conv(x)
        if i > 0:
            x = norms[i - 1](x)
        x = drop(F.leaky_relu(x, LEAKY_SLOPE))
    return F.linear(x.flatten(1), weight, bias).squeeze(1)


def member_bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross-entropy per member, [K], from logits [K, N]."""
    labels = torch.full_like(at_least_fp32(logits), target)
    return F.binary_cross_entropy_with_logits(at_least_fp32(logits), labels, reduction="none").mean(dim=1)


def fused_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (2), D's side, per member [K] (see `genmodels.gan.discriminator_loss`)."""
    return member_bce(real_logits, 1.0) + member_bce(fake_logits, 0.0)


def fused_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (2), G's side, non-saturating, per member [K] (see `genmodels.gan.generator_loss`)."""
    return member_bce(fake_logits, 1.0)
