#!/usr/bin/env python3
"""Write reference_outputs_pet-mri.npz/.json: outputs of the network and engine on fixed inputs.

    OMP_NUM_THREADS=2 python Testing/data/make_reference_outputs.py

The saved files were made by this computation run at commit f1a4cb6, before the registry restructuring (then
with ``fast_cpu.FastCPUNet(model, torch.float32)`` where it now says ``model.cpu_runner(torch.float32)``), so
Testing/test_reference_outputs.py checks that the restructured code computes the same bits. Re-run it only
when an intended change of the arithmetic is made, and say so in the commit.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from ECFusionLib.engine import fuse_volume  # noqa: E402
from ECFusionLib.weights import load_model  # noqa: E402


def inputs():
    """5 slices of 40 x 56 uint8: random values inside an ellipse, air outside; slice 0 all air."""
    rng = np.random.default_rng(12)
    k, h, w = 5, 40, 56
    yy, xx = np.mgrid[:h, :w]
    head = ((yy - 20) / 15.0) ** 2 + ((xx - 26) / 20.0) ** 2 < 1
    sec = (rng.integers(0, 256, (k, h, w)) * head).astype(np.uint8)
    mri = (rng.integers(0, 256, (k, h, w)) * head).astype(np.uint8)
    sec[0] = 0
    mri[0] = 0
    return sec, mri


def main():
    model, _ = load_model("PET-MRI")
    sec, mri = inputs()
    t = lambda x: torch.from_numpy(x[1:3]).float().div(127.5).sub(1.0)[:, None]  # noqa: E731
    with torch.no_grad():
        forward = model(t(sec), t(mri)).numpy()
    out = dict(sec=sec, mri=mri, forward=forward,
               fast_forward=model.cpu_runner(torch.float32)(t(sec), t(mri)).numpy())
    for name, kw in dict(fast_fp32=dict(precision="fp32"), plain=dict(fast=False), fast_auto=dict(),
                         fast_fp32_b1=dict(precision="fp32", batch_size=1)).items():
        out[name] = fuse_volume(model, sec, mri, device="cpu", **kw)[0]
    np.savez_compressed(HERE / "reference_outputs_pet-mri.npz", **out)
    line = next(x for x in open("/proc/cpuinfo") if x.startswith("flags"))
    flags = sorted(f for f in line.split(":")[1].split() if f.startswith(("avx", "amx", "fma", "sse")))
    fingerprint = {"torch": torch.__version__, "cpu_flags": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
                   "omp_threads": torch.get_num_threads(),
                   "made_with": "Testing/data/make_reference_outputs.py at commit f1a4cb6 (before the registry "
                                "restructuring)"}
    (HERE / "reference_outputs_pet-mri.json").write_text(json.dumps(fingerprint, indent=2) + "\n")


if __name__ == "__main__":
    main()
