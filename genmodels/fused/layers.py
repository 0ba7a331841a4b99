"""Layers that hold K members' weights at once and run them as one operation (HFTA's idea).

Every parameter and buffer has the member dimension first (`[K, ...]`), so one member's slice is
`p[k]` everywhere: building a group from standalone modules, reading a member back out, and
checkpoints all index the same way. Two activation layouts are used, each where it is cheapest:

- member-major `[K, N, F]` for fully connected stacks: one batched matrix product (`baddbmm`);
- channel-stacked `[N, K * C, H, W]` for convolutions: one grouped convolution (`groups=K`), and
  BatchNorm over the K * C channels, so each member keeps its own batch statistics.

Convolutions run in one of four layouts (`CONV_LAYOUTS`), all exact:
- "grouped": one grouped call (`groups=K`), HFTA's choice;
- "per-member": K plain calls whose outputs are concatenated;
- "streams": the same K calls, side by side on CUDA streams (`genmodels.fused.streams`): one
  member's convolution at batch 128 is a few dozen thread blocks, far too few to fill a large GPU
  alone (on a CPU it is "per-member");
- "matmul": the convolution as one batched matrix product over the members: a strided view cuts
  the input into patches and one `einsum` multiplies each member's patches by its weights; a
  transposed convolution is first rewritten as a plain one (`conv_transpose2d_matmul`). The
  seed's convolutions have tiny outputs (7 x 7 down to 2 x 2), which cuDNN runs as many small
  kernels; as one product of K large matrices they fill the tensor cores.
PyTorch's grouped (transposed) convolutions ran slower than K separate calls both on the CPU here
(up to 2x) and on an H200 (2.3x fewer GAN trial-epochs per hour at K = 16); which layout the fused
GAN uses on each device is `genmodels.fused.tasks.default_conv_layout`, from bench/RESULTS.md.

The fused GAN has one more layout, for the whole network rather than one layer: "members"
(`genmodels.fused.gan`). Each member's activations stay its own dense tensors from layer to layer,
and each layer hands out member k's part as a plain function (`per_member()`: its weight slices,
its BatchNorm statistics, its dropout mask), so member k's whole network is one chain of standalone
calls, run on its own CUDA stream. Nothing is sliced out of a channel-stacked tensor or
concatenated back, the copies that were a fifth of a fused GAN step on an H200 (bench/RESULTS.md).

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

from genmodels.convs import add_channel_bias, conv2d, conv_output_size, conv_transpose2d
from genmodels.fused.streams import SideStreams, handed_tensors, side_streams_on


def stacked(tensors: list[torch.Tensor], shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Stack members' tensors into `[K, *shape]`, each copied into the leading corner of a zero
    block: padding rows/columns a smaller member lacks are exact zeros (no output, no gradient)."""
    shape = shape or tuple(tensors[0].shape)
    out = torch.zeros(len(tensors), *shape, dtype=tensors[0].dtype, device=tensors[0].device)
    for k, t in enumerate(tensors):
        out[(k, *(slice(0, n) for n in t.shape))] = t.detach()
    return out


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


CONV_LAYOUTS = ("grouped", "per-member", "streams", "matmul")


def check_conv_layout(layout: str) -> None:
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"conv layout must be one of {CONV_LAYOUTS}, got {layout!r}")


def conv2d_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride, padding) -> torch.Tensor:
    """K convolutions [N, K*C_in, H, W] -> [N, K*C_out, H', W'] as one batched matrix product:
    each output position is member k's weights [C_out, C_in*kh*kw] times the patch under it.
    The patches are a strided view (`Tensor.unfold`), which einsum gathers in one copy; F.unfold
    would launch one kernel per image on CUDA."""
    k, c_out, c_in, kh, kw = weight.shape
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    patches = padded.unfold(2, kh, stride[0]).unfold(3, kw, stride[1])  # [N, K*C_in, H', W', kh, kw]
    y = torch.einsum("koiyx,nkihwyx->nkohw", weight.to(patches.dtype),
                     patches.unflatten(1, (k, c_in)))
    return add_channel_bias(y.flatten(1, 2), bias)


def conv_transpose2d_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            stride, padding, output_padding) -> torch.Tensor:
    """K transposed convolutions [N, K*C_in, H, W] -> [N, K*C_out, H', W'], by the sub-pixel
    decomposition: output row s*m + a (a < stride) sums input rows m - t against kernel row
    s*t + a, so each of the stride x stride output phases is a plain stride-1 convolution with
    ceil(kernel / stride) taps. One `conv2d_matmul` computes all phases as stride^2 * C_out output
    channels, which are then interleaved (a pixel shuffle) and cropped by the padding."""
    k, c_in, c_out, kh, kw = weight.shape
    (sh, sw), n = stride, len(x)
    th, tw = -(-kh // sh), -(-kw // sw)  # taps per phase
    # Kernel row s*t + a (zero past the kernel) -> phase a, tap th-1-t (a correlation's order).
    phased = F.pad(weight, (0, sw * tw - kw, 0, sh * th - kh))
    phased = phased.view(k, c_in, c_out, th, sh, tw, sw).flip(3, 5)
    phased = phased.permute(0, 4, 6, 2, 1, 3, 5).reshape(k, sh * sw * c_out, c_in, th, tw)
    y = conv2d_matmul(x, phased, None, (1, 1), (th - 1, tw - 1))  # [N, K*sh*sw*C_out, h', w']
    h, w = y.shape[2:]
    canvas = y.view(n, k, sh, sw, c_out, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    canvas = canvas.reshape(n, k * c_out, h * sh, w * sw)  # row s*m + a <- phase a, row m
    out_h = (x.shape[2] - 1) * sh - 2 * padding[0] + kh + output_padding[0]
    out_w = (x.shape[3] - 1) * sw - 2 * padding[1] + kw + output_padding[1]
    if padding[0] + out_h > h * sh or padding[1] + out_w > w * sw:
        raise ValueError(f"output_padding {output_padding} larger than the padding {padding} "
                         "allows for this kernel and stride")
    y = canvas[:, :, padding[0]:padding[0] + out_h, padding[1]:padding[1] + out_w]
    return add_channel_bias(y, bias)


def member_conv(conv, weight: torch.Tensor, bias: torch.Tensor | None,
                memory_format: torch.memory_format, options: dict, x: torch.Tensor) -> torch.Tensor:
    """One member's convolution, its input first copied dense in `memory_format` (the copy a
    convolution makes of a strided slice anyway, done where the call runs: on its stream; none
    when the input is dense in that format already)."""
    return conv(x.contiguous(memory_format=memory_format), weight, bias, **options)


def conv_memory_format(device: torch.device) -> torch.memory_format:
    """What a member's convolution gets its input as. On CUDA channels-last (NHWC), the layout of
    cuDNN's tensor-core kernels: handed NCHW, cuDNN transposes every input and output of every
    call itself (17% of a fused GAN step's device time on an H200, bench/RESULTS.md). The outputs
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
    [K, C_out], the layout, and running the members as one grouped call or K calls."""

    def __init__(self, layers: list[nn.Conv2d] | list[nn.ConvTranspose2d], layout: str):
        super().__init__()
        check_conv_layout(layout)
        first = layers[0]
        self.layout = layout
        self.stride, self.padding = first.stride, first.padding
        self.weight = nn.Parameter(stacked([m.weight for m in layers]))
        self.bias = nn.Parameter(stacked([m.bias for m in layers])) if first.bias is not None else None
        self.side_streams: SideStreams | None = None  # "streams": made on the first call on a GPU

    def grouped_or_looped(self, conv, x: torch.Tensor, groups: int, **options) -> torch.Tensor:
        """`conv` (`genmodels.convs`' conv2d or conv_transpose2d) of the K members: one grouped
        call, or K calls ("per-member"; "streams": the K calls side by side on CUDA streams)."""
        if self.layout == "grouped" or groups == 1:
            flat_bias = None if self.bias is None else self.bias.flatten()
            weight = self.weight.flatten(0, 1)
            if self.layout == "grouped":
                # cuDNN's grouped kernels get the layout of its tensor cores too, as the K calls
                # do (its grouped NCHW fp32 calls ran 2.3-2.9x slower than K calls on an H200).
                fmt = conv_memory_format(x.device)
                x, weight = x.contiguous(memory_format=fmt), weight.contiguous(memory_format=fmt)
            return conv(x, weight, flat_bias, groups=groups, **options)
        # Each member's slice in `conv_memory_format`: on CUDA torch.cat keeps the outputs
        # channels-last, and so does everything after it.
        member_calls = self.member_calls(conv, **options)
        calls = [partial(call, xk) for call, xk in zip(member_calls, x.chunk(groups, dim=1))]
        if self.layout == "streams":
            self.side_streams = side_streams_on(self.side_streams, x.device)
            # Only the weights need marks (genmodels.fused.streams): a member's input slice is
            # read by its forward's copy alone (`member_conv`), and marking the channel-stacked
            # input would keep its memory from reuse inside a captured step.
            weights = [list(handed_tensors(call)) for call in member_calls]
            return torch.cat(self.side_streams.run(calls, marked=weights), dim=1)
        return torch.cat([call() for call in calls], dim=1)

    def member_calls(self, conv, **options) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Member k's convolution as a function of its own input [N, C_in, H, W] (see `per_member`)."""
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

    def __init__(self, layers: list[nn.Conv2d], layout: str = "grouped"):
        super().__init__(layers, layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.shape[1] // self.weight.shape[2]  # 1 for a shared input, K otherwise
        if self.layout == "matmul" and groups > 1:  # a shared input is one plain conv already
            return conv2d_matmul(x, self.weight, self.bias, self.stride, self.padding)
        return self.grouped_or_looped(conv2d, x, groups, stride=self.stride, padding=self.padding)

    def per_member(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return self.member_calls(conv2d, stride=self.stride, padding=self.padding)

    def output_size(self, size: int) -> int:
        """The side of the output map for an input map of side `size`."""
        return conv_output_size(size, self.weight.shape[-1], self.stride[0], self.padding[0])


class MemberConvTranspose2d(MemberConvs):
    """K transposed convolutions, weight [K, C_in, C_out, k, k]: [N, K*C_in, H, W] -> [N, K*C_out, ...]."""

    def __init__(self, layers: list[nn.ConvTranspose2d], layout: str = "grouped"):
        super().__init__(layers, layout)
        self.output_padding = layers[0].output_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "matmul":
            return conv_transpose2d_matmul(x, self.weight, self.bias, self.stride, self.padding,
                                           self.output_padding)
        return self.grouped_or_looped(conv_transpose2d, x, self.weight.shape[0], stride=self.stride,
                                      padding=self.padding, output_padding=self.output_padding)

    def per_member(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return self.member_calls(conv_transpose2d, stride=self.stride, padding=self.padding,
                                 output_padding=self.output_padding)


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

    def per_member(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Member k's BatchNorm as a function of its own input [N, C, ...]: its weights, and its
        running statistics updated in place, as in the channel-stacked call."""
        self.count_batch()
        return [partial(F.batch_norm, running_mean=self.running_mean[k], running_var=self.running_var[k],
                        weight=wk, bias=bk, training=self.training, momentum=self.momentum, eps=self.eps)
                for k, (wk, bk) in enumerate(zip(self.weight.unbind(0), self.bias.unbind(0)))]

    def count_batch(self) -> None:
        if self.training:
            self.num_batches_tracked.add_(1)  # as nn.BatchNorm counts (unused with a momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count_batch()
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
        self.any_dropout = bool((p > 0).any())
        self.recorded: list[torch.Tensor] | None = None

    def stacked_p(self, dims: int) -> torch.Tensor:
        """p broadcast against an activation with `dims` dimensions in this layer's layout."""
        if self.channels:
            return self.p.repeat_interleave(self.channels).view(1, -1, *[1] * (dims - 2))
        return self.p.view(-1, *[1] * (dims - 1))

    def scaled_mask(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """A fresh mask for an activation of `shape`: 1 / (1 - p) where kept, 0 where dropped."""
        p = self.stacked_p(len(shape))
        # torch.rand, not rand_like: rand_like follows x's strides, and the layouts leave x in
        # different memory orders, which would hand each unit another random number.
        keep = torch.rand(shape, dtype=dtype, device=p.device) >= p
        mask = torch.where(keep, (1 / (1 - p)).to(dtype), 0)
        if self.recorded is not None:
            self.recorded.append(mask)
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.any_dropout:
            return x
        return masked(self.scaled_mask(x.shape, x.dtype), x)

    def per_member(self, shape: tuple[int, ...], dtype: torch.dtype
                   ) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Member k's dropout as a function of its own input [N, channels, ...], for a layer
        whose channel-stacked activation would be `shape` ([N, K*channels, ...]) of `dtype`.
        The mask is drawn here, for all members at once: the random numbers `forward` would draw."""
        if not self.channels:
            raise ValueError("per-member dropout is for the channel-stacked layout (channels > 0)")
        count = len(self.p)
        if not self.training or not self.any_dropout:
            return [nn.Identity()] * count
        masks = self.scaled_mask(shape, dtype).unflatten(1, (count, self.channels)).unbind(1)
        return [partial(masked, mask) for mask in masks]


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
