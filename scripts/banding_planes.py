#!/usr/bin/env python3
"""Slice-to-slice banding of 3D fusion, and what fusing along three orthogonal axes and averaging would change.

    python scripts/banding_planes.py [--real3d ../shared/data/real3d] [--threads 1]

For the real3d head (ICBM152 T1 + PET / SPECT) and the digital phantom (MRI + CT, MRI + PET), on the MRI grid:
fuses the intensity-mapped volumes with the bundled weights along the axial axis (what `ecfusion fuse` does) and
along all three axes (mean of the three fused volumes), and prints for each: wall time, banding
(``metrics.banding_ratio``: mean |second difference| across slices, fused / max(inputs)) along each array axis,
mean Qabf and SSIM over the axial slices with content, and the image check (bone / hot spots kept). The
keep-salient rule is applied after each, as in ``fuse_images``. A measurement, not a shipped option.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def mapped_inputs(mri_img, second_img, task):
    """(second u8 (CT or functional Y), MRI u8) on the MRI grid, z y x, mapped as ``fuse_images`` maps them."""
    from ECFusionLib.geometry import resample_onto
    from ECFusionLib.intensity import ANATOMICAL_MAPPERS, second_mapper
    from ECFusionLib.tasks import task_spec

    spec = task_spec(task)
    moved = sitk.GetArrayFromImage(resample_onto(second_img, mri_img))
    _, sec, _ = second_mapper(spec, sitk.GetArrayViewFromImage(second_img))(moved)
    mri, _ = ANATOMICAL_MAPPERS[spec.anatomical_mapping](sitk.GetArrayFromImage(mri_img))
    return sec, mri


def slice_scores(sec, mri, fused) -> dict:
    from ECFusionLib import metrics as M

    q, s = [], []
    for k in range(fused.shape[0]):
        if (sec[k] > 4).mean() > 0.05 and (mri[k] > 4).mean() > 0.05:
            a, b, f = (x[k].astype(np.float64) for x in (sec, mri, fused))
            q.append(M.qabf(a, b, f))
            s.append(M.ssim(a, b, f))
    return {"Qabf_axial": round(float(np.mean(q)), 4), "SSIM_axial": round(float(np.mean(s)), 4)}


def measure(name, mri_img, second_img, task) -> list[dict]:
    from ECFusionLib import metrics as M
    from ECFusionLib.engine import fuse_volume
    from ECFusionLib.evaluation import check_value
    from ECFusionLib.salient import keep_salient
    from ECFusionLib.weights import load_model

    model, _ = load_model(task)
    sec, mri = mapped_inputs(mri_img, second_img, task)
    out, fused = [], {}
    for axis in (0, 1, 2):
        t0 = time.time()
        fused[axis] = keep_salient(fuse_volume(model, sec, mri, axis=axis, device="cpu")[0], sec, task, anatomical=mri)
        fused[f"t{axis}"] = time.time() - t0
    three = np.rint((fused[0].astype(np.float32) + fused[1] + fused[2]) / 3)
    for label, vol, secs in (("1 plane (axial)", fused[0], fused["t0"]),
                             ("3 planes (mean)", three, fused["t0"] + fused["t1"] + fused["t2"])):
        check = check_value(task, sec, mri, vol)  # the task's image check (bone kept / hot spots kept)
        row = {"volume": name, "task": task, "planes": label, "shape_zyx": list(vol.shape), "fuse_s": round(secs, 1),
               **{f"banding_{ax}": round(M.banding_ratio(vol, sec, mri, axis=i)["ratio"], 3)
                  for i, ax in enumerate(("z", "y", "x"))},
               **slice_scores(sec, mri, vol), "check": round(check, 3)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real3d", default=str(ROOT.parent / "shared" / "data" / "real3d"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from ECFusionLib.phantom import make_phantom

    real = Path(args.real3d)
    t1 = sitk.ReadImage(str(real / "T1_ICBM152avg.nii.gz"), sitk.sitkFloat32)
    from ECFusionLib.tasks import task_of_modality

    for f, modality in (("PET_H2O15_avg12.nii.gz", "PET"), ("SPECT_HMPAO_avg90.nii.gz", "SPECT")):
        measure("real3d ICBM152", t1, sitk.ReadImage(str(real / f), sitk.sitkFloat32), task_of_modality(modality))
    ph = make_phantom(size=(121, 145, 121), seed=0, spacing=1.5)
    for modality in ("CT", "PET"):
        measure("phantom 1.5 mm", ph["MRI"], ph[modality], task_of_modality(modality))
    return 0


if __name__ == "__main__":
    sys.exit(main())
