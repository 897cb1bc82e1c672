#!/usr/bin/env python3
"""Write the golden outputs of the network and the engine on fixed inputs (Testing/test_reference_outputs.py).

    OMP_NUM_THREADS=2 python Testing/data/make_reference_outputs.py             # seeded random weights (default)
    OMP_NUM_THREADS=2 python Testing/data/make_reference_outputs.py --bundled   # the bundled PET-MRI weights

``reference_outputs_seeded.npz/.json``: the network with seeded random weights (``helpers.seeded_network``, no
weights file), so a weights release does not touch it; made by this script at commit cb596e7 (before the
training / CLI restructuring of issue 22). ``reference_outputs_pet-mri.npz/.json``: the bundled PET-MRI weights,
made at commit f1a4cb6 (before the registry restructuring, then with ``fast_cpu.FastCPUNet(model, torch.float32)``
where it now says ``model.cpu_runner(torch.float32)``); its .json records the weights' tensor digest, and the test
skips it once other weights are bundled. Re-run only when an intended change of the arithmetic is made, and say
so in the commit.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))  # Testing/: helpers

from ECFusionLib.engine import fuse_volume  # noqa: E402
from helpers import SEED, seeded_network, state_digest  # noqa: E402

RUNS = dict(fast_fp32=dict(precision="fp32"), plain=dict(fast=False), fast_auto=dict(),
            fast_fp32_b1=dict(precision="fp32", batch_size=1))


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


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """Slices 1-2 of a uint8 stack as a 2 x 1 x H x W tensor in [-1, 1] (the network's input)."""
    return torch.from_numpy(x[1:3]).float().div(127.5).sub(1.0)[:, None]


def fingerprint() -> dict:
    """What decides whether outputs can be bit-identical: torch build, CPU instruction sets, threads."""
    try:
        line = next(x for x in open("/proc/cpuinfo") if x.startswith("flags"))
    except (OSError, StopIteration):
        line = "flags:"
    flags = sorted(f for f in line.split(":")[1].split() if f.startswith(("avx", "amx", "fma", "sse")))
    return {"torch": torch.__version__, "cpu_flags": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
            "omp_threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundled", action="store_true", help="the bundled PET-MRI weights instead of seeded ones")
    bundled = p.parse_args().bundled
    if bundled:
        from ECFusionLib.weights import load_model

        model, name = load_model("PET-MRI")[0], "pet-mri"
    else:
        model, name = seeded_network(), "seeded"
    sec, mri = inputs()
    with torch.no_grad():
        forward = model(as_tensor(sec), as_tensor(mri)).numpy()
    out = dict(sec=sec, mri=mri, forward=forward,
               fast_forward=model.cpu_runner(torch.float32)(as_tensor(sec), as_tensor(mri)).numpy())
    for run, kw in RUNS.items():
        out[run] = fuse_volume(model, sec, mri, device="cpu", **kw)[0]
    np.savez_compressed(HERE / f"reference_outputs_{name}.npz", **out)
    made = {**fingerprint(), "weights_digest": state_digest(model),
            "weights": "bundled PET-MRI" if bundled else f"seeded: helpers.seeded_network({SEED})"}
    (HERE / f"reference_outputs_{name}.json").write_text(json.dumps(made, indent=2) + "\n")


if __name__ == "__main__":
    main()
