"""The training loss: Sobel-gradient term plus optional intensity, SSIM, salient and VGG19 perceptual terms,
configured by a ``LossConfig`` (``training.TrainConfig`` extends it, so a run's loss settings are its own fields).

Loss = L_grad + w_int * L1(F, max(A, B)) + w_ssim * L_ssim + w_sal * L_salient + lambda * L_perceptual
  L_grad: MSE between the Sobel magnitude of F and the elementwise max of those of A and B.
  L_ssim: 1 - SSIM(F, reference); the reference per pixel is both sources averaged (``mean``, the default), the
    source F is closer to (``max``), or the source with the larger local variance (``variance``: the MRI's
    texture is not copied where the CT / PET is the structured one, e.g. the CT's bone edge).
  L_salient: mean over pixels of w * |F - A|, w = ``salient.salient_mask`` of the task (the keep-salient rule's
    own thresholds: CT bright and MRI dark; the top range of the PET/SPECT Y): the network itself learns to keep
    the salient source (solid skull, hot uptake) instead of leaving it to the rule after the network.
  L_perceptual: VGG19 (torchvision layout, weights from a file) at feature indices 2/7/16/25/34.
Tensors are B x 1 x H x W in [-1, 1]: A the second image (CT, or the Y of PET/SPECT), B the MRI, F the fused image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ECFusionError
from .network import sobel_xy
from .salient import salient_mask, task_thresholds

SSIM_REFERENCES = ("mean", "max", "variance")
GRADIENT_NORMS = ("l1", "l2")


@dataclass(kw_only=True)
class LossConfig:
    """The loss terms' weights and options (a weight of 0 switches a term off).

    Attributes:
        task: the fusion task (the salient term's thresholds come from its TaskSpec).
        grad_weight, intensity_weight, ssim_weight, salient_weight, perceptual_weight: the terms' weights (>= 0).
        ssim_reference: the SSIM term's reference per pixel, one of ``SSIM_REFERENCES``.
        salient_threshold, salient_dark: override the task's keep-salient thresholds (0-255); None: the task's.
        vgg_weights: torchvision's vgg19-dcbbabfd.pth, needed when ``perceptual_weight`` > 0.
        grad_norm: "l1": |gx|+|gy| (the prototype), "l2": sqrt(gx^2+gy^2).
    """

    task: str | None = None
    grad_weight: float = 1.0
    intensity_weight: float = 0.0
    ssim_weight: float = 0.0
    ssim_reference: str = "mean"
    salient_weight: float = 0.0
    salient_threshold: float | None = None
    salient_dark: float | None = None
    perceptual_weight: float = 0.0
    vgg_weights: str | None = None
    grad_norm: str = "l1"


def gradient_map(x: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    gx, gy = sobel_xy(x)
    return gx.abs() + gy.abs() if norm == "l1" else torch.sqrt(gx * gx + gy * gy + 1e-6)


class VGG19Features(nn.Module):
    """VGG19 convolutional trunk in torchvision's ``features`` layout (indices match its state_dict)."""

    CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
    TAPS = {2: 1 / 16, 7: 1 / 16, 16: 1 / 8, 25: 1 / 4, 34: 1 / 2}

    def __init__(self, weights_path: str):
        super().__init__()
        layers, cin = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        path = Path(weights_path)
        if not path.is_file():
            raise ECFusionError(f"VGG19 weights file not found: {path} (torchvision's vgg19-dcbbabfd.pth)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict(state)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        x = ((x + 1) / 2).repeat(1, 3, 1, 1)
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append((self.TAPS[i], x))
            if i >= max(self.TAPS):
                break
        return out


def _ssim_window(x: torch.Tensor) -> torch.Tensor:
    g = torch.exp(-((torch.arange(11, dtype=x.dtype, device=x.device) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def local_variance(x: torch.Tensor) -> torch.Tensor:
    """Variance of a B x 1 x H x W image in [-1, 1] (on the [0, 1] range) in the SSIM window, 'valid' like ``ssim_map``."""
    win = _ssim_window(x)
    x = (x + 1) / 2
    mx = F.conv2d(x, win)
    return F.conv2d(x * x, win) - mx * mx


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map of two B x 1 x H x W images in [-1, 1], as the SSIM metric: Gaussian 11x11 window, sigma 1.5,
    K1 0.01, K2 0.03 on the [0, 1] range; 'valid' windows only -> B x 1 x (H-10) x (W-10)."""
    win = _ssim_window(x)
    x, y = (x + 1) / 2, (y + 1) / 2
    mx, my = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mx * mx
    syy = F.conv2d(y * y, win) - my * my
    sxy = F.conv2d(x * y, win) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


class FusionLoss(nn.Module):
    """The training loss of a LossConfig: ``loss(a, b, f)`` -> {term name: scalar tensor, ..., "total": weighted sum}
    for B x 1 x H x W tensors in [-1, 1] (a: the second image / Y, b: the MRI, f: the fused image)."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.vgg = None
        if cfg.perceptual_weight > 0:
            if not cfg.vgg_weights:
                raise ECFusionError(
                    "a perceptual loss weight > 0 needs ImageNet VGG19 weights: pass --vgg-weights PATH "
                    "(torchvision's vgg19-dcbbabfd.pth), or set --perceptual-weight 0"
                )
            self.vgg = VGG19Features(cfg.vgg_weights)
        self.salient = None
        if cfg.salient_weight > 0:
            threshold, dark = task_thresholds(cfg.task, cfg.salient_threshold, cfg.salient_dark)
            if threshold is None:
                raise ECFusionError(f"--salient-weight: {cfg.task} has no salient threshold; give --salient-threshold")
            self.salient = (threshold, dark)

    def salient_term(self, a, b, f) -> torch.Tensor:
        """mean(w * |F - A|) with w the keep-salient rule's mask on A (CT / functional Y) and B (MRI), 0-255."""
        threshold, dark = self.salient
        with torch.no_grad():
            w = salient_mask((a + 1) * 127.5, (b + 1) * 127.5, threshold=threshold, dark=dark)
        return (w * (f - a).abs()).mean()

    def ssim_term(self, a, b, f) -> torch.Tensor:
        sa, sb = ssim_map(f, a), ssim_map(f, b)
        ref = self.cfg.ssim_reference
        if ref == "max":
            s = torch.maximum(sa, sb)
        elif ref == "variance":
            with torch.no_grad():
                pick_a = local_variance(a) >= local_variance(b)
            s = torch.where(pick_a, sa, sb)
        else:
            s = 0.5 * (sa + sb)
        return 1.0 - s.mean()

    def forward(self, a, b, f) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        target = torch.maximum(gradient_map(a, cfg.grad_norm), gradient_map(b, cfg.grad_norm))
        terms = {"grad": F.mse_loss(gradient_map(f, cfg.grad_norm), target)}
        total = cfg.grad_weight * terms["grad"]
        if cfg.intensity_weight > 0:
            terms["int"] = F.l1_loss(f, torch.maximum(a, b))
            total = total + cfg.intensity_weight * terms["int"]
        if cfg.ssim_weight > 0:
            terms["ssim"] = self.ssim_term(a, b, f)
            total = total + cfg.ssim_weight * terms["ssim"]
        if self.salient is not None:
            terms["salient"] = self.salient_term(a, b, f)
            total = total + cfg.salient_weight * terms["salient"]
        if self.vgg is not None:
            pf, pa, pb = self.vgg(f), self.vgg(a), self.vgg(b)
            perc = sum(w * (F.mse_loss(xf, xa) + F.mse_loss(xf, xb)) for (w, xf), (_, xa), (_, xb) in zip(pf, pa, pb))
            terms["perc"] = perc
            total = total + cfg.perceptual_weight * perc
        terms["total"] = total
        return terms
