"""Training ECFusion on 2D pairs: the paper's preprocessing, gradient (+ intensity / perceptual) loss,
checkpoints every epoch with resume, validation of whole held-out cases with the fusion metrics.

Patches: each 256x256 image gives 9 overlapping 128x128 patches (stride 64). Each patch has a 50 %
chance of a random 64x64 square set to black or white, on ONE of the two images (chosen at random):
content present in only one source is what the network must learn to carry into the fused image.
``upsample=True`` (the paper) shows patches at 256x256 (nearest); ``False`` (the reduced CPU schedule)
trains on the 128x128 patches directly. Values are in [-1, 1].

Loss = L_grad + w_int * L1(F, max(A, B)) + w_ssim * L_ssim + w_sal * L_salient + lambda * L_perceptual
  L_grad: MSE between the Sobel magnitude of F and the elementwise max of those of A and B.
  L_ssim: 1 - SSIM(F, reference); the reference per pixel is both sources averaged (``mean``, the default), the
    source F is closer to (``max``), or the source with the larger local variance (``variance``: the MRI's
    texture is not copied where the CT / PET is the structured one, e.g. the CT's bone edge).
  L_salient: mean over pixels of w * |F - A|, w = ``salient.salient_mask`` of the task (the keep-salient rule's
    own thresholds: CT bright and MRI dark; the top range of the PET/SPECT Y): the network itself learns to keep
    the salient source (solid skull, hot uptake) instead of leaving it to the rule after the network.
  L_perceptual: VGG19 (torchvision layout, weights from a file) at feature indices 2/7/16/25/34.

Options for the next training round (model card, "Next training round"): an exponential moving average of the
weights (``ema``: validated and saved instead of the raw weights), training on every case but one cross-validation
fold (``folds`` + ``holdout_fold``: validation scores exactly that fold), ``all_cases`` (final weights: no
validation, the last epoch is written), shorter epochs (``steps_per_epoch``), validation every N epochs, and data
packed into one ``.npz`` (``pack_pairs``; read without SimpleITK, for machines that lack it).
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics as M
from .engine import cpu_has_bf16, fuse_volume, resolve_device
from .errors import ECFusionError
from .network import ECFusionNet, sobel_xy
from .pairs import Pair, split_cases
from .salient import salient_mask, task_thresholds
from .safe_files import atomic_write, write_text_atomic
from .weights import load_state_dict, save_weights


@dataclass
class TrainConfig:
    data: str
    task: str
    out: str
    epochs: int = 50
    batch_size: int = 4
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (to 1 % of lr)
    warmup_steps: int = 0  # linear warm-up from 5 % of lr
    clip_grad: float | None = None  # max gradient norm (None: no clipping)
    grad_weight: float = 1.0
    intensity_weight: float = 0.0
    ssim_weight: float = 0.0  # weight of 1 - SSIM(F, reference)
    ssim_reference: str = "mean"  # mean (of SSIM(F,A), SSIM(F,B)) | max (per pixel) | variance (per pixel)
    salient_weight: float = 0.0  # weight of mean(w * |F - A|), w = the keep-salient rule's mask (salient.py)
    salient_threshold: float | None = None  # None: the task's default (salient.DEFAULT_THRESHOLDS)
    salient_dark: float | None = None  # None: the task's default (salient.DEFAULT_DARK)
    ema: float | None = None  # decay of an exponential moving average of the weights (validated and saved)
    perceptual_weight: float = 0.0
    vgg_weights: str | None = None
    grad_norm: str = "l1"  # "l1": |gx|+|gy| (the prototype), "l2": sqrt(gx^2+gy^2)
    upsample: bool = True
    val_fraction: float = 0.15
    val_cases: list[str] | None = None
    folds: str | None = None  # cross-validation folds file (None: the bundled weights/cv_folds.json)
    holdout_fold: int | None = None  # validate on exactly this fold of ``folds``, train on the others
    all_cases: bool = False  # train on every case, no validation (final weights: the last epoch is written)
    steps_per_epoch: int | None = None  # at most this many batches per epoch (smoke runs; a random subset)
    val_every: int = 1  # validate every N epochs (and after the last)
    init_weights: str | None = None
    device: str = "auto"
    bf16: bool = False  # bf16 autocast: faster on CPU, but training diverged with it (see MODEL_CARD.md)
    seed: int = 0  # patch order, occluding squares, initial weights
    split_seed: int = 0  # which cases are held out (kept apart from ``seed`` so reruns validate on the same cases)
    threads: int | None = None
    max_minutes: float | None = None
    select_check: bool = True  # selection: +1 when the image check (bone / hot kept) is >= 0.95
    select_metrics: list[str] = field(default_factory=lambda: ["MI", "Qabf", "VIF", "SSIM", "Qcb", "Qcv"])


# ------------------------------------------------------------------ data
def to_unit(x: np.ndarray) -> np.ndarray:
    """0-255 -> [-1, 1]."""
    return np.asarray(x, dtype=np.float32) / 127.5 - 1.0


def load_images(pairs: list[Pair], reader=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read pairs into two N x 1 x H x W float tensors in [-1, 1] (second modality / Y, MRI). ``reader(pair)``
    -> (second grey, MRI grey) 0-255; default: the PNG files (``pairs.read_pair``)."""
    if reader is None:
        from .pairs import read_pair

        reader = lambda p: read_pair(p)[:2]  # noqa: E731
    a, b = [], []
    for p in pairs:
        sec, mri = reader(p)
        a.append(to_unit(sec))
        b.append(to_unit(mri))
    return torch.from_numpy(np.stack(a))[:, None], torch.from_numpy(np.stack(b))[:, None]


def _grey(arr: np.ndarray) -> np.ndarray:
    from .colour import luminance

    return (luminance(arr) if arr.ndim == 3 else arr).astype(np.float32)


def pack_pairs(root, out, tasks=None) -> Path:
    """Pack the PNG pairs under ``root`` into one compressed ``.npz`` (the pixels as read, uint8, and the file stems)
    that training reads with numpy alone (``--data FILE.npz``): for a machine without SimpleITK (the GPU image)."""
    from SimpleITK import GetArrayFromImage

    from .pairs import find_pairs
    from .volume_io import read_image

    arrays = {}
    found = find_pairs(root, tasks)  # once: the folders are listed (and orphans reported) one time
    for task in sorted({p.task for p in found}):
        pairs = [p for p in found if p.task == task]
        sec = [GetArrayFromImage(read_image(p.second, allow_rgb=True)) for p in pairs]
        mri = [GetArrayFromImage(read_image(p.mri, allow_rgb=True)) for p in pairs]
        for name, stack in (("second", sec), ("mri", mri)):
            if len({x.shape for x in stack}) != 1 or any(x.dtype != np.uint8 for x in stack):
                raise ECFusionError(f"{task}: packing needs 8-bit images of one size ({name})")
            arrays[f"{task}/{name}"] = np.stack(stack)
        arrays[f"{task}/names"] = np.array([p.name for p in pairs])
    return _write_npz(out, arrays)


def _write_npz(out, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to the compressed ``.npz`` ``out`` atomically (its folder made if needed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    atomic_write(out, write)
    return out


def subset_packed(src, out, per_case: int) -> Path:
    """Write a copy of a packed file keeping the first ``per_case`` pairs of every case (numpy only): every case
    stays, so cross-validation folds still resolve (``scripts/gpu_train.sh --smoke``)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for task in {k.split("/")[0] for k in arrays}:
        names = [str(n) for n in arrays[f"{task}/names"]]
        seen: dict[str, int] = {}
        keep = []
        for i, n in enumerate(names):
            case = Pair(task, n, Path(), Path()).case
            seen[case] = seen.get(case, 0) + 1
            if seen[case] <= per_case:
                keep.append(i)
        for k in ("names", "second", "mri"):
            arrays[f"{task}/{k}"] = arrays[f"{task}/{k}"][keep]
    return _write_npz(out, arrays)


def read_packed(path, task: str):
    """(pairs, reader) for ``task`` from a file written by ``pack_pairs``: the same grey images as the PNG path
    (the Y of RGB images, BT.601), read with numpy alone (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        if f"{task}/names" not in z.files:
            raise ECFusionError(f"{path} holds no {task} pairs (it has: "
                                f"{sorted({k.split('/')[0] for k in z.files})})")
        names = [str(n) for n in z[f"{task}/names"]]
        sec, mri = z[f"{task}/second"], z[f"{task}/mri"]
    pairs = [Pair(task, n, Path(path), Path(path)) for n in names]
    index = {n: i for i, n in enumerate(names)}
    return pairs, lambda p: (_grey(sec[index[p.name]]), _grey(mri[index[p.name]]))


def read_folds(path, task: str) -> list[list[str]]:
    """The cross-validation folds of ``task`` (lists of case names) from a folds file (``weights/cv_folds.json``
    layout: {"tasks": {task: {"folds": [[case, ...], ...]}}})."""
    try:
        data = json.loads(Path(path).read_text())
        folds = data["tasks"][task]["folds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ECFusionError(f"cannot read the {task} folds from {path} ({type(exc).__name__}: {exc})") from exc
    return [[str(c) for c in f] for f in folds]


DEFAULT_FOLDS = Path(__file__).resolve().parent / "weights" / "cv_folds.json"


def split_for(cfg: TrainConfig, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(training, validation) pairs: every case (``all_cases``), one fold held out (``holdout_fold``: validation is
    exactly that fold's cases, all present; training every other case), or ``split_cases`` (``val_cases`` / seeded)."""
    if cfg.all_cases:
        return list(pairs), []
    val_cases = cfg.val_cases
    if cfg.holdout_fold is not None:
        path = cfg.folds or DEFAULT_FOLDS
        folds = read_folds(path, cfg.task)
        if not 0 <= cfg.holdout_fold < len(folds):
            raise ECFusionError(f"--holdout-fold {cfg.holdout_fold}: {path} has {len(folds)} {cfg.task} folds "
                                f"(0-{len(folds) - 1})")
        fold = folds[cfg.holdout_fold]
        if val_cases and set(map(str, val_cases)) != set(fold):
            raise ECFusionError(f"--val-cases {val_cases} and --holdout-fold {cfg.holdout_fold} ({fold}) disagree; give one")
        present = {p.case for p in pairs}
        missing = sorted(set(fold) - present)
        if missing:
            raise ECFusionError(f"fold {cfg.holdout_fold} of {path} names {cfg.task} cases not in the data: {missing}")
        val_cases = fold
    return split_cases(pairs, cfg.val_fraction, cfg.split_seed, val_cases)


def patch_grid(size: int, patch: int = 128, stride: int = 64) -> list[int]:
    return list(range(0, size - patch + 1, stride))


class PatchSampler:
    """Every epoch: all 9 patches of every image, shuffled, with random occluding squares."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, patch=128, stride=64, square=64, upsample=True, seed=0):
        self.a, self.b = a, b
        self.patch, self.square, self.upsample = patch, square, upsample
        ys, xs = patch_grid(a.shape[-2], patch, stride), patch_grid(a.shape[-1], patch, stride)
        self.index = [(i, y, x) for i in range(a.shape[0]) for y in ys for x in xs]
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.index)

    def batches(self, batch_size: int):
        order = self.index[:]
        self.rng.shuffle(order)
        for k in range(0, len(order) - batch_size + 1, batch_size):
            items = order[k : k + batch_size]
            pa = torch.stack([self.a[i, :, y : y + self.patch, x : x + self.patch] for i, y, x in items]).clone()
            pb = torch.stack([self.b[i, :, y : y + self.patch, x : x + self.patch] for i, y, x in items]).clone()
            for j in range(len(items)):
                if self.rng.random() < 0.5:
                    target = pa if self.rng.random() < 0.5 else pb
                    y0 = self.rng.randrange(0, self.patch - self.square + 1)
                    x0 = self.rng.randrange(0, self.patch - self.square + 1)
                    target[j, :, y0 : y0 + self.square, x0 : x0 + self.square] = 1.0 if self.rng.random() < 0.5 else -1.0
            if self.upsample:
                pa = F.interpolate(pa, scale_factor=2, mode="nearest")
                pb = F.interpolate(pb, scale_factor=2, mode="nearest")
            yield pa, pb


# ------------------------------------------------------------------ losses
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
    def __init__(self, cfg: TrainConfig):
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


# ------------------------------------------------------------------ validation
def evaluate_arrays(a255: np.ndarray, b255: np.ndarray, f255: np.ndarray, names=M.METRICS) -> dict[str, float]:
    """Mean of each metric over N image triples (N x H x W, 0-255), plus 'bg': the mean fused
    grey level where both sources are 0."""
    rows = [M.all_metrics(x, y, z, names) for x, y, z in zip(a255, b255, f255)]
    out = {n: float(np.mean([r[n] for r in rows])) for n in names}
    bg = (a255 <= 0.5) & (b255 <= 0.5)
    out["bg"] = float(f255[bg].mean()) if bg.any() else 0.0
    return out


CHECK_TARGET = 0.95  # issue 14: bone kept / hot spots kept


def image_check(task: str, a255: np.ndarray, b255: np.ndarray, f255: np.ndarray) -> float:
    """Mean over images of the task's image check: ``metrics.bone_kept`` (CT-MRI) or ``metrics.hot_spots_kept``
    (PET/SPECT-MRI); NaN when no image has bone / hot spots."""
    if task == "CT-MRI":
        vals = [M.bone_kept(x, y, z) for x, y, z in zip(a255, b255, f255)]
    else:
        vals = [M.hot_spots_kept(x, z) for x, z in zip(a255, f255)]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def selection_score(model_metrics: dict, ref: dict, names, check: float | None = None) -> float:
    """Number of metrics beating the reference (pixel-max), + 1 when ``check`` (the image check) is given and
    >= 0.95 (as ``scripts/cross_validate.py`` chooses), tie-broken by mean relative margin."""
    wins = M.beats(model_metrics, ref, names)
    margin = np.mean([(ref[n] - model_metrics[n]) / abs(ref[n]) if n in M.LOWER_IS_BETTER
                      else (model_metrics[n] - ref[n]) / abs(ref[n]) for n in names])
    bonus = 1.0 if check is not None and math.isfinite(check) and check >= CHECK_TARGET else 0.0
    return len(wins) + bonus + float(np.tanh(margin))


class EMA:
    """Exponential moving average of a model's weights, kept in a copy of the model (validated and saved in place
    of the raw weights). Decay warms up as min(decay, (1 + n) / (10 + n)) over the n updates so far."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for (k, e), v in zip(self.model.state_dict().items(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                e.copy_(v)


# ------------------------------------------------------------------ loop
def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then constant or cosine to 1 %."""
    if warmup and step < warmup:
        return 0.05 + 0.95 * step / warmup
    if schedule == "cosine":
        t = min(max(step - warmup, 0), max(total - warmup, 1)) / max(total - warmup, 1)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def check_config(cfg: TrainConfig) -> None:
    """ECFusionError for settings that cannot train (before any work or any folder is created)."""
    ints = {"epochs": (cfg.epochs, 1), "batch size": (cfg.batch_size, 1), "warm-up steps": (cfg.warmup_steps, 0),
            "validation interval (epochs)": (cfg.val_every, 1)}
    if cfg.steps_per_epoch is not None:
        ints["steps per epoch"] = (cfg.steps_per_epoch, 1)
    if cfg.holdout_fold is not None:
        ints["held-out fold"] = (cfg.holdout_fold, 0)
    if cfg.threads is not None:
        ints["threads"] = (cfg.threads, 1)
    for name, (value, low) in ints.items():
        if value < low:
            raise ECFusionError(f"{name} must be at least {low}, got {value}")
    floats = {"learning rate": (cfg.lr, False), "gradient weight": (cfg.grad_weight, False),
              "intensity weight": (cfg.intensity_weight, False), "SSIM weight": (cfg.ssim_weight, False),
              "perceptual weight": (cfg.perceptual_weight, False), "salient weight": (cfg.salient_weight, False)}
    if cfg.clip_grad is not None:
        floats["gradient clipping norm"] = (cfg.clip_grad, True)
    if cfg.max_minutes is not None:
        floats["time budget (minutes)"] = (cfg.max_minutes, True)
    for name, (value, strict) in floats.items():
        if not math.isfinite(value) or value < 0 or (strict and value == 0):
            raise ECFusionError(f"{name} must be a finite number {'> 0' if strict else '>= 0'}, got {value}")
    if cfg.ema is not None and not (0.0 < cfg.ema < 1.0):
        raise ECFusionError(f"EMA decay must be between 0 and 1 (e.g. 0.999), got {cfg.ema}")
    if cfg.ssim_reference not in ("mean", "max", "variance"):
        raise ECFusionError(f"SSIM reference must be mean, max or variance, got {cfg.ssim_reference!r}")
    if cfg.all_cases and (cfg.holdout_fold is not None or cfg.val_cases):
        raise ECFusionError("--all-cases trains on every case: it cannot be combined with --holdout-fold or --val-cases")


def _checkpoint(model, opt, sched, sampler, state, ema: EMA | None = None) -> dict:
    """Everything needed to resume, as tensors and plain Python values only (loadable with weights_only=True)."""
    version, internal, gauss = sampler.rng.getstate()
    ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
          "sampler_rng": [version, list(internal), gauss], "torch_rng": torch.get_rng_state(),
          "state": dict(state)}
    if ema is not None:
        ck["ema"] = ema.model.state_dict()
        ck["ema_updates"] = ema.updates
    return ck


def load_checkpoint(path: Path, device) -> dict:
    """Read a checkpoint with ``weights_only=True``: a file that needs code to load (a pickle with objects)
    is refused, never executed."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise ECFusionError(f"cannot resume from {path}: it is not a checkpoint this version wrote, or it is "
                            f"damaged ({type(exc).__name__}). Nothing from it was run. Delete it (or use another "
                            "--out) to start over") from exc


def train(cfg: TrainConfig, log=print) -> Path | None:
    """Train (or resume) into ``cfg.out``; returns the path of the best weights file, or None when no epoch
    finished (time budget). A run that fails before its first checkpoint leaves no folder behind."""
    check_config(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ECFusionError(f"--out {out} is a file; give a folder for the run")
    created = not out.exists()
    try:
        best = _train(cfg, out, log)
    except BaseException:
        if created:
            _remove_unfinished_run(out)
        raise
    if best is None and created:
        _remove_unfinished_run(out)
    return best


def _remove_unfinished_run(out: Path) -> None:
    """Remove a run folder this call created, if it holds no checkpoint (only the files training writes)."""
    if (out / "last.pt").exists():
        return
    for name in ("config.json", "log.csv", "best.pt"):
        (out / name).unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:  # something else is in it: leave it
        pass


def _train(cfg: TrainConfig, out: Path, log) -> Path | None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    bf16 = cfg.bf16 and (device.type == "cuda" or cpu_has_bf16())

    if str(cfg.data).endswith(".npz"):
        pairs, reader = read_packed(cfg.data, cfg.task)
    else:
        from .pairs import find_pairs

        pairs, reader = find_pairs(cfg.data, [cfg.task]), None
    train_pairs, val_pairs = split_for(cfg, pairs)
    validate = not cfg.all_cases
    if not train_pairs or (validate and not val_pairs):
        raise ECFusionError(f"need at least two cases to split training and validation, found {len({p.case for p in pairs})}")
    key = lambda c: (0, int(c), c) if c.isdigit() else (1, 0, c)  # noqa: E731
    log(f"{cfg.task}: {len(train_pairs)} training pairs (cases {sorted({p.case for p in train_pairs}, key=key)}), "
        f"{len(val_pairs)} validation pairs (cases {sorted({p.case for p in val_pairs}, key=key)})")
    ta, tb = load_images(train_pairs, reader)
    ref = None
    if validate:
        va, vb = load_images(val_pairs, reader)
        va8, vb8 = (np.rint((x[:, 0].numpy() + 1) * 127.5).astype(np.uint8) for x in (va, vb))
        va255, vb255 = va8.astype(np.float64), vb8.astype(np.float64)
        ref = evaluate_arrays(va255, vb255, np.maximum(va255, vb255), cfg.select_metrics)
        ref["check"] = image_check(cfg.task, va255, vb255, np.maximum(va255, vb255))
    out.mkdir(parents=True, exist_ok=True)
    if ref is not None:
        log("pixel-max on validation: " + ", ".join(f"{k}={v:.4f}" for k, v in ref.items()))

    model = ECFusionNet().to(device)
    if cfg.init_weights:
        model.load_state_dict(load_state_dict(cfg.init_weights))
        log(f"fine-tuning from {cfg.init_weights}")
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = PatchSampler(ta, tb, upsample=cfg.upsample, seed=cfg.seed)
    steps_per_epoch = len(sampler) // cfg.batch_size
    if cfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, cfg.lr_schedule, cfg.warmup_steps))
    loss_fn = FusionLoss(cfg).to(device)
    ema = EMA(model, cfg.ema) if cfg.ema else None

    state = {"epoch": 0, "step": 0, "best_score": -1e9, "best_epoch": None, "seconds": 0.0}
    last = out / "last.pt"
    if last.is_file():
        ck = load_checkpoint(last, device)
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            version, internal, gauss = ck["sampler_rng"]
            sampler.rng.setstate((version, tuple(internal), gauss))
            torch.set_rng_state(ck["torch_rng"].cpu())
            state = dict(ck["state"])
            if ema is not None:
                ema.model.load_state_dict(ck["ema"] if "ema" in ck else model.state_dict())
                ema.updates = int(ck.get("ema_updates", 0))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ECFusionError(f"cannot resume from {last}: it does not match this run ({type(exc).__name__}: "
                                f"{str(exc)[:120]}); delete it or use another --out") from exc
        log(f"resumed from {last} at epoch {state['epoch']}")
    write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2))
    log_path = out / "log.csv"
    new_log = not log_path.exists()

    from tqdm import tqdm

    t_start = time.time() - state["seconds"]
    with open(log_path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["epoch", "step", "seconds", "lr", "train_loss", *cfg.select_metrics, "bg", "check", "score"])
        while state["epoch"] < cfg.epochs:
            if cfg.max_minutes and (time.time() - t_start) / 60 > cfg.max_minutes:
                log(f"time budget of {cfg.max_minutes} min reached after {state['epoch']} epochs; resume to continue")
                break
            model.train()
            losses, parts = [], {}
            batches = itertools.islice(sampler.batches(cfg.batch_size), steps_per_epoch)
            bar = tqdm(batches, total=steps_per_epoch, desc=f"{cfg.task} epoch {state['epoch'] + 1}/{cfg.epochs}",
                       leave=False, disable=None)
            for pa, pb in bar:
                pa = pa.to(device).contiguous(memory_format=torch.channels_last)
                pb = pb.to(device).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    f = model(pa, pb)
                terms = loss_fn(pa, pb, f.float())
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update(model)
                state["step"] += 1
                losses.append(float(terms["total"].detach()))
                for k, v in terms.items():
                    parts.setdefault(k, []).append(float(v.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            state["epoch"] += 1
            model.eval()
            kept = ema.model if ema is not None else model  # the weights validated and written
            meta = {"task": cfg.task, "epoch": state["epoch"], "ema": cfg.ema}
            loss_text = f"loss {np.mean(losses):.4f} (" + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in parts.items() if k != "total") + ")"
            state["seconds"] = time.time() - t_start
            if validate and (state["epoch"] % cfg.val_every == 0 or state["epoch"] == cfg.epochs):
                fused, _ = fuse_volume(kept, va8, vb8, device=str(device), batch_size=8, fast=False,
                                       precision="bf16" if bf16 else "fp32")  # full slices, as the paper scores them
                f255 = fused.astype(np.float64)
                val = evaluate_arrays(va255, vb255, f255, cfg.select_metrics)
                val["check"] = image_check(cfg.task, va255, vb255, f255)
                score = selection_score(val, ref, cfg.select_metrics, val["check"] if cfg.select_check else None)
                state["seconds"] = time.time() - t_start  # validation included, as before
                writer.writerow([state["epoch"], state["step"], round(state["seconds"], 1), sched.get_last_lr()[0],
                                 float(np.mean(losses)), *[round(val[n], 5) for n in cfg.select_metrics], round(val["bg"], 3),
                                 round(val["check"], 4), round(score, 4)])
                log(f"epoch {state['epoch']}: {loss_text}, " + ", ".join(f"{k}={v:.4f}" for k, v in val.items())
                    + f", beats pixel-max on {M.beats(val, ref, cfg.select_metrics)}")
                if score > state["best_score"]:
                    state["best_score"], state["best_epoch"] = score, state["epoch"]
                    save_weights(kept, out / "best.pt", {**meta, "val": val, "pixel_max": ref})
            else:
                writer.writerow([state["epoch"], state["step"], round(state["seconds"], 1), sched.get_last_lr()[0],
                                 float(np.mean(losses)), *[""] * len(cfg.select_metrics), "", "", ""])
                log(f"epoch {state['epoch']}: {loss_text}")
                if not validate:  # every case trained on: the latest epoch is the result
                    state["best_epoch"] = state["epoch"]
                    save_weights(kept, out / "best.pt", meta)
            fh.flush()
            ck = _checkpoint(model, opt, sched, sampler, state, ema)
            atomic_write(last, lambda tmp: torch.save(ck, tmp))
    best = out / "best.pt"
    return best if best.is_file() else None
