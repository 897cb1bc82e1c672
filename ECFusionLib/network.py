"""The ECFusion network (Luo et al., Sci. Rep. 2025), as fixed by ../shared/design/ecfusion-architecture.md.

Inputs are two single-channel images in [-1, 1]:
    second:     B x 1 x H x W  (CT, or the Y channel of PET/SPECT)
    anatomical: B x 1 x H x W  (MRI)
Output: B x 1 x H x W in [-1, 1] (tanh).

Any H, W work: ``ECFusionNet.forward`` pads bottom/right to a multiple of 16 by reflection
(replicate where the image is too small to reflect) and crops the result back.
Parameter count: 919,975 (default widths).

The network owns its CPU inference path: each module that has one defines ``fused(dtype)``, right below its
``forward``, which returns a callable doing the same arithmetic with the fused kernels of ``fast_cpu`` (inference
only, weights cast once); ``ECFusionNet.cpu_runner(dtype)`` puts them together. The reference forward pass is
unchanged by it. Submodule paths (``eam.blocks.0.body.0.weight``, ...) are the weights-file format: named
properties (``conv1``, ``convs``) give the positional entries their meaning without changing those paths.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .fast_cpu import LEAKY_SLOPE, FusedConv, add_per_channel_, channels_last, conv1x1_as_linear, spatial_mean, upsample_bilinear
from .registry import register_model

ARCHITECTURE = "ecfusion-v1"
PATCH = 16  # token patch size; H and W must be multiples of it inside the network
WIDTH = 16  # feature channels of the edge-augmented encoder
BLOCKS = 8  # residual FE blocks of the encoder
TAPS = (1, 3, 7)  # zero-based encoder blocks whose outputs are fused (blocks 2, 4, 8)
TOKEN_DIMS = (32, 8, 8, 8)  # channels of the four HCEL tokenisers; query/key = their sum (56), value = the first
TOKEN_STRIDES = (16, 8, 4, 2)  # their strides (kernel PATCH, pad (PATCH - stride) / 2: one token grid)
POSITION_GRID = 16  # relative position bias: offsets clipped to +-(grid - 1), the 16x16 training grid
DECODER_WIDTHS = (72, 48, 24)  # hidden channels of the decoder (input 3 x WIDTH per tap, output 1)
COMBINE = 3  # CSTF outputs per tap: max, min, sum of the two attended feature maps
POSITION_CACHE = 8  # grids whose position index a RelativePositionBias keeps (bounded)


def lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


def sobel_magnitude(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Sobel gradient magnitude with replicate padding.

    x: B x 1 x H x W -> B x 1 x H x W, sqrt(gx^2 + gy^2 + eps) (not normalised).
    """
    gx, gy = sobel_xy(x)
    return torch.sqrt(gx * gx + gy * gy + eps)


def sobel_xy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives (gx, gy), each B x 1 x H x W, replicate padding 1.

    The 3x3 kernels (as ``F.conv2d`` cross-correlation) gx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and
    gy = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]], computed separably with slices (a 1-channel conv2d is
    ~10x slower on CPU).
    """
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    d = p[..., 2:] - p[..., :-2]  # horizontal difference, (H+2) x W
    s = p[..., :-2] + 2.0 * p[..., 1:-1] + p[..., 2:]  # horizontal smoothing, (H+2) x W
    gx = d[..., :-2, :] + 2.0 * d[..., 1:-1, :] + d[..., 2:, :]
    gy = s[..., :-2, :] - s[..., 2:, :]
    return gx, gy


class FeatureEnhancement(nn.Module):
    """FE block: modulates features F_in (B x C x H x W, C = ``ch``) with the edge map (B x 1 x H x W)."""

    def __init__(self, ch: int = WIDTH):
        super().__init__()
        self.edge_conv = nn.Conv2d(1, ch, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(ch, ch // 2, 1), nn.ReLU(), nn.Conv2d(ch // 2, ch, 1))
        self.act = lrelu()

    def forward(self, f_in: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        f_edge = self.act(self.edge_conv(edge))
        m_c = F.gelu(self.mlp(F.adaptive_max_pool2d(f_edge, 1)) + self.mlp(F.adaptive_avg_pool2d(f_edge, 1)))
        return f_in * (f_edge + m_c)  # = F_in * F_edge + F_in * M_c, one multiply fewer

    def mlp_as_linear(self) -> nn.Sequential:
        """The channel MLP as Linear layers on B x C vectors (same weights; for the fused path)."""
        return conv1x1_as_linear(self.mlp)


class ResidualBlock(nn.Module):
    """x + FE(conv1-LReLU-conv2(x), edge); 5,080 parameters at width 16."""

    def __init__(self, ch: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), lrelu(), nn.Conv2d(ch, ch, 3, padding=1))
        self.fe = FeatureEnhancement(ch)

    @property
    def conv1(self) -> nn.Conv2d:
        return self.body[0]

    @property
    def conv2(self) -> nn.Conv2d:
        return self.body[2]

    def forward(self, x: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        return x + self.fe(self.body(x), edge)

    def fused(self, dtype: torch.dtype) -> "FusedResidualBlock":
        return FusedResidualBlock(self, dtype)


class FusedResidualBlock:
    """``ResidualBlock.forward`` with fused kernels: f (B x C x H x W), edge (B x 1 x H x W), channels_last in
    the compute dtype -> B x C x H x W. The FE multiply is fused into conv2 (binary post-op); the per-channel
    gate M_c is added to F_edge in place. Both images' blocks run as one batch (B = 2 x slices)."""

    def __init__(self, block: ResidualBlock, dtype: torch.dtype):
        self.conv1 = FusedConv(block.conv1, dtype, "leaky_relu")
        self.conv2 = FusedConv(block.conv2, dtype)
        self.edge_conv = FusedConv(block.fe.edge_conv, dtype, "leaky_relu")
        self.mlp = block.fe.mlp_as_linear()

    def __call__(self, f: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        f_edge = self.edge_conv(edge)
        pooled = torch.cat([F.adaptive_max_pool2d(f_edge, 1).flatten(1), spatial_mean(f_edge)]).float()
        m = self.mlp(pooled)  # 2B x C, fp32 (tiny): max-pooled rows, then mean-pooled rows
        m_c = F.gelu(m[: len(f)] + m[len(f):])[:, :, None, None]
        gate = add_per_channel_(f_edge, m_c.to(f_edge.dtype))  # F_edge + M_c
        return self.conv2(self.conv1(f), mul=gate).add_(f)  # x + F_in * (F_edge + M_c)


class EdgeAugmentedModule(nn.Module):
    """EAM: head conv + 8 residual FE blocks; returns the taps after blocks 2, 4 and 8.

    x: B x 1 x H x W -> three tensors B x C x H x W (C = ``ch``). 40,800 parameters at width 16, shared by both
    inputs.
    """

    TAPS = TAPS

    def __init__(self, ch: int = WIDTH, blocks: int = BLOCKS):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(1, ch, 3, padding=1), lrelu())
        self.blocks = nn.ModuleList(ResidualBlock(ch) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_blocks(self.head(x), self.blocks, sobel_magnitude(x), self.TAPS)

    def fused(self, dtype: torch.dtype) -> "FusedEncoder":
        return FusedEncoder(self, dtype)


def run_blocks(f: torch.Tensor, blocks, edge: torch.Tensor, taps) -> list[torch.Tensor]:
    """The encoder's residual chain, shared by the reference and the fused path: f (B x C x H x W) through each
    block with the edge map (B x 1 x H x W); returns the outputs of the blocks whose index is in ``taps``."""
    out = []
    for i, block in enumerate(blocks):
        f = block(f, edge)
        if i in taps:
            out.append(f)
    return out


class FusedEncoder:
    """``EdgeAugmentedModule.forward`` with fused kernels, given the edge map: x, edge (B x 1 x H x W,
    channels_last, compute dtype) -> the taps (B x C x H x W)."""

    def __init__(self, eam: EdgeAugmentedModule, dtype: torch.dtype):
        self.head = FusedConv(eam.head[0], dtype, "leaky_relu")
        self.blocks = [block.fused(dtype) for block in eam.blocks]
        self.taps = eam.TAPS

    def __call__(self, x: torch.Tensor, edge: torch.Tensor) -> list[torch.Tensor]:
        return run_blocks(self.head(x), self.blocks, edge, self.taps)


class HCEL(nn.Module):
    """Hierarchical cross-scale embedding layer: four tokenisers on a shrinking pyramid.

    x: B x C x H x W -> (qk: B x N x sum(dims) (56), v: B x N x dims[0] (32)), N = (H/16)(W/16), row-major
    tokens. Kernel 16 everywhere, strides 16/8/4/2 with pads 0/4/6/7 keep all stages on one grid.
    """

    def __init__(self, ch: int = WIDTH, dims: tuple[int, ...] = TOKEN_DIMS, strides: tuple[int, ...] = TOKEN_STRIDES):
        super().__init__()
        self.tokenisers = nn.ModuleList(
            nn.Conv2d(ch, d, PATCH, stride=s, padding=(PATCH - s) // 2) for d, s in zip(dims, strides)
        )
        self.downsample = nn.ModuleList(nn.Conv2d(ch, ch, 3, stride=2, padding=1) for _ in range(len(dims) - 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Always fp32, also under bf16 autocast: the 16x16 tokenisers sum 4,096 products per output, and in
        # bf16 the attention built on them moved the fused image by 8.4 grey levels on average (PET-MRI
        # bundled weights; 0.18 with this module in fp32; measured 2026-11-22 on the project's 2-core Xeon). It is ~1 % of the FLOPs.
        with torch.autocast(x.device.type, enabled=False):
            return self._tokens(x.float())

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = []
        fea = x
        for i, tk in enumerate(self.tokenisers):
            if i > 0:
                fea = self.downsample[i - 1](fea)
            tokens.append(tk(fea).flatten(2).transpose(1, 2))  # B x N x d_i
        return torch.cat(tokens, dim=2), tokens[0]


class RelativePositionBias(nn.Module):
    """Learnable scalar bias per (d_row, d_col) offset, clipped to +-(grid-1) of the 16x16 training grid.

    Caches (bounded): the N x N int64 index of the last ``POSITION_CACHE`` grids (8 MB each for the 1,024 tokens
    of a 512x512 slice) and, without autograd, the gathered bias of the last grid.
    """

    def __init__(self, grid: int = POSITION_GRID):
        super().__init__()
        self.grid = grid
        self.table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2))
        self._cache: OrderedDict[tuple[int, int, str], torch.Tensor] = OrderedDict()
        self._bias_key: tuple | None = None
        self._bias: torch.Tensor | None = None

    def index(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The N x N (N = h w) index into ``table`` for an h x w token grid, on ``device``."""
        key = (h, w, str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        g = self.grid - 1
        dr = (rows[:, None] - rows[None, :]).clamp(-g, g) + g
        dc = (cols[:, None] - cols[None, :]).clamp(-g, g) + g
        self._cache[key] = (dr * (2 * g + 1) + dc).to(device)
        while len(self._cache) > POSITION_CACHE:
            self._cache.popitem(last=False)
        return self._cache[key]

    def traced_index(self, h, w) -> torch.Tensor:
        """``index`` from tensor operations only (h, w may be traced sizes), as exported to ONNX."""
        g = self.grid - 1
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        dr = (rows[:, None] - rows[None, :]).clamp(-g, g) + g
        dc = (cols[:, None] - cols[None, :]).clamp(-g, g) + g
        return dr * (2 * g + 1) + dc

    def forward(self, h: int, w: int) -> torch.Tensor:
        """Returns the N x N bias for an h x w token grid.

        Without autograd the gathered bias of the last grid is kept (the gather is ~2 ms per call at
        512x512); it is rebuilt when the grid, the device or the table's values change.
        """
        if torch.jit.is_tracing():  # ONNX export: the index computed in the graph, for any grid (onnx_export.py)
            return self.table[self.traced_index(h, w)]
        if torch.is_grad_enabled():
            return self.table[self.index(h, w, self.table.device)]
        key = (h, w, str(self.table.device), self.table._version, id(self.table))
        if self._bias_key != key:
            self._bias = self.table[self.index(h, w, self.table.device)]
            self._bias_key = key
        return self._bias


class CrossAttention(nn.Module):
    """One direction of CSTF: queries from the other image, keys/values from this one.

    q: B x N x 56, k: B x N x 56, v: B x N x 32 -> B x N x 32 tokens (default widths). 5,809 parameters
    with the re-projection ``re`` (Linear 32->16) used by the caller.
    """

    def __init__(self, dim_qk: int = sum(TOKEN_DIMS), dim_v: int = TOKEN_DIMS[0], out_ch: int = WIDTH):
        super().__init__()
        self.scale = 1.0 / math.sqrt(dim_qk)
        self.pos = RelativePositionBias()
        self.norm1 = nn.LayerNorm(dim_v)
        self.ffn = nn.Sequential(nn.Linear(dim_v, 2 * dim_v), nn.GELU(), nn.Linear(2 * dim_v, dim_v))
        self.norm2 = nn.LayerNorm(dim_v)
        self.re = nn.Linear(dim_v, out_ch)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        logits = torch.matmul(q, k.transpose(1, 2)) * self.scale + self.pos(*grid).to(q.dtype)
        a = torch.matmul(torch.softmax(logits, dim=-1), v)
        t = v + self.norm1(a)
        return t + self.norm2(self.ffn(t))

    def to_image(self, t: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """Re: tokens B x N x 32 -> B x 16 x H x W (linear per token, bilinear upsampling)."""
        b = t.shape[0]
        x = self.re(t).transpose(1, 2).reshape(b, -1, grid[0], grid[1])
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def to_image_fused(self, t: torch.Tensor, grid: tuple[int, int], size: tuple[int, int],
                       dtype: torch.dtype) -> torch.Tensor:
        """``to_image`` for the fused path: tokens B x N x 32 (fp32) -> B x 16 x H x W in ``dtype``, channels_last
        strides (the upsampling as two matrix products, ``fast_cpu.upsample_bilinear``)."""
        b = t.shape[0]
        small = self.re(t).reshape(b, grid[0], grid[1], -1).to(dtype)  # B x h x w x 16 (token order: rows)
        return upsample_bilinear(small, size)


class CSTF(nn.Module):
    """Cross-scale transformer fusion of one tap: (X, Y) each B x C x H x W -> B x 3C x H x W (max, min, sum)."""

    def __init__(self, ch: int = WIDTH, token_dims: tuple[int, ...] = TOKEN_DIMS):
        super().__init__()
        self.hcel = HCEL(ch, token_dims)
        self.attn_x = CrossAttention(sum(token_dims), token_dims[0], ch)
        self.attn_y = CrossAttention(sum(token_dims), token_dims[0], ch)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        grid = (size[0] // PATCH, size[1] // PATCH)
        qk, v = self.hcel(torch.cat([x, y]))  # shared weights: one pass over both inputs
        (qk_x, qk_y), (v_x, v_y) = qk.chunk(2), v.chunk(2)
        t_x = self.attn_x(qk_y, qk_x, v_x, grid)
        t_y = self.attn_y(qk_x, qk_y, v_y, grid)
        x2 = x * self.attn_x.to_image(t_x, grid, size)
        y2 = y * self.attn_y.to_image(t_y, grid, size)
        return torch.cat([torch.maximum(x2, y2), torch.minimum(x2, y2), x2 + y2], dim=1)

    def fused(self) -> "FusedCSTF":
        return FusedCSTF(self)


class FusedCSTF:
    """``CSTF.forward`` for the fused path: tap 2B x C x H x W (both images, compute dtype, channels_last) ->
    writes max, min (B x 2C x H x W) into ``out``; the reference's third part, the sum, is folded into the
    decoder's weights (``fold_sum_channels``). The token side (HCEL, cross-attention: ~1 % of the FLOPs) runs
    the reference modules in fp32, always: in bf16 it moved the fused image by 8 grey levels (``HCEL``)."""

    def __init__(self, cstf: CSTF):
        self.hcel, self.attn_x, self.attn_y = cstf.hcel, cstf.attn_x, cstf.attn_y

    def __call__(self, tap: torch.Tensor, out: torch.Tensor) -> None:
        size = (tap.shape[-2], tap.shape[-1])
        grid = (size[0] // PATCH, size[1] // PATCH)
        qk, v = self.hcel(tap)  # fp32 inside, whatever the input dtype
        (qk_x, qk_y), (v_x, v_y) = qk.chunk(2), v.chunk(2)
        x, y = tap.chunk(2)
        with torch.autocast("cpu", enabled=False):
            t_x = self.attn_x(qk_y, qk_x, v_x, grid)
            t_y = self.attn_y(qk_x, qk_y, v_y, grid)
        x2 = x * self.attn_x.to_image_fused(t_x, grid, size, tap.dtype)
        y2 = y * self.attn_y.to_image_fused(t_y, grid, size, tap.dtype)
        c = x.shape[1]
        torch.maximum(x2, y2, out=out[:, 0:c])
        torch.minimum(x2, y2, out=out[:, c:2 * c])


class Decoder(nn.Module):
    """144 -> 72 -> 48 -> 24 -> 1 channels (default widths), 3x3 convs, LReLU between, tanh at the end."""

    def __init__(self, widths: tuple[int, ...] = (COMBINE * len(TAPS) * WIDTH, *DECODER_WIDTHS, 1)):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            layers.append(lrelu() if i < len(widths) - 2 else nn.Tanh())
        self.net = nn.Sequential(*layers)

    @property
    def convs(self) -> list[nn.Conv2d]:
        """The convolutions, input first (each followed by LReLU, the last by tanh)."""
        return [m for m in self.net if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def fused(self, dtype: torch.dtype, group: int) -> list[FusedConv]:
        """The decoder as fused convs, its first conv reading [max, min] per tap (``fold_sum_channels``, ``group``
        = the channels of one tap's [max, min, sum])."""
        convs = self.convs
        return ([FusedConv(fold_sum_channels(convs[0], group), dtype, "leaky_relu")]
                + [FusedConv(c, dtype, "leaky_relu") for c in convs[1:-1]] + [FusedConv(convs[-1], dtype, "tanh")])


def fold_sum_channels(conv: nn.Conv2d, group: int = COMBINE * WIDTH) -> nn.Conv2d:
    """The decoder's first conv reads, per CSTF, [max(x2, y2), min(x2, y2), x2 + y2] (``group`` = 3C channels).
    Since x2 + y2 = max + min, conv(.., W) = conv([max, min], [W_max + W_sum, W_min + W_sum]): the same result
    (exact in real arithmetic) from 2/3 of the input channels (a third fewer FLOPs in the largest layer)."""
    w = conv.weight.detach()  # out x (taps * group) x 3 x 3
    c = group // COMBINE
    parts = []
    for i in range(w.shape[1] // group):
        w_max, w_min, w_sum = (w[:, group * i + k * c: group * i + (k + 1) * c] for k in range(COMBINE))
        parts += [w_max + w_sum, w_min + w_sum]
    folded = nn.Conv2d(w.shape[1] * 2 // 3, w.shape[0], conv.kernel_size, padding=conv.padding)
    folded.weight.data.copy_(torch.cat(parts, dim=1))
    folded.bias.data.copy_(conv.bias.detach())
    return folded


def pad_to_multiple(x: torch.Tensor, multiple: int = PATCH) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad B x C x H x W bottom/right to multiples of ``multiple``.

    Reflection where the pad is smaller than the image side, replicate otherwise (never a
    constant: that would add false Sobel edges). Returns the padded tensor and the original (H, W).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


@register_model(ARCHITECTURE)
class ECFusionNet(nn.Module):
    """ECFusion (Luo et al. 2025): edge-augmented encoder, cross-scale transformer fusion, conv decoder.

    forward(second, anatomical): each B x 1 x H x W in [-1, 1] -> fused B x 1 x H x W in [-1, 1].
    Shared EAM encoder, three CSTF fusions of taps 2/4/8, convolutional decoder.

    Args:
        width: feature channels of the encoder (16).
        blocks: residual FE blocks of the encoder (8; ``TAPS`` must lie within).
        token_dims: channels of the four HCEL tokenisers (32, 8, 8, 8).
        decoder_widths: hidden channels of the decoder (72, 48, 24).
    """

    pad_multiple = PATCH  # ``forward_padded`` takes H, W multiples of this

    def __init__(self, width: int = WIDTH, blocks: int = BLOCKS, token_dims: tuple[int, ...] = TOKEN_DIMS,
                 decoder_widths: tuple[int, ...] = DECODER_WIDTHS):
        super().__init__()
        self.config = {"width": int(width), "blocks": int(blocks), "token_dims": [int(d) for d in token_dims],
                       "decoder_widths": [int(d) for d in decoder_widths]}
        self.eam = EdgeAugmentedModule(width, blocks)
        self.cstf = nn.ModuleList(CSTF(width, tuple(token_dims)) for _ in EdgeAugmentedModule.TAPS)
        self.decoder = Decoder((COMBINE * len(TAPS) * width, *decoder_widths, 1))

    def forward(self, second: torch.Tensor, anatomical: torch.Tensor) -> torch.Tensor:
        if second.shape != anatomical.shape or second.dim() != 4 or second.shape[1] != 1:
            raise ValueError(f"expected two B x 1 x H x W tensors of one shape, got {tuple(second.shape)} and "
                             f"{tuple(anatomical.shape)}")
        a, (h, w) = pad_to_multiple(second)
        b, _ = pad_to_multiple(anatomical)
        taps = self.eam(torch.cat([a, b]))  # shared EAM: one pass over both inputs (same result, fewer calls)
        fused = [cstf(*tap.chunk(2)) for cstf, tap in zip(self.cstf, taps)]
        return self.decoder(torch.cat(fused, dim=1))[..., :h, :w]

    def forward_padded(self, second: torch.Tensor, anatomical: torch.Tensor) -> torch.Tensor:
        """``forward`` for H, W already multiples of ``PATCH`` (no pad, no crop): the graph exported to ONNX,
        whose runner pads as ``pad_to_multiple`` does (``onnx_backend``)."""
        taps = self.eam(torch.cat([second, anatomical]))
        fused = [cstf(*tap.chunk(2)) for cstf, tap in zip(self.cstf, taps)]
        return self.decoder(torch.cat(fused, dim=1))

    def cpu_runner(self, dtype: torch.dtype = torch.float32) -> "FusedECFusion":
        """This network's CPU inference path (``FusedECFusion``); the model is read, not modified."""
        return FusedECFusion(self, dtype)


class FusedECFusion:
    """``ECFusionNet.forward`` on fused CPU kernels, callable like the model: (second, anatomical) B x 1 x H x W
    in [-1, 1] (fp32) -> fused B x 1 x H x W fp32. Inference only.

    Same parameters and arithmetic as the reference, reorganised for a CPU: fused conv + activation/multiply
    kernels (``FusedResidualBlock``), weights cast once, the three CSTF outputs written straight into the
    decoder's input (no ``torch.cat``) and the decoder's first conv reading 2/3 of the channels
    (``fold_sum_channels``). ``dtype`` torch.float32 or torch.bfloat16 (needs a CPU with native bf16 to be
    fast). Holds references to ``model``'s token-side modules: use a model that is not trained meanwhile.
    """

    def __init__(self, model: ECFusionNet, dtype: torch.dtype = torch.float32):
        if model.training:
            raise ValueError("the fused CPU path is for inference: call model.eval() (or use engine.make_runner)")
        self.dtype = dtype
        self.width = model.eam.head[0].out_channels
        self.encoder = model.eam.fused(dtype)
        self.cstf = [c.fused() for c in model.cstf]
        self.decoder = model.decoder.fused(dtype, COMBINE * self.width)

    def __call__(self, second: torch.Tensor, anatomical: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            a, (h, w) = pad_to_multiple(second)
            b, _ = pad_to_multiple(anatomical)
            x = torch.cat([a, b]).float()  # 2B x 1 x H x W
            edge = channels_last(sobel_magnitude(x), self.dtype)  # fp32 Sobel (one channel: cheap)
            taps = self.encoder(channels_last(x, self.dtype), edge)
            n = a.shape[0]
            size = (x.shape[-2], x.shape[-1])
            dec_in = torch.empty((n, 2 * self.width * len(taps), *size), dtype=self.dtype,
                                 memory_format=torch.channels_last)
            for i, (cstf, tap) in enumerate(zip(self.cstf, taps)):
                cstf(tap, dec_in[:, 2 * self.width * i: 2 * self.width * (i + 1)])
            f = dec_in
            for conv in self.decoder:
                f = conv(f)
            return f[..., :h, :w].float()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
