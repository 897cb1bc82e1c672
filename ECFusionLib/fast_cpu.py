"""Fused CPU kernels for inference: oneDNN convolutions with their epilogue, and layout helpers.

Building blocks of a network's CPU fast path (``network.ECFusionNet.cpu_runner`` puts them together, next to
the forward pass each piece mirrors). At 512x512 the element-wise passes over 16-channel maps cost more on
a CPU than the convolutions, so:
- a convolution followed by LeakyReLU/tanh is one oneDNN call with the activation fused
  (``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` uses on CPU; no compile step);
- a convolution followed by a multiply is one call with a binary post-op;
- weights are cast once (bf16 or fp32), not on every call as autocast does.
Without oneDNN (``torch.backends.mkldnn`` unavailable) the same code runs unfused ``F.conv2d`` calls.
All tensors here are B x C x H x W in channels-last memory layout unless said otherwise.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
ACTIVATIONS = ("none", "leaky_relu", "tanh")
LEAKY_SLOPE = 0.2  # the network's LeakyReLU slope (network.lrelu)


class FusedConv:
    """One conv layer's weights in the compute dtype + its fused epilogue (one of ``ACTIVATIONS``)."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, act: str = "none"):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{act}': use one of {ACTIVATIONS}")
        self.weight = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.act = act

    def __call__(self, x: torch.Tensor, mul: torch.Tensor | None = None) -> torch.Tensor:
        """x: B x Cin x H x W (channels_last) -> B x Cout x H x W; ``mul``: multiply the output by it (fused,
        instead of the activation)."""
        if _ONEDNN and mul is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, mul, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, "mul", None, None, [], None)
        if _ONEDNN:
            scalars = [LEAKY_SLOPE] if self.act == "leaky_relu" else []
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, self.act, scalars, "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if mul is not None:
            return y.mul_(mul)
        if self.act == "leaky_relu":
            return F.leaky_relu_(y, LEAKY_SLOPE)
        return torch.tanh_(y) if self.act == "tanh" else y


def channels_last(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Copy to ``dtype`` with channels-last strides, also for one channel (where ``.contiguous(channels_last)``
    keeps NCHW strides, and oneDNN then returns NCHW outputs that cost a reorder downstream)."""
    return torch.empty(x.shape, dtype=dtype, memory_format=torch.channels_last).copy_(x)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """B x C x H x W (channels_last) -> B x C mean over H, W, as a matrix product (a plain reduction over the
    strided H, W dims is ~4x slower here)."""
    b, c, h, w = x.shape
    weights = torch.full((1, h * w), 1.0 / (h * w), dtype=x.dtype)
    return torch.matmul(weights, x.permute(0, 2, 3, 1).reshape(b, h * w, c))[:, 0]


def add_per_channel_(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x (B x C x H x W, channels_last) += m (B x C x 1 x 1), in place. Done on a view 64 pixels wide
    (B x HW/64 x 64C): PyTorch's bf16 kernels vectorise poorly over an inner dimension of only 16 (measured
    2026-11-22 on the project's 2-core Xeon with AMX bf16, torch 2.13: 12 ms -> 1.3 ms at 2 x 16 x 512 x 512)."""
    b, c, h, w = x.shape
    if (h * w) % 64 or not x.is_contiguous(memory_format=torch.channels_last):
        return x.add_(m)
    x.permute(0, 2, 3, 1).view(b, -1, 64 * c).add_(m.view(b, 1, c).expand(b, 64, c).reshape(b, 1, 64 * c))
    return x


@functools.lru_cache(maxsize=16)
def bilinear_matrix(n_out: int, n_in: int, dtype: torch.dtype) -> torch.Tensor:
    """n_out x n_in weights of 1D linear interpolation with half-pixel centres (``align_corners=False``)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = src - i0
    u = torch.zeros(n_out, n_in, dtype=torch.float64)
    u[torch.arange(n_out), i0] += 1 - frac
    u[torch.arange(n_out), i1] += frac
    return u.to(dtype)


def upsample_bilinear(small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w x C (channels last, any float dtype) -> B x C x H x W (channels_last strides), equal to
    ``F.interpolate(bilinear, align_corners=False)`` done as two matrix products (3x faster here)."""
    b, h, w, _ = small.shape
    rows = bilinear_matrix(size[0], h, small.dtype)  # H x h
    cols = bilinear_matrix(size[1], w, small.dtype)  # W x w
    wide = torch.matmul(cols, small)  # B x h x W x C
    full = torch.matmul(rows, wide.reshape(b, h, -1))  # B x H x (W*C)
    return full.view(b, size[0], size[1], -1).permute(0, 3, 1, 2)


def conv1x1_as_linear(mlp: nn.Sequential) -> nn.Sequential:
    """A channel MLP of 1x1 convs (applied to a 1x1 map) as Linear layers on B x C vectors: same weights,
    without the ~0.2 ms oneDNN set-up per call. Other layers (activations) are kept; the copy is in eval mode."""
    layers = []
    for m in mlp:
        if isinstance(m, nn.Conv2d):
            lin = nn.Linear(m.in_channels, m.out_channels)
            lin.weight.data.copy_(m.weight.detach()[:, :, 0, 0])
            lin.bias.data.copy_(m.bias.detach())
            m = lin
        layers.append(m)
    return nn.Sequential(*layers).eval()
