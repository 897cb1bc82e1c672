"""The slice-by-slice engine: streams batches of 2D slices of two co-registered volumes through a predictor.

    runner = make_runner(model, device="auto", precision="auto")   # a private, ready-to-run copy of the model
    fused, info = fuse_volume(runner, second_u8, anatomical_u8, axis=0)
    fused, info = fuse_volume(model, second_u8, anatomical_u8)     # the same, the runner made on the fly

``model`` is a torch network (the torch backend) or an ``onnx_backend.OnnxNetwork`` (ONNX Runtime, no torch
needed: this module imports torch only when a torch network or device is used).

Inputs are 8-bit grey volumes (the intensity-mapped sources, 0-255) of one shape; the output is the
fused grey volume, uint8, same shape. Extra memory is one batch of slices (inputs, activations, result),
never a float copy of the volume. The caller's model is never modified (not moved, not put in eval mode).

Precision: ``"auto"`` (default) = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32;
``"fp32"`` or ``"bf16"`` to force one. bf16 moves the fused image by ~0.15 grey levels on average (PET-MRI
bundled weights) because the attention's tokenisers stay in fp32 (``network.HCEL``); with them in bf16 it
was 8 levels.
Fast paths (``fast=True``, the default):
- on the CPU, the model's own fused path when its architecture has one (``cpu_runner``, e.g.
  ``network.FusedECFusion``: fused oneDNN kernels, weights cast once), else its forward pass; on CUDA, autocast;
- channels_last memory layout;
- air skipping: each slice is cropped to the bounding box of its content in either input (voxels above
  ``AIR_LEVEL`` grey levels), grown by ``MARGIN`` pixels and rounded up to the network's multiple of 16;
  slices with no content are not computed. The box is the slice's own (not the batch's), so the output does
  not depend on the batch size; slices of a batch whose boxes have one size are computed together. Outside
  the box the output is the pixel-wise maximum of the inputs (at most ``AIR_LEVEL``: air stays air).
``fast=False`` is the reference: the plain forward pass, fp32, full slices. The two agree to a few grey levels
(see the tests and scripts/benchmark.py).
Process-wide CPU tuning (OpenMP wait policy, allocator) is not done here: see ``runtime.tune_cpu``.
ONNX Runtime runs fp32 with the same air skipping (``OnnxRunner``).
"""
from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import CancelledError, ECFusionError
from .onnx_backend import OnnxNetwork
from .tasks import DEVICES, PRECISIONS, check_choice

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (slices done, total slices)
CancelCheck = Callable[[], bool]  # True -> stop
Predict = Callable[[Any, Any], Any]  # (second, anatomical) B x 1 x H x W in [-1, 1] -> fused (torch tensors)


def resolve_device(device="auto"):
    """The torch device for a name of ``tasks.DEVICES`` (or "cuda:N").

    Args:
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    Returns:
        The device.
    Raises:
        ECFusionError: CUDA asked for without a usable GPU, or an unknown name.
    """
    import torch

    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ECFusionError("CUDA was asked for but no CUDA GPU is usable by this PyTorch; use device 'cpu' or 'auto'")
    if name not in DEVICES and not name.startswith("cuda"):
        raise ECFusionError(f"unknown device '{device}': use one of {', '.join(DEVICES)}")
    return torch.device(name)


AIR_LEVEL = 4  # grey levels (0-255) at or below which a voxel counts as air
# Pixels of context kept around the content. The crop's border is zero-padded by every conv layer, where the full
# slice would have air; measured on the phantom head (PET-MRI weights, fp32; 2-core Xeon, 2026-11-22) against
# full slices, mean |diff| in the head / area computed: margin 8: 0.89 levels / 61 %, 16: 0.64 / 72 %,
# 32: 0.10 / 84 %, 64: 0.004 / 92 %.
MARGIN = 32
CPU_BATCH_PIXELS = 256 * 256 * 4  # slices per CPU batch: about this many pixels in all (auto_batch_size)


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


def auto_batch_size(h: int, w: int, device, half: bool) -> int:
    """Slices per batch for h x w slices.

    CPU: slices of about ``CPU_BATCH_PIXELS`` pixels in all (measured 2026-11-22 on the project's 2-core Xeon with AMX bf16,
    torch 2.13, bf16 fused path, ms per slice at batch 1/2/4: 128x128 45/34/24, 256x256 100/88/87,
    512x512 379/455/683: small slices gain from batching, large ones fall out of cache). CUDA: as many slices as
    fit in half of the free memory, at most 64.
    """
    if getattr(device, "type", str(device)) != "cuda":
        return int(max(1, min(8, CPU_BATCH_PIXELS // (h * w))))
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(64, (free // 2) // bytes_per_slice(h, w, half))))


@dataclass
class EngineInfo:
    """How a volume was fused: device, slices per batch, "bf16"/"fp32", slices in all."""

    device: str
    batch_size: int
    precision: str
    slices: int
    computed_slices: int = 0  # slices that went through the network (the rest were air)
    computed_fraction: float = 1.0  # fraction of the slice area the network saw
    backend: str = "torch"  # "torch" or "onnxruntime"


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


@dataclass
class Runner:
    """A torch predictor ready to run: (second, anatomical) B x 1 x H x W in [-1, 1] on ``device`` -> fused,
    same shape. Made by ``make_runner``; ``model`` is its private copy (None for a plain callable given to
    ``fuse_volume``)."""

    predict: Predict
    device: Any  # torch.device
    half: bool  # computes in bf16
    fast: bool  # fast paths: the model's fused path or channels_last + autocast, and air skipping
    model: Any = None  # torch.nn.Module
    precision_asked: str = "auto"
    backend = "torch"

    @property
    def precision(self) -> str:
        return "bf16" if self.half else "fp32"

    def __call__(self, second, anatomical):
        return self.predict(second, anatomical)

    def run_u8(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """k x H x W uint8 pairs -> k x H x W uint8 fused."""
        import torch

        with torch.inference_mode():
            return _run_batch(self, a, b, self.device)

    def on(self, device) -> "Runner":
        """The same model and settings on another device (the GPU-out-of-memory fallback)."""
        if self.model is None:
            raise ECFusionError("a plain predictor function cannot be moved to another device")
        return make_runner(self.model, device=device, precision=self.precision_asked, fast=self.fast)


@dataclass
class OnnxRunner:
    """An ``onnx_backend.OnnxNetwork`` ready to run in ``fuse_volume`` (fp32; air skipping when ``fast``)."""

    model: OnnxNetwork
    fast: bool = True
    half = False
    precision = "fp32"
    backend = "onnxruntime"

    @property
    def device(self) -> str:
        return self.model.device

    def run_u8(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """k x H x W uint8 pairs -> k x H x W uint8 fused."""
        to_net = lambda x: (x[:, None].astype(np.float32) / np.float32(127.5) - np.float32(1.0))  # noqa: E731
        fused = self.model(to_net(a), to_net(b))[:, 0]
        return np.clip(np.round((fused + np.float32(1.0)) * np.float32(127.5)), 0, 255).astype(np.uint8)


def make_runner(model, *, device="auto", precision: str = "auto", fast: bool = True):
    """Make ``model`` ready to run on ``device`` at ``precision``, picking the fast path by architecture.

    Args:
        model: a torch network taking (second, anatomical) B x 1 x H x W in [-1, 1] (copied, not modified), or
            an ``OnnxNetwork`` (runs on the device it was loaded for, fp32: ``precision`` "bf16" is refused).
        device: one of ``tasks.DEVICES`` or "cuda:N".
        precision: one of ``tasks.PRECISIONS`` (module docstring).
        fast: on the CPU, the model's ``cpu_runner(dtype)`` when its class has one (falls back to the plain
            forward pass otherwise); on CUDA, channels_last + autocast. False: the plain forward pass in fp32.
    Returns:
        The ``Runner`` (torch) or ``OnnxRunner``.
    Raises:
        ECFusionError: unknown device or precision, or CUDA asked for without one.
    """
    check_choice(precision, PRECISIONS, "precision")
    if isinstance(model, OnnxNetwork):
        if precision == "bf16":
            raise ECFusionError("precision bf16 needs the torch backend; ONNX Runtime computes in fp32")
        return OnnxRunner(model, fast)
    import torch

    dev = resolve_device(device)
    want_half = precision == "bf16" or (precision == "auto" and fast)
    half = want_half and (dev.type == "cuda" or cpu_has_bf16())
    own = copy.deepcopy(model).to(dev).eval()
    if dev.type == "cpu" and fast and hasattr(own, "cpu_runner"):
        predict = own.cpu_runner(torch.bfloat16 if half else torch.float32)
    else:
        if fast:
            own = own.to(memory_format=torch.channels_last)

        def predict(second, anatomical):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half):
                return own(second, anatomical)
    return Runner(predict, dev, half, fast, own, precision)


def fuse_volume(predictor, second: np.ndarray, anatomical: np.ndarray, *,
                axis: int = 0, device: str = "auto", precision: str = "auto", fast: bool = True,
                batch_size: int | None = None, progress: ProgressCallback | None = None,
                cancel: CancelCheck | None = None) -> tuple[np.ndarray, EngineInfo]:
    """Fuse two uint8 volumes slice by slice along ``axis``.

    Args:
        predictor: a model (a torch network or an ``OnnxNetwork``, run through ``make_runner(model, device=,
            precision=, fast=)``; not modified), a ``Runner``/``OnnxRunner`` (its own device, precision and
            ``fast`` are used), or any function (second, anatomical) B x 1 x H x W torch tensors in [-1, 1] ->
            fused (run as given, on ``device``).
        second: the second image (CT, or Y of PET/SPECT), D x H x W (or H x W for one image), uint8 0-255.
        anatomical: the anatomical image (MRI), same shape, uint8 0-255.
        axis: the array axis to slice along.
        device, precision, fast: see ``make_runner``.
        batch_size: slices per batch (default ``auto_batch_size``).
        progress: called with (slices done, total) before the first and after each batch.
        cancel: polled between batches; True raises CancelledError.
    Returns:
        (fused uint8 of the inputs' shape, EngineInfo). Identical input gives identical output.
    Raises:
        ECFusionError: shapes differ, unknown device/precision; CancelledError when cancelled.
    """
    if second.shape != anatomical.shape:
        raise ECFusionError(f"the two volumes must have one shape on the common grid, got {second.shape} and "
                            f"{anatomical.shape}")
    if isinstance(predictor, (Runner, OnnxRunner)):
        runner = predictor
    elif isinstance(predictor, OnnxNetwork) or _is_torch_module(predictor):
        runner = make_runner(predictor, device=device, precision=precision, fast=fast)
    else:
        check_choice(precision, PRECISIONS, "precision")
        runner = Runner(predictor, resolve_device(device), precision == "bf16", fast, None, precision)
    a, b = second, anatomical
    squeeze = a.ndim == 2
    if squeeze:
        a, b, axis = a[None], b[None], 0
    n = a.shape[axis]
    plane = _slices(a, axis, 0, 1).shape[1:]
    bs = batch_size or auto_batch_size(plane[0], plane[1], runner.device, runner.half)
    out = np.empty_like(a, dtype=np.uint8)
    out_view = np.moveaxis(out, axis, 0)
    done, computed, area = 0, 0, 0.0
    if progress:
        progress(0, n)
    while done < n:
        if cancel is not None and cancel():
            raise CancelledError("cancelled by the user; nothing was written")
        stop = min(n, done + bs)
        sa, sb = _slices(a, axis, done, stop), _slices(b, axis, done, stop)
        try:
            if runner.fast:
                fused, n_run, box_area = _run_cropped(runner, sa, sb)
            else:
                fused, n_run, box_area = runner.run_u8(sa, sb), stop - done, 1.0
        except Exception as exc:
            if not _cuda_out_of_memory(exc):
                raise
            sys.modules["torch"].cuda.empty_cache()
            if bs > 1:
                bs = max(1, bs // 2)
                log.warning("GPU out of memory: retrying with batch size %d", bs)
                continue
            if runner.model is None:
                raise
            log.warning("GPU out of memory even with one slice: continuing on the CPU")
            runner = runner.on("cpu")
            continue
        out_view[done:stop] = fused
        computed += n_run
        area += box_area * n_run
        done = stop
        if progress:
            progress(done, n)
    info = EngineInfo(device=str(runner.device), batch_size=bs, precision=runner.precision, slices=n,
                      computed_slices=computed, computed_fraction=area / n if n else 0.0, backend=runner.backend)
    return (out[0] if squeeze else out), info


def _is_torch_module(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _cuda_out_of_memory(exc: Exception) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _run_cropped(runner, a: np.ndarray, b: np.ndarray):
    """Air skipping: run the network on the slices with content, each cropped to ITS OWN content box, so that
    a slice's result never depends on which slices share its batch (``--batch-size`` does not change the
    output). Slices whose boxes have the same size go through the network together.
    Returns (k x H x W uint8, slices computed, mean box area of those slices as a fraction of the slice)."""
    out = np.maximum(a, b)
    mask = out > AIR_LEVEL  # = (a > AIR_LEVEL) | (b > AIR_LEVEL)
    groups: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
    for i in range(len(a)):
        box = _mask_box(mask[i : i + 1])  # depends on slice i only
        if box is not None:
            groups.setdefault((box[1] - box[0], box[3] - box[2]), []).append((i, box))
    computed, area = 0, 0
    for (h, w), members in groups.items():
        ca = np.stack([a[i, y0:y1, x0:x1] for i, (y0, y1, x0, x1) in members])
        cb = np.stack([b[i, y0:y1, x0:x1] for i, (y0, y1, x0, x1) in members])
        fused = runner.run_u8(ca, cb)
        for k, (i, (y0, y1, x0, x1)) in enumerate(members):
            out[i, y0:y1, x0:x1] = fused[k]
        computed += len(members)
        area += h * w * len(members)
    if computed == 0:
        return out, 0, 0.0
    return out, computed, area / (computed * a.shape[-2] * a.shape[-1])


def _to_device(x: np.ndarray, dev):
    import torch

    t = torch.from_numpy(np.require(x, requirements=["C", "W"]))  # copies only read-only or strided input
    if dev.type == "cuda":
        t = t.pin_memory().to(dev, non_blocking=True)  # async copy, overlapped with queued kernels
    return t[:, None].float().div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)


def _run_batch(net: Predict, a: np.ndarray, b: np.ndarray, dev) -> np.ndarray:
    """k x H x W uint8 pairs -> k x H x W uint8 fused."""
    import torch

    f = net(_to_device(a, dev), _to_device(b, dev))
    return f[:, 0].float().add_(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
