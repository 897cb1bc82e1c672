#!/usr/bin/env python3
"""Fuse real heads with the torch backend (fp32) and with ONNX Runtime and compare the outputs voxel by voxel.

    python scripts/compare_backends.py --anatomical T1.nii.gz --functional PET.nii.gz [--functional SPECT.nii.gz ...]

The task comes from the functional file's name (PET/SPECT/CT in it) or --task. Prints, per pair, the mean and
maximum absolute difference in grey levels over every voxel and channel of the fused output, the fraction
of voxels that differ, the largest difference of the output's luminance Y (the fused grey value: one grey level
of fused Y can move a saturated colour's other channels by several levels when ``colour.recolour`` scales its
chroma), and each backend's seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ECFusionLib.colour import luminance  # noqa: E402
from ECFusionLib.fusion import FusionSettings, fuse_images  # noqa: E402
from ECFusionLib.tasks import TASK_NAMES  # noqa: E402


def task_from_name(path: Path) -> str:
    """The task whose second modality appears in the file name (PET, SPECT, CT)."""
    name = path.name.upper()
    for task in TASK_NAMES:
        if name.startswith(task.split("-")[0]) or f"_{task.split('-')[0]}" in name:
            return task
    raise SystemExit(f"cannot tell the task of {path}: pass --task")


def compare(anatomical: Path, functional: Path, task: str) -> dict:
    mri, second = sitk.ReadImage(str(anatomical)), sitk.ReadImage(str(functional))
    out, seconds = {}, {}
    for backend in ("torch", "onnxruntime"):
        settings = FusionSettings(task=task, backend=backend, precision="fp32", device="cpu")
        t0 = time.perf_counter()
        out[backend] = sitk.GetArrayFromImage(fuse_images(mri, second, settings).image).astype(np.int16)
        seconds[backend] = time.perf_counter() - t0
    diff = np.abs(out["torch"] - out["onnxruntime"])
    y = [luminance(o) if o.ndim == 4 else o for o in out.values()]  # RGB volumes: their Y
    return {"max_y": float(np.abs(y[0] - y[1]).max()), "pair": f"{anatomical.name} + {functional.name} ({task})", "shape": out["torch"].shape,
            "mean": float(diff.mean()), "max": int(diff.max()), "differ": float((diff > 0).mean()),
            "torch_s": seconds["torch"], "onnxruntime_s": seconds["onnxruntime"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anatomical", type=Path, action="append", required=True)
    p.add_argument("--functional", type=Path, action="append", required=True)
    p.add_argument("--task", choices=TASK_NAMES)
    args = p.parse_args(argv)
    print("| pair | output shape | mean abs diff | max abs diff | voxels differing | max abs diff of Y | torch fp32 s | ONNX Runtime s |")
    print("|---|---|---|---|---|---|---|---|")
    for anatomical in args.anatomical:
        for functional in args.functional:
            r = compare(anatomical, functional, args.task or task_from_name(functional))
            print(f"| {r['pair']} | {'x'.join(map(str, r['shape']))} | {r['mean']:.4f} | {r['max']} | "
                  f"{100 * r['differ']:.4f} % | {r['max_y']:.2f} | {r['torch_s']:.1f} | {r['onnxruntime_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
