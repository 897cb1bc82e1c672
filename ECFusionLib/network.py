"""The ECFusion network (Luo et al., Sci. Rep. 2025), as fixed by ../shared/design/ecfusion-architecture.md.

Inputs are two single-channel images in [-1, 1]:
    a: B x 1 x H x W  (CT, or the Y channel of PET/SPECT)
    b: B x 1 x H x W  (MRI)
Output: B x 1 x H x W in [-1, 1] (tanh).

Any H, W work: ``ECFusionNet.forward`` pads bottom/right to a multiple of 16 by reflection
(replicate where the image is too small to reflect) and crops the result back.
Parameter count: 919,975.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 16  # token patch size; H and W must be multiples of it inside the network
WIDTH = 16  # feature channels of the edge-augmented encoder
ARCHITECTURE = "ecfusion-v1"


def lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


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
    """FE block: modulates features F_in (B x 16 x H x W) with the edge map (B x 1 x H x W)."""

    def __init__(self, ch: int = WIDTH):
        super().__init__()
        self.edge_conv = nn.Conv2d(1, ch, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(ch, ch // 2, 1), nn.ReLU(), nn.Conv2d(ch // 2, ch, 1))
        self.act = lrelu()

    def forward(self, f_in: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        f_edge = self.act(self.edge_conv(edge))
        m_c = F.gelu(self.mlp(F.adaptive_max_pool2d(f_edge, 1)) + self.mlp(F.adaptive_avg_pool2d(f_edge, 1)))
        return f_in * (f_edge + m_c)  # = F_in * F_edge + F_in * M_c, one multiply fewer


class ResidualBlock(nn.Module):
    """x + FE(conv-LReLU-conv(x), edge); 5,080 parameters."""

    def __init__(self, ch: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), lrelu(), nn.Conv2d(ch, ch, 3, padding=1))
        self.fe = FeatureEnhancement(ch)

    def forward(self, x: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        return x + self.fe(self.body(x), edge)


class EdgeAugmentedModule(nn.Module):
    """EAM: head conv + 8 residual FE blocks; returns the taps after blocks 2, 4 and 8.

    x: B x 1 x H x W -> three tensors B x 16 x H x W. 40,800 parameters, shared by both inputs.
    """

    TAPS = (1, 3, 7)  # zero-based indices of blocks 2, 4, 8

    def __init__(self, ch: int = WIDTH, blocks: int = 8):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(1, ch, 3, padding=1), lrelu())
        self.blocks = nn.ModuleList(ResidualBlock(ch) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        edge = sobel_magnitude(x)
        f = self.head(x)
        taps = []
        for i, block in enumerate(self.blocks):
            f = block(f, edge)
            if i in self.TAPS:
                taps.append(f)
        return taps


class HCEL(nn.Module):
    """Hierarchical cross-scale embedding layer: four tokenisers on a shrinking pyramid.

    x: B x 16 x H x W -> (qk: B x N x 56, v: B x N x 32), N = (H/16)(W/16), row-major tokens.
    Kernel 16 everywhere, strides 16/8/4/2 with pads 0/4/6/7 keep all stages on one grid.
    """

    def __init__(self, ch: int = WIDTH, dims: tuple[int, ...] = (32, 8, 8, 8)):
        super().__init__()
        strides = (16, 8, 4, 2)
        self.tokenisers = nn.ModuleList(
            nn.Conv2d(ch, d, PATCH, stride=s, padding=(PATCH - s) // 2) for d, s in zip(dims, strides)
        )
        self.downsample = nn.ModuleList(nn.Conv2d(ch, ch, 3, stride=2, padding=1) for _ in range(len(dims) - 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Always fp32, also under bf16 autocast: the 16x16 tokenisers sum 4,096 products per output, and in
        # bf16 the attention built on them moved the fused image by 8.4 grey levels on average (PET-MRI
        # bundled weights; 0.18 with this module in fp32). It is ~1 % of the FLOPs.
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
    """Learnable scalar bias per (d_row, d_col) offset, clipped to +-(grid-1) of the 16x16 training grid."""

    def __init__(self, grid: int = 16):
        super().__init__()
        self.grid = grid
        self.table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2))
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}
        self._bias_key: tuple | None = None
        self._bias: torch.Tensor | None = None

    def index(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._cache:
            rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            rows, cols = rows.flatten(), cols.flatten()
            g = self.grid - 1
            dr = (rows[:, None] - rows[None, :]).clamp(-g, g) + g
            dc = (cols[:, None] - cols[None, :]).clamp(-g, g) + g
            self._cache[key] = (dr * (2 * g + 1) + dc).to(device)
        return self._cache[key]

    def forward(self, h: int, w: int) -> torch.Tensor:
        """Returns the N x N bias for an h x w token grid.

        Without autograd the gathered bias of the last grid is kept (the gather is ~2 ms per call at
        512x512); it is rebuilt when the grid, the device or the table's values change.
        """
        if torch.is_grad_enabled():
            return self.table[self.index(h, w, self.table.device)]
        key = (h, w, str(self.table.device), self.table._version, id(self.table))
        if self._bias_key != key:
            self._bias = self.table[self.index(h, w, self.table.device)]
            self._bias_key = key
        return self._bias


class CrossAttention(nn.Module):
    """One direction of CSTF: queries from the other image, keys/values from this one.

    q: B x N x 56, k: B x N x 56, v: B x N x 32 -> B x N x 32 tokens. 5,809 parameters
    with the re-projection ``re`` (Linear 32->16) used by the caller.
    """

    def __init__(self, dim_qk: int = 56, dim_v: int = 32, out_ch: int = WIDTH):
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


class CSTF(nn.Module):
    """Cross-scale transformer fusion of one tap: (X, Y) each B x 16 x H x W -> B x 48 x H x W."""

    def __init__(self):
        super().__init__()
        self.hcel = HCEL()
        self.attn_x = CrossAttention()
        self.attn_y = CrossAttention()

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


class Decoder(nn.Module):
    """144 -> 72 -> 48 -> 24 -> 1 channels, 3x3 convs, LReLU between, tanh at the end."""

    def __init__(self, widths: tuple[int, ...] = (144, 72, 48, 24, 1)):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            layers.append(lrelu() if i < len(widths) - 2 else nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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


class ECFusionNet(nn.Module):
    """ECFusion: shared EAM encoder, three CSTF fusions of taps 2/4/8, convolutional decoder.

    forward(a, b): a, b B x 1 x H x W in [-1, 1] -> fused B x 1 x H x W in [-1, 1].
    """

    architecture = ARCHITECTURE

    def __init__(self):
        super().__init__()
        self.eam = EdgeAugmentedModule()
        self.cstf = nn.ModuleList(CSTF() for _ in EdgeAugmentedModule.TAPS)
        self.decoder = Decoder()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 1:
            raise ValueError(f"expected two B x 1 x H x W tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        a, (h, w) = pad_to_multiple(a)
        b, _ = pad_to_multiple(b)
        taps = self.eam(torch.cat([a, b]))  # shared EAM: one pass over both inputs (same result, fewer calls)
        fused = [cstf(*tap.chunk(2)) for cstf, tap in zip(self.cstf, taps)]
        return self.decoder(torch.cat(fused, dim=1))[..., :h, :w]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
