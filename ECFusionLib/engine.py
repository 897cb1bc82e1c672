"""The slice-by-slice engine: streams batches of 2D slices of two co-registered volumes through the network.

Inputs are 8-bit grey volumes (the intensity-mapped sources, 0-255) of one shape; the output is the
fused grey volume, uint8, same shape. Extra memory is one batch of slices (inputs, activations, result),
never a float copy of the volume.

Precision: fp32 by default. ``precision="bf16"`` (autocast; CUDA, or CPUs with native bf16) is about 2x
faster but measurably worse with the bundled weights (trained in fp32; PET-MRI validation VIF 0.571 -> 0.512,
Qcv 52 -> 95), so it is opt-in.
Fast paths (``fast=True``, the default):
- channels_last memory layout;
- air skipping: each batch is cropped to the bounding box of content in either input (voxels above
  ``AIR_LEVEL`` grey levels), grown by ``MARGIN`` pixels and rounded up to the network's multiple of 16;
  slices with no content are not computed. Outside the box the output is the pixel-wise maximum of the
  inputs (at most ``AIR_LEVEL``: air stays air).
``fast=False`` is the reference: fp32, full slices. The two agree to a few grey levels (see the tests and
scripts/benchmark.py).
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


AIR_LEVEL = 4  # grey levels (0-255) at or below which a voxel counts as air
MARGIN = 8  # pixels of context kept around the content


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
    computed_slices: int = 0  # slices that went through the network (the rest were air)
    computed_fraction: float = 1.0  # fraction of the slice area the network saw


def content_box(a: np.ndarray, b: np.ndarray, air: int = AIR_LEVEL, margin: int = MARGIN, multiple: int = 16):
    """(y0, y1, x0, x1) covering every voxel above ``air`` in a or b (k x H x W), plus ``margin``, with
    sides rounded up to ``multiple`` where the image allows; None if there is no content."""
    mask = (a > air) | (b > air)
    if not mask.any():
        return None
    h, w = mask.shape[-2:]
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    return (*_grow(rows[0], rows[-1] + 1, h, margin, multiple), *_grow(cols[0], cols[-1] + 1, w, margin, multiple))


def _grow(lo: int, hi: int, size: int, margin: int, multiple: int) -> tuple[int, int]:
    lo, hi = max(0, lo - margin), min(size, hi + margin)
    want = min(size, -(-(hi - lo) // multiple) * multiple)
    hi = min(size, lo + want)
    lo = max(0, hi - want)
    return int(lo), int(hi)


def _slices(vol: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    return np.moveaxis(vol, axis, 0)[start:stop]


def fuse_volume(model: ECFusionNet, a: np.ndarray, b: np.ndarray, *, axis: int = 0, device: str = "auto",
                batch_size: int | None = None, progress: ProgressCallback | None = None,
                cancel: CancelCheck | None = None, fast: bool = True,
                precision: str = "fp32") -> tuple[np.ndarray, EngineInfo]:
    """Fuse two uint8 volumes (D x H x W, or H x W for one image) slice by slice along ``axis``.

    a: second modality (CT, or Y of PET/SPECT); b: MRI; both 0-255 of one shape.
    Returns (fused uint8 of the same shape, EngineInfo). Runs under ``torch.inference_mode``; ``fast``
    selects the fast paths (module docstring). Identical input gives identical output. ``cancel()``
    returning True raises CancelledError between batches.
    """
    if a.shape != b.shape:
        raise ECFusionError(f"the two volumes must have one shape on the common grid, got {a.shape} and {b.shape}")
    squeeze = a.ndim == 2
    if squeeze:
        a, b, axis = a[None], b[None], 0
    dev = resolve_device(device)
    if precision not in ("fp32", "bf16"):
        raise ECFusionError(f"unknown precision '{precision}': use fp32 or bf16")
    half = precision == "bf16" and (dev.type == "cuda" or cpu_has_bf16())
    n = a.shape[axis]
    plane = _slices(a, axis, 0, 1).shape[1:]
    bs = batch_size or auto_batch_size(plane[0], plane[1], dev, half)
    model = model.to(dev).eval()
    if fast:
        model = model.to(memory_format=torch.channels_last)
    out = np.empty_like(a, dtype=np.uint8)
    out_view = np.moveaxis(out, axis, 0)
    done, computed, area = 0, 0, 0.0
    if progress:
        progress(0, n)
    with torch.inference_mode():
        while done < n:
            if cancel is not None and cancel():
                raise CancelledError("cancelled by the user; nothing was written")
            stop = min(n, done + bs)
            sa, sb = _slices(a, axis, done, stop), _slices(b, axis, done, stop)
            try:
                if fast:
                    fused, box_area = _run_cropped(model, sa, sb, dev, half)
                else:
                    fused, box_area = _run_batch(model, sa, sb, dev, half), 1.0
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
            if box_area > 0:
                computed += stop - done
                area += box_area * (stop - done)
            done = stop
            if progress:
                progress(done, n)
    info = EngineInfo(device=str(dev), batch_size=bs, precision="bf16" if half else "fp32", slices=n,
                      computed_slices=computed, computed_fraction=area / n if n else 0.0)
    return (out[0] if squeeze else out), info


def _run_cropped(model: ECFusionNet, a: np.ndarray, b: np.ndarray, dev: torch.device, half: bool):
    """Air skipping: run the network on the content box only. Returns (k x H x W uint8, box area fraction)."""
    out = np.maximum(a, b)
    box = content_box(a, b)
    if box is None:
        return out, 0.0
    y0, y1, x0, x1 = box
    out[:, y0:y1, x0:x1] = _run_batch(model, a[:, y0:y1, x0:x1], b[:, y0:y1, x0:x1], dev, half)
    return out, (y1 - y0) * (x1 - x0) / (a.shape[-2] * a.shape[-1])


def _to_device(x: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if dev.type == "cuda":
        t = t.pin_memory().to(dev, non_blocking=True)  # async copy, overlapped with queued kernels
    return t[:, None].float().div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)


def _run_batch(model: ECFusionNet, a: np.ndarray, b: np.ndarray, dev: torch.device, half: bool) -> np.ndarray:
    """k x H x W uint8 pairs -> k x H x W uint8 fused."""
    ta, tb = _to_device(a, dev), _to_device(b, dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half):
        f = model(ta, tb)
    return f[:, 0].float().add_(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
