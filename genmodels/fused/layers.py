"""Layers that hold K members' weights at once and run them as one operation (HFTA's idea).

Every parameter and buffer has the member dimension first (`[K, ...]`), so one member's slice is
`p[k]` everywhere: building a group from standalone modules, reading a member back out, and
checkpoints all index the same way. Two activation layouts are used, each where it is cheapest:

- member-major `[K, N, F]` for fully connected stacks: one batched matrix product (`baddbmm`);
- channel-stacked `[N, K * C, H, W]` for convolutions, with BatchNorm over the K * C channels, so
  each member keeps its own batch statistics.

The K members' convolutions run as K plain calls whose outputs are concatenated: in turn on a CPU,
side by side on CUDA streams on a GPU (`genmodels.fused.streams`), since one member's convolution
at batch 128 is a few dozen thread blocks, far too few to fill a large GPU alone. The alternatives
measured (one grouped call, the convolution as one batched matrix product, each member's whole
network as its own chain) lost or raced; docs/benchmarks.md keeps their numbers.

A shared input (the real images every member sees) enters without copies: `[N, F]` for a linear
layer (one plain matrix product against all K weight matrices) and `[N, C, H, W]` for a conv
(an ungrouped convolution producing K * C_out channels).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.convs import conv2d, conv_transpose2d
from genmodels.fused.streams import SideStreams, handed_tensors, side_streams_on


def stacked(tensors: list[torch.Tensor], shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Stack members' tensors into `[K, *shape]`, each copied into the leading corner of a zero
    block: padding rows/columns a smaller member lacks are exact zeros (no output, no gradient)."""
    shape = shape or tuple(tensors[0].shape)
    out = torch.zeros(len(tensors), *shape, dtype=tensors[0].dtype, device=tensors[0].device)
    for k, t in enumerate(tensors):
        out[(k, *(slice(0, n) for n in t.shape))] = t.detach()
    return out


class PaddedLatents:
    """What a group's module with latents padded to L reads from its `latent_mask` [K, L] buffer
    (True on each member's own coordinates), so that keeping or adding members changes its
    tensors alone (`genmodels.fused.tasks.regroup`)."""

    latent_mask: torch.Tensor

    def register_latents(self, latent_dims: list[int], latent_width: int | None) -> None:
        """The padded size L (the members' largest, or `latent_width`) and the mask [K, L]: True
        on each member's own coordinates."""
        self.latent_dim = latent_width or max(latent_dims)
        mask = torch.arange(self.latent_dim) < torch.tensor(latent_dims).unsqueeze(1)
        self.register_buffer("latent_mask", mask)

    @property
    def num_members(self) -> int:
        return len(self.latent_mask)

    @property
    def latent_dims(self) -> list[int]:
        return self.latent_mask.sum(dim=1).tolist()


class MemberLinear(nn.Module):
    """K linear layers: weight [K, out, in], bias [K, out]. [K, N, in] or shared [N, in] -> [K, N, out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    @classmethod
    def from_linears(cls, layers: list[nn.Linear], in_features: int | None = None,
                     out_features: int | None = None) -> MemberLinear:
        out_f = out_features or layers[0].out_features
        in_f = in_features or layers[0].in_features
        bias = stacked([m.bias for m in layers], (out_f,)) if layers[0].bias is not None else None
        return cls(stacked([m.weight for m in layers], (out_f, in_f)), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, out_f, in_f = self.weight.shape
        if x.dim() == 2:  # shared input: one [N, in] x [in, K * out] product
            flat_bias = None if self.bias is None else self.bias.flatten()
            y = F.linear(x, self.weight.reshape(k * out_f, in_f), flat_bias)
            return y.view(len(x), k, out_f).transpose(0, 1)
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


def member_state(layer: nn.Module, k: int, rows: int | None = None,
                 cols: int | None = None) -> dict[str, torch.Tensor]:
    """Member k's weight (its first `rows` outputs / `cols` inputs: a padded layer's own part)
    and bias, named as in the standalone layer's state dict."""
    state = {"weight": layer.weight[k][:rows, :cols] if cols else layer.weight[k][:rows]}
    if layer.bias is not None:
        state["bias"] = layer.bias[k][:rows]
    return state


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": value.detach().clone() for name, value in state.items()}


def member_conv(conv, weight: torch.Tensor, bias: torch.Tensor | None,
                memory_format: torch.memory_format, options: dict, x: torch.Tensor) -> torch.Tensor:
    """One member's convolution, its input first copied dense in `memory_format` (the copy a
    convolution makes of a strided slice anyway, done where the call runs: on its stream; none
    when the input is dense in that format already)."""
    return conv(x.contiguous(memory_format=memory_format), weight, bias, **options)


def conv_memory_format(device: torch.device) -> torch.memory_format:
    """What a member's convolution gets its input as. On CUDA channels-last (NHWC), the layout of
    cuDNN's tensor-core kernels: handed NCHW, cuDNN transposes every input and output of every
    call itself (17% of a fused GAN step's device time on an H200, docs/benchmarks.md). The outputs
    come back NHWC, and so does everything computed from them."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def autocast_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a convolution of `dtype` tensors computes in here: autocast's, when it is on."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def conv_weights(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Every member's slice of a stacked convolution weight [K, A, B, kh, kw] channels-last (each
    slice dense in the order A, kh, kw, B, as `Tensor.contiguous(memory_format=channels_last)`
    makes it) and in `dtype`: all K members in one copy, whose backward is one copy back."""
    order = weight.permute(0, 1, 3, 4, 2)  # [K, A, kh, kw, B]: each slice's channels-last order
    # One copy that casts too (`to` then `contiguous` would copy twice).
    dense = torch.empty(order.shape, dtype=dtype, device=weight.device).copy_(order)
    return dense.permute(0, 1, 4, 2, 3).unbind(0)


def member_slices(param: torch.Tensor | None, count: int) -> tuple:
    """Every member's slice of a stacked parameter, taken with one `unbind` (its backward is one
    `stack` of the K gradients; K separate `param[k]` would each add a zero tensor of the whole
    stack to the gradient), or `count` Nones for a layer without it."""
    return (None,) * count if param is None else param.unbind(0)


class MemberConvs(nn.Module):
    """What K convolutions and K transposed ones share: the stacked weights [K, ...] and biases
    [K, C_out], and running the members as K calls (side by side on CUDA streams on a GPU)."""

    def __init__(self, layers: list[nn.Conv2d] | list[nn.ConvTranspose2d]):
        super().__init__()
        first = layers[0]
        self.stride, self.padding = first.stride, first.padding
        self.weight = nn.Parameter(stacked([m.weight for m in layers]))
        self.bias = nn.Parameter(stacked([m.bias for m in layers])) if first.bias is not None else None
        self.side_streams: SideStreams | None = None  # made on the first call

    def members_conv(self, conv, x: torch.Tensor, groups: int, **options) -> torch.Tensor:
        """`conv` (`genmodels.convs`' conv2d or conv_transpose2d) of the K members. A shared
        input (`groups` 1) is one plain call producing K * C_out channels; otherwise K calls, one
        per member's slice of the channel-stacked input, whose outputs are concatenated."""
        if groups == 1:
            flat_bias = None if self.bias is None else self.bias.flatten()
            return conv(x, self.weight.flatten(0, 1), flat_bias, **options)
        # Each member's slice in `conv_memory_format`: on CUDA torch.cat keeps the outputs
        # channels-last, and so does everything after it.
        member_calls = self.member_calls(conv, **options)
        calls = [partial(call, xk) for call, xk in zip(member_calls, x.chunk(groups, dim=1))]
        self.side_streams = side_streams_on(self.side_streams, x.device)
        # Only the weights need marks (genmodels.fused.streams): a member's input slice is read
        # by its forward's copy alone (`member_conv`), and marking the channel-stacked input
        # would keep its memory from reuse inside a captured step.
        weights = [list(handed_tensors(call)) for call in member_calls]
        return torch.cat(self.side_streams.run(calls, marked=weights), dim=1)

    def member_calls(self, conv, **options) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Member k's convolution as a function of its own input [N, C_in, H, W]."""
        k, fmt = len(self.weight), conv_memory_format(self.weight.device)
        return [partial(member_conv, conv, wk, bk, fmt, options)
                for wk, bk in zip(self.member_weights(), member_slices(self.bias, k))]

    def member_weights(self) -> tuple[torch.Tensor, ...]:
        """Every member's weight as its convolution uses it. On CUDA: channels-last, like the
        inputs, and in autocast's dtype when autocast is on, made for all K members in one copy
        per forward (`conv_weights`). Handed NCHW fp32 slices, each call would convert its own,
        and again in its backward: K copies a layer and pass, 2K under autocast (the cast, then
        the transpose inside the convolution). Elsewhere the plain slices."""
        device = self.weight.device
        if conv_memory_format(device) == torch.contiguous_format:
            return self.weight.unbind(0)
        return conv_weights(self.weight, autocast_dtype(device, self.weight.dtype))


class MemberConv2d(MemberConvs):
    """K convolutions, weight [K, C_out, C_in, k, k]: [N, K*C_in, H, W] or shared [N, C_in, H, W]
    -> [N, K*C_out, H', W']."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.shape[1] // self.weight.shape[2]  # 1 for a shared input, K otherwise
        return self.members_conv(conv2d, x, groups, stride=self.stride, padding=self.padding)


class MemberConvTranspose2d(MemberConvs):
    """K transposed convolutions, weight [K, C_in, C_out, k, k]: [N, K*C_in, H, W] -> [N, K*C_out, ...]."""

    def __init__(self, layers: list[nn.ConvTranspose2d]):
        super().__init__(layers)
        self.output_padding = layers[0].output_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.members_conv(conv_transpose2d, x, self.weight.shape[0], stride=self.stride,
                                 padding=self.padding, output_padding=self.output_padding)


class MemberBatchNorm(nn.Module):
    """K BatchNorms of C features over the channel-stacked layout [N, K*C, ...]: one
    `F.batch_norm` over K*C channels, so every member normalizes by its own batch statistics and
    keeps its own running mean and variance (views of the [K, C] buffers)."""

    def __init__(self, layers: list[nn.BatchNorm1d | nn.BatchNorm2d]):
        super().__init__()
        first = layers[0]
        self.eps, self.momentum = first.eps, first.momentum
        self.weight = nn.Parameter(stacked([m.weight for m in layers]))
        self.bias = nn.Parameter(stacked([m.bias for m in layers]))
        self.register_buffer("running_mean", stacked([m.running_mean for m in layers]))
        self.register_buffer("running_var", stacked([m.running_var for m in layers]))
        self.register_buffer("num_batches_tracked", first.num_batches_tracked.clone())

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's entries, named as in its standalone BatchNorm's state dict."""
        return {"weight": self.weight[k], "bias": self.bias[k], "running_mean": self.running_mean[k],
                "running_var": self.running_var[k], "num_batches_tracked": self.num_batches_tracked}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)  # as nn.BatchNorm counts (unused with a momentum)
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1),
                            self.weight.flatten(), self.bias.flatten(), self.training,
                            self.momentum, self.eps)


class MemberDropout(nn.Module):
    """Dropout with each member's own drop probability `p` [K], as nn.Dropout draws it: keep with
    probability 1 - p, scale the kept units by 1 / (1 - p). `channels` > 0 means the
    channel-stacked layout [N, K*channels, ...]; 0 means member-major [K, N, ...].

    The mask carries the scale (1 / (1 - p) where a unit is kept, 0 where it is dropped), so
    dropout is one multiply forward and one backward, in the activation's dtype: a bool mask and a
    division by 1 - p were two of each, and the fp32 p turned a bf16 activation into fp32 for the
    next layer to cast back. Under bf16 the scale is rounded to bf16, a relative 2^-9 at most.

    `recorded`, when set to a list, receives every mask drawn (the exactness tests replay them in
    standalone models)."""

    def __init__(self, p: torch.Tensor, channels: int = 0):
        super().__init__()
        self.register_buffer("p", p.clone())
        self.channels = channels
        self.members_changed()
        self.recorded: list[torch.Tensor] | None = None

    def members_changed(self) -> None:
        """Whether any member drops at all, read once per member set (`regroup`), not per call:
        reading it from the device every forward would wait for the device."""
        self.any_dropout = bool((self.p > 0).any())

    def stacked_p(self, dims: int) -> torch.Tensor:
        """p broadcast against an activation with `dims` dimensions in this layer's layout."""
        if self.channels:
            return self.p.repeat_interleave(self.channels).view(1, -1, *[1] * (dims - 2))
        return self.p.view(-1, *[1] * (dims - 1))

    def scaled_mask(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """A fresh mask for an activation of `shape`: 1 / (1 - p) where kept, 0 where dropped."""
        p = self.stacked_p(len(shape))
        # torch.rand, not rand_like: rand_like follows x's strides (channels-last on CUDA), which
        # would hand each unit another random number than on the CPU.
        keep = torch.rand(shape, dtype=dtype, device=p.device) >= p
        mask = torch.where(keep, (1 / (1 - p)).to(dtype), 0)
        if self.recorded is not None:
            self.recorded.append(mask)
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.any_dropout:
            return x
        return masked(self.scaled_mask(x.shape, x.dtype), x)


def masked(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x times its dropout mask, x first: an elementwise result takes the memory order of its
    first operand, and x is channels-last on CUDA where the mask is drawn in the default order
    (a member's mask is even a strided slice of the group's)."""
    return x * mask


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """Member-major [K, N, C, ...] -> channel-stacked [N, K*C, ...]."""
    return x.transpose(0, 1).flatten(1, 2)


def to_members(x: torch.Tensor, k: int) -> torch.Tensor:
    """Channel-stacked [N, K*C, ...] -> member-major [K, N, C, ...]."""
    return x.unflatten(1, (k, -1)).transpose(0, 1)
