"""The CPU inference path: ECFusionNet's forward pass with fused oneDNN kernels and bf16 weights.

Same parameters, same arithmetic as ``ECFusionNet.forward`` (the reference), reorganised for a CPU, where
at 512x512 the element-wise passes over the 16-channel maps cost more than the convolutions:
- every convolution followed by LeakyReLU/tanh is one oneDNN call with the activation fused
  (``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` uses on CPU; no compile step);
- in each residual block the FE multiply is fused into the second convolution (binary post-op);
- the three CSTF outputs are written straight into the decoder's input (no ``torch.cat``), and the
  decoder's first conv reads 96 channels, not 144: the x2 + y2 third equals max + min and is folded into
  its weights (exact in real arithmetic);
- weights are cast once (bf16 or fp32), not on every call as autocast does.
The token side of CSTF (HCEL, cross-attention: ~1 % of the FLOPs) runs the reference modules in fp32,
always: in bf16 it moved the fused image by 8 grey levels (see ``network.HCEL``).

Without oneDNN (``torch.backends.mkldnn`` unavailable) the same code runs unfused ``F.conv2d`` calls.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .network import PATCH, ECFusionNet, pad_to_multiple, sobel_magnitude

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class _Conv:
    """One conv layer's weights in the compute dtype + its fused epilogue ('none', 'leaky_relu', 'tanh')."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, act: str = "none"):
        self.weight = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.act = act

    def __call__(self, x: torch.Tensor, mul: torch.Tensor | None = None) -> torch.Tensor:
        """x: B x Cin x H x W (channels_last) -> B x Cout x H x W; ``mul``: multiply the output by it (fused)."""
        if _ONEDNN and mul is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, mul, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, "mul", None, None, [], None)
        if _ONEDNN:
            scalars = [0.2] if self.act == "leaky_relu" else []
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, self.act, scalars, "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if mul is not None:
            return y.mul_(mul)
        if self.act == "leaky_relu":
            return F.leaky_relu_(y, 0.2)
        return torch.tanh_(y) if self.act == "tanh" else y


def _channels_last(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Copy to ``dtype`` with channels-last strides, also for one channel (where ``.contiguous(channels_last)``
    keeps NCHW strides, and oneDNN then returns NCHW outputs that cost a reorder downstream)."""
    return torch.empty(x.shape, dtype=dtype, memory_format=torch.channels_last).copy_(x)


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """B x C x H x W (channels_last) -> B x C mean over H, W, as a matrix product (a plain reduction over the
    strided H, W dims is ~4x slower here)."""
    b, c, h, w = x.shape
    weights = torch.full((1, h * w), 1.0 / (h * w), dtype=x.dtype)
    return torch.matmul(weights, x.permute(0, 2, 3, 1).reshape(b, h * w, c))[:, 0]


def _add_per_channel_(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x (B x C x H x W, channels_last) += m (B x C x 1 x 1), in place. Done on a view 64 pixels wide
    (B x HW/64 x 64C): PyTorch's bf16 kernels vectorise poorly over an inner dimension of only 16 (12 ms ->
    1.3 ms at 2 x 16 x 512 x 512)."""
    b, c, h, w = x.shape
    if (h * w) % 64 or not x.is_contiguous(memory_format=torch.channels_last):
        return x.add_(m)
    x.permute(0, 2, 3, 1).view(b, -1, 64 * c).add_(m.view(b, 1, c).expand(b, 64, c).reshape(b, 1, 64 * c))
    return x


@functools.lru_cache(maxsize=16)
def _bilinear_matrix(n_out: int, n_in: int, dtype: torch.dtype) -> torch.Tensor:
    """n_out x n_in weights of 1D linear interpolation with half-pixel centres (``align_corners=False``)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = src - i0
    u = torch.zeros(n_out, n_in, dtype=torch.float64)
    u[torch.arange(n_out), i0] += 1 - frac
    u[torch.arange(n_out), i1] += frac
    return u.to(dtype)


def _fold_sum_channels(conv: nn.Conv2d) -> nn.Conv2d:
    """The decoder's first conv reads, per CSTF, [max(x2, y2), min(x2, y2), x2 + y2] (48 channels each).
    Since x2 + y2 = max + min, conv(.., W) = conv([max, min], [W_max + W_sum, W_min + W_sum]): the same
    result from 96 input channels instead of 144 (a third fewer FLOPs in the largest layer, one pass less)."""
    w = conv.weight.detach()  # 72 x 144 x 3 x 3
    parts = []
    for i in range(w.shape[1] // 48):
        w_max, w_min, w_sum = w[:, 48 * i: 48 * i + 16], w[:, 48 * i + 16: 48 * i + 32], w[:, 48 * i + 32: 48 * i + 48]
        parts += [w_max + w_sum, w_min + w_sum]
    folded = nn.Conv2d(w.shape[1] * 2 // 3, w.shape[0], conv.kernel_size, padding=conv.padding)
    folded.weight.data.copy_(torch.cat(parts, dim=1))
    folded.bias.data.copy_(conv.bias.detach())
    return folded


def _mlp_as_linear(mlp: nn.Sequential) -> nn.Sequential:
    """FE's channel MLP (1x1 convs on a 1x1 map) as Linear layers on B x C vectors: same weights, without
    the ~0.2 ms oneDNN set-up per call."""
    layers = []
    for m in mlp:
        if isinstance(m, nn.Conv2d):
            lin = nn.Linear(m.in_channels, m.out_channels)
            lin.weight.data.copy_(m.weight.detach()[:, :, 0, 0])
            lin.bias.data.copy_(m.bias.detach())
            m = lin
        layers.append(m)
    return nn.Sequential(*layers).eval()


class FastCPUNet:
    """Callable like the model: (a, b) B x 1 x H x W in [-1, 1] (fp32) -> fused B x 1 x H x W fp32.

    ``dtype`` torch.float32 or torch.bfloat16 (needs a CPU with native bf16 to be fast). Inference only.
    """

    def __init__(self, model: ECFusionNet, dtype: torch.dtype = torch.float32):
        model = model.eval()
        self.model, self.dtype = model, dtype
        eam = model.eam
        self.head = _Conv(eam.head[0], dtype, "leaky_relu")
        self.blocks = [
            (_Conv(b.body[0], dtype, "leaky_relu"), _Conv(b.body[2], dtype), _Conv(b.fe.edge_conv, dtype, "leaky_relu"),
             _mlp_as_linear(b.fe.mlp))
            for b in eam.blocks
        ]
        self.taps = eam.TAPS
        dec = [m for m in model.decoder.net if isinstance(m, nn.Conv2d)]
        self.decoder = ([_Conv(_fold_sum_channels(dec[0]), dtype, "leaky_relu")]
                        + [_Conv(c, dtype, "leaky_relu") for c in dec[1:-1]] + [_Conv(dec[-1], dtype, "tanh")])

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            a, (h, w) = pad_to_multiple(a)
            b, _ = pad_to_multiple(b)
            x = torch.cat([a, b]).float()  # 2B x 1 x H x W
            edge = _channels_last(sobel_magnitude(x), self.dtype)  # fp32 Sobel (one channel: cheap)
            taps = self._encoder(_channels_last(x, self.dtype), edge)
            n = a.shape[0]
            size = (x.shape[-2], x.shape[-1])
            dec_in = torch.empty((n, 32 * len(taps), *size), dtype=self.dtype,
                                 memory_format=torch.channels_last)
            for i, (cstf, tap) in enumerate(zip(self.model.cstf, taps)):
                self._cstf(cstf, tap, dec_in[:, 32 * i: 32 * (i + 1)])
            f = dec_in
            for conv in self.decoder:
                f = conv(f)
            return f[..., :h, :w].float()

    def _encoder(self, x: torch.Tensor, edge: torch.Tensor) -> list[torch.Tensor]:
        """EAM on both images at once: 2B x 1 x H x W -> taps after blocks 2, 4, 8 (2B x 16 x H x W)."""
        f = self.head(x)
        taps = []
        for i, (conv1, conv2, edge_conv, mlp) in enumerate(self.blocks):
            f_edge = edge_conv(edge)
            pooled = torch.cat([F.adaptive_max_pool2d(f_edge, 1).flatten(1), _spatial_mean(f_edge)]).float()
            m = mlp(pooled)  # 4B x 16, fp32 (tiny)
            m_c = F.gelu(m[: len(f)] + m[len(f):])[:, :, None, None]
            gate = _add_per_channel_(f_edge, m_c.to(f_edge.dtype))  # F_edge + M_c
            f = conv2(conv1(f), mul=gate).add_(f)  # x + F_in * (F_edge + M_c)
            if i in self.taps:
                taps.append(f)
        return taps

    def _cstf(self, cstf, tap: torch.Tensor, out: torch.Tensor) -> None:
        """One CSTF: tap 2B x 16 x H x W (both images) -> writes max, min (B x 32 x H x W) into ``out``; the
        reference's third part, the sum, is folded into the decoder's weights (``_fold_sum_channels``)."""
        size = (tap.shape[-2], tap.shape[-1])
        grid = (size[0] // PATCH, size[1] // PATCH)
        qk, v = cstf.hcel(tap)  # fp32 inside, whatever the input dtype
        (qk_x, qk_y), (v_x, v_y) = qk.chunk(2), v.chunk(2)
        x, y = tap.chunk(2)
        with torch.autocast("cpu", enabled=False):
            t_x = cstf.attn_x(qk_y, qk_x, v_x, grid)
            t_y = cstf.attn_y(qk_x, qk_y, v_y, grid)
        x2 = x * self._to_image(cstf.attn_x, t_x, grid, size)
        y2 = y * self._to_image(cstf.attn_y, t_y, grid, size)
        torch.maximum(x2, y2, out=out[:, 0:16])
        torch.minimum(x2, y2, out=out[:, 16:32])

    def _to_image(self, attn, t: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """Tokens B x N x 32 (fp32) -> B x 16 x H x W in the compute dtype, channels_last (re-projection, then
        ``F.interpolate(bilinear, align_corners=False)`` done as two matrix products: 3x faster here)."""
        b = t.shape[0]
        small = attn.re(t).reshape(b, grid[0], grid[1], -1).to(self.dtype)  # B x h x w x 16 (token order: rows)
        rows = _bilinear_matrix(size[0], grid[0], self.dtype)  # H x h
        cols = _bilinear_matrix(size[1], grid[1], self.dtype)  # W x w
        wide = torch.matmul(cols, small)  # B x h x W x 16
        full = torch.matmul(rows, wide.reshape(b, grid[0], -1))  # B x H x (W*16)
        return full.view(b, size[0], size[1], -1).permute(0, 3, 1, 2)
