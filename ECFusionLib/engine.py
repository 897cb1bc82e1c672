"""The slice-by-slice engine: streams batches of 2D slices of two co-registered volumes through the network.

Inputs are 8-bit grey volumes (the intensity-mapped sources, 0-255) of one shape; the output is the
fused grey volume, uint8, same shape. Extra memory is one batch of slices (inputs, activations, result),
never a float copy of the volume.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import CancelledError, ECFusionError
from .network import ECFusionNet

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (slices done, total slices)
CancelCheck = Callable[[], bool]  # True -> stop


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. Asking for CUDA without one is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ECFusionError("CUDA was asked for but no CUDA GPU is usable by this PyTorch; use device 'cpu' or 'auto'")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ECFusionError(f"unknown device '{device}': use auto, cpu or cuda")
    return torch.device(name)


def bytes_per_slice(h: int, w: int, half: bool) -> int:
    """Rough peak activation memory of one slice in inference (about 400 float maps of H x W)."""
    return int(h * w * 400 * (2 if half else 4))


def auto_batch_size(h: int, w: int, device: torch.device, half: bool) -> int:
    """CPU: 1 (measured fastest per slice on 2 cores: bigger batches fall out of cache).
    CUDA: as many slices as fit in half of the free memory, at most 64."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(64, (free // 2) // bytes_per_slice(h, w, half))))


@dataclass
class EngineInfo:
    device: str
    batch_size: int
    precision: str
    slices: int


def _slices(vol: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    return np.moveaxis(vol, axis, 0)[start:stop]


def fuse_volume(model: ECFusionNet, a: np.ndarray, b: np.ndarray, *, axis: int = 0, device: str = "auto",
                batch_size: int | None = None, progress: ProgressCallback | None = None,
                cancel: CancelCheck | None = None) -> tuple[np.ndarray, EngineInfo]:
    """Fuse two uint8 volumes (D x H x W, or H x W for one image) slice by slice along ``axis``.

    a: second modality (CT, or Y of PET/SPECT); b: MRI; both 0-255 of one shape.
    Returns (fused uint8 of the same shape, EngineInfo). Runs under ``torch.inference_mode``; on CUDA
    with bf16 autocast; on CPU in fp32 (identical output for identical input). ``cancel()`` returning
    True raises CancelledError between batches.
    """
    if a.shape != b.shape:
        raise ECFusionError(f"the two volumes must have one shape on the common grid, got {a.shape} and {b.shape}")
    squeeze = a.ndim == 2
    if squeeze:
        a, b, axis = a[None], b[None], 0
    dev = resolve_device(device)
    half = dev.type == "cuda"
    n = a.shape[axis]
    plane = _slices(a, axis, 0, 1).shape[1:]
    bs = batch_size or auto_batch_size(plane[0], plane[1], dev, half)
    model = model.to(dev).eval()
    out = np.empty_like(a, dtype=np.uint8)
    out_view = np.moveaxis(out, axis, 0)
    done = 0
    if progress:
        progress(0, n)
    with torch.inference_mode():
        while done < n:
            if cancel is not None and cancel():
                raise CancelledError("cancelled by the user; nothing was written")
            stop = min(n, done + bs)
            try:
                fused = _run_batch(model, _slices(a, axis, done, stop), _slices(b, axis, done, stop), dev, half)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if bs > 1:
                    bs = max(1, bs // 2)
                    log.warning("GPU out of memory: retrying with batch size %d", bs)
                    continue
                log.warning("GPU out of memory even with one slice: continuing on the CPU")
                dev, half = torch.device("cpu"), False
                model = model.to(dev)
                continue
            out_view[done:stop] = fused
            done = stop
            if progress:
                progress(done, n)
    info = EngineInfo(device=str(dev), batch_size=bs, precision="bf16" if half else "fp32", slices=n)
    return (out[0] if squeeze else out), info


def _run_batch(model: ECFusionNet, a: np.ndarray, b: np.ndarray, dev: torch.device, half: bool) -> np.ndarray:
    """k x H x W uint8 pairs -> k x H x W uint8 fused."""
    ta = torch.from_numpy(np.ascontiguousarray(a)).to(dev, non_blocking=True)[:, None].float().div_(127.5).sub_(1.0)
    tb = torch.from_numpy(np.ascontiguousarray(b)).to(dev, non_blocking=True)[:, None].float().div_(127.5).sub_(1.0)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half):
        f = model(ta, tb)
    return f[:, 0].float().add_(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
