"""The slice-by-slice engine: streams batches of 2D slices of two co-registered volumes through the network.

Inputs are 8-bit grey volumes (the intensity-mapped sources, 0-255) of one shape; the output is the
fused grey volume, uint8, same shape. Extra memory is one batch of slices (inputs, activations, result),
never a float copy of the volume.

Precision: ``"auto"`` (default) = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32;
``"fp32"`` or ``"bf16"`` to force one. bf16 moves the fused image by ~0.15 grey levels on average (PET-MRI
bundled weights) because the attention's tokenisers stay in fp32 (``network.HCEL``); with them in bf16 it
was 8 levels.
Fast paths (``fast=True``, the default):
- on the CPU, ``fast_cpu.FastCPUNet``: fused oneDNN kernels, weights cast once; on CUDA, autocast;
- channels_last memory layout;
- air skipping: each batch is cropped to the bounding box of content in either input (voxels above
  ``AIR_LEVEL`` grey levels), grown by ``MARGIN`` pixels and rounded up to the network's multiple of 16;
  slices with no content are not computed. Outside the box the output is the pixel-wise maximum of the
  inputs (at most ``AIR_LEVEL``: air stays air).
``fast=False`` is the reference: fp32, full slices. The two agree to a few grey levels (see the tests and
scripts/benchmark.py).
"""
from __future__ import annotations

import ctypes
import logging
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import CancelledError, ECFusionError
from .fast_cpu import FastCPUNet
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


PRECISIONS = ("auto", "fp32", "bf16")
AIR_LEVEL = 4  # grey levels (0-255) at or below which a voxel counts as air
# Pixels of context kept around the content. The crop's border is zero-padded by every conv layer, where the full
# slice would have air; measured on the phantom head (PET-MRI weights, fp32) against full slices, mean |diff| in
# the head / area computed: margin 8: 0.89 levels / 61 %, 16: 0.64 / 72 %, 32: 0.10 / 84 %, 64: 0.004 / 92 %.
MARGIN = 32
CPU_BATCH_PIXELS = 256 * 256 * 4  # slices per CPU batch: about this many pixels in all (auto_batch_size)
MIB = 1024 * 1024
TRIM = 512 * MIB  # freed heap memory the process may keep (tune_cpu_allocator)


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
    """CPU: slices of about ``CPU_BATCH_PIXELS`` pixels in all (measured on 2 cores, bf16 fused path, ms per
    slice at batch 1/2/4: 128x128 45/34/24, 256x256 100/88/87, 512x512 379/455/683: small slices gain from
    batching, large ones fall out of cache). CUDA: as many slices as fit in half of the free memory, at most 64."""
    if device.type != "cuda":
        return int(max(1, min(8, CPU_BATCH_PIXELS // (h * w))))
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
    return _mask_box((a > air) | (b > air), margin, multiple)


def _mask_box(mask: np.ndarray, margin: int = MARGIN, multiple: int = 16):
    """``content_box`` of a boolean k x H x W content mask."""
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
                precision: str = "auto") -> tuple[np.ndarray, EngineInfo]:
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
    if precision not in PRECISIONS:
        raise ECFusionError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}")
    want_half = precision == "bf16" or (precision == "auto" and fast)
    half = want_half and (dev.type == "cuda" or cpu_has_bf16())
    n = a.shape[axis]
    plane = _slices(a, axis, 0, 1).shape[1:]
    bs = batch_size or auto_batch_size(plane[0], plane[1], dev, half)
    model = model.to(dev).eval()
    net = _runner(model, dev, half, fast)
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
                    fused, n_run, box_area = _run_cropped(net, sa, sb, dev)
                else:
                    fused, n_run, box_area = _run_batch(net, sa, sb, dev), stop - done, 1.0
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if bs > 1:
                    bs = max(1, bs // 2)
                    log.warning("GPU out of memory: retrying with batch size %d", bs)
                    continue
                log.warning("GPU out of memory even with one slice: continuing on the CPU")
                dev, half = torch.device("cpu"), half and cpu_has_bf16()
                net = _runner(model.to(dev), dev, half, fast)
                continue
            out_view[done:stop] = fused
            computed += n_run
            area += box_area * n_run
            done = stop
            if progress:
                progress(done, n)
    info = EngineInfo(device=str(dev), batch_size=bs, precision="bf16" if half else "fp32", slices=n,
                      computed_slices=computed, computed_fraction=area / n if n else 0.0)
    return (out[0] if squeeze else out), info


Runner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (a, b) B x 1 x H x W in [-1, 1] -> fused


def _runner(model: ECFusionNet, dev: torch.device, half: bool, fast: bool) -> Runner:
    """The network as called for this device, precision and path."""
    if dev.type == "cpu" and fast:
        tune_cpu_allocator()
        return FastCPUNet(model, torch.bfloat16 if half else torch.float32)
    if fast:
        model = model.to(memory_format=torch.channels_last)

    def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half):
            return model(a, b)
    return run


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> None:
    """Keep freed activation buffers in the process heap instead of returning them to the OS after every
    layer (glibc only; once per process). Measured at 512x512 bf16: 40-120 k page faults per slice -> 0,
    435-500 ms -> 385 ms. Cost: up to ``TRIM`` bytes of freed memory stay with the process."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 32 * MIB)  # glibc's largest: blocks up to 32 MB come from the heap
        libc.mallopt(m_trim_threshold, TRIM)
        libc.mallopt(m_top_pad, 64 * MIB)
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        log.debug("mallopt not available; CPU allocator left as it is")


def _run_cropped(net: Runner, a: np.ndarray, b: np.ndarray, dev: torch.device):
    """Air skipping: run the network on the slices with content, cropped to their common content box.
    Returns (k x H x W uint8, slices computed, box area as a fraction of the slice)."""
    out = np.maximum(a, b)
    mask = out > AIR_LEVEL  # = (a > AIR_LEVEL) | (b > AIR_LEVEL)
    keep = np.flatnonzero(mask.reshape(len(a), -1).any(axis=1))
    if len(keep) == 0:
        return out, 0, 0.0
    a, b = a[keep], b[keep]
    y0, y1, x0, x1 = _mask_box(mask[keep])
    out[keep, y0:y1, x0:x1] = _run_batch(net, a[:, y0:y1, x0:x1], b[:, y0:y1, x0:x1], dev)
    return out, len(keep), (y1 - y0) * (x1 - x0) / (a.shape[-2] * a.shape[-1])


def _to_device(x: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.require(x, requirements=["C", "W"]))  # copies only read-only or strided input
    if dev.type == "cuda":
        t = t.pin_memory().to(dev, non_blocking=True)  # async copy, overlapped with queued kernels
    return t[:, None].float().div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)


def _run_batch(net: Runner, a: np.ndarray, b: np.ndarray, dev: torch.device) -> np.ndarray:
    """k x H x W uint8 pairs -> k x H x W uint8 fused."""
    f = net(_to_device(a, dev), _to_device(b, dev))
    return f[:, 0].float().add_(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
