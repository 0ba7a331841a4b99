"""`F.conv2d` and `F.conv_transpose2d`, with a faster way on a CPU for the two shapes of the seed's
GAN where oneDNN (PyTorch's CPU convolution library) is slow.

Forward + backward at batch 128 on a 2-core EPYC:
- D's last convolution, 256 -> 512 channels onto a 2 x 2 map: 355 ms in oneDNN, 150 ms as one
  matrix product of its unfolded patches (`F.unfold`);
- G's first transposed convolution, from a 1 x 1 input: 288 ms in oneDNN, 28 ms as what it is, a
  linear layer onto the part of the kernel that reaches the output.
A GAN training step on the CPU went from 2.01 to 1.24 s. Both ways compute the same sums in
another order. On a GPU every call goes to cuDNN unchanged.

`Conv2d` and `ConvTranspose2d` are the `nn` layers computed this way: same parameters, same state
dict, so checkpoints and the fused layers (`genmodels/fused/layers.py`) read them as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

SMALL_MAP = 4  # a CPU convolution onto this many output positions or fewer is a product of patches


def add_channel_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [N, C, H, W] plus a bias per channel (any shape of C numbers), in y's dtype (under
    autocast the bias stays fp32 while y is bf16), as F.conv2d adds it."""
    return y if bias is None else y + bias.reshape(1, -1, 1, 1).to(y.dtype)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """The side of a convolution's output map for an input map of side `size`."""
    return (size + 2 * padding - kernel) // stride + 1


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, groups: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding, groups=groups)."""
    if x.device.type == "cpu" and x.dim() == 4 and groups == 1:
        (kh, kw), (sh, sw), (ph, pw) = weight.shape[2:], _pair(stride), _pair(padding)
        out_h, out_w = conv_output_size(x.shape[2], kh, sh, ph), conv_output_size(x.shape[3], kw, sw, pw)
        if out_h * out_w <= SMALL_MAP:
            patches = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # [N, C_in*kh*kw, P]
            y = (weight.reshape(len(weight), -1) @ patches).view(len(x), -1, out_h, out_w)
            return add_channel_bias(y, bias)
    return F.conv2d(x, weight, bias, stride, padding, groups=groups)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride=1, padding=0, output_padding=0, groups: int = 1) -> torch.Tensor:
    """F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups)."""
    if x.device.type == "cpu" and x.dim() == 4 and x.shape[2:] == (1, 1) and groups == 1:
        # One input position: output (i, j) is the input times kernel tap (i + ph, j + pw), taps
        # past the kernel's edge (from output_padding) being zero; the stride never comes in.
        (kh, kw), (ph, pw), (oph, opw) = weight.shape[2:], _pair(padding), _pair(output_padding)
        out_h, out_w = kh - 2 * ph + oph, kw - 2 * pw + opw
        if out_h < 1 or out_w < 1:  # no output: F.conv_transpose2d says what is wrong
            return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups)
        taps = F.pad(weight, (0, max(0, pw + out_w - kw), 0, max(0, ph + out_h - kh)))
        taps = taps[:, :, ph:ph + out_h, pw:pw + out_w]  # [C_in, C_out, out_h, out_w]
        y = (x.flatten(1) @ taps.reshape(len(taps), -1)).view(len(x), -1, out_h, out_w)
        return add_channel_bias(y, bias)
    return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (zero padding, no dilation) computed by `conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (zero padding, no dilation, fixed output size) computed by
    `conv_transpose2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                self.output_padding, self.groups)
