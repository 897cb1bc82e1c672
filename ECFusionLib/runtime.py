"""Process-wide CPU tuning, done only when a program that owns its process asks for it.

Importing ECFusionLib and calling its functions change nothing process-wide (no environment variables, no
allocator settings): inside 3D Slicer the process is Slicer's. The ``ecfusion`` command and
``scripts/benchmark.py`` call ``tune_cpu()`` first; other programs may.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# Oldest PyTorch that may read legacy .pt weights files: torch < 2.6 has published torch.load(weights_only=True)
# bypasses (weights.py, the Slicer module). The .npz weights need no torch.load (any torch >= 2.2, or none).
TORCH_MINIMUM = (2, 6)
# Oldest PyTorch that runs the network with weights read without pickle (bundled weights, .npz): PyTorch's last
# macOS x86_64 release, the one Slicer's (x86_64-only) macOS package can have, is 2.2.2. The fused phantom is
# identical on 2.2.2 and 2.13 (measured; see ECFusionSlicer/ECFusionSlicerLib/dependencies.py for the policy).
TORCH_MINIMUM_NETWORK = (2, 2)
MIB = 1024 * 1024
TRIM = 512 * MIB  # freed heap memory the process may keep
_ALLOCATOR_TUNED = False


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else all), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def tune_cpu(allocator: bool = True) -> dict[str, str]:
    """Tune this process for CPU inference; call it before the first torch computation.

    - ``OMP_WAIT_POLICY=PASSIVE`` unless already set: OpenMP threads that spin while waiting collapse when
      another process (a Slicer session, a training run) uses the other cores; passive waiting costs little
      on an idle machine. Only takes effect before torch starts its thread pool.
    - ``allocator``: glibc keeps freed activation buffers in the heap instead of returning them to the OS
      after every layer (``tune_cpu_allocator``).

    Returns:
        What was set, e.g. {"OMP_WAIT_POLICY": "PASSIVE", "allocator": "glibc mallopt"}.
    """
    done = {}
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        done["OMP_WAIT_POLICY"] = "PASSIVE"
    if allocator and tune_cpu_allocator():
        done["allocator"] = "glibc mallopt"
    return done


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the process heap (glibc only; once per process).

    Measured 2026-11-22 on the project's 2-core Xeon (AVX-512, AMX bf16; torch 2.13) at 512x512, bf16 fused CPU
    path: 40-120 k page faults per slice -> 0, 435-500 ms -> 385 ms per slice. Cost: up to ``TRIM`` bytes of
    freed memory stay with the process.

    Returns:
        True if the allocator was tuned by this call.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux"):
        return False
    _ALLOCATOR_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 32 * MIB)  # glibc's largest: blocks up to 32 MB come from the heap
        libc.mallopt(m_trim_threshold, TRIM)
        libc.mallopt(m_top_pad, 64 * MIB)
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        log.debug("mallopt not available; CPU allocator left as it is")
        return False
    return True
