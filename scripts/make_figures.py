#!/usr/bin/env python3
"""Figures of ECFusion on real 3D heads, one PNG per task, made through the `ecfusion fuse` command.

    python scripts/make_figures.py [--real3d ../shared/data/real3d] [--out docs/figures] [--colin ch2.nii.gz]

Each figure is a 3 x 4 montage: rows axial / coronal / sagittal through one point; columns MRI, the second image
as it is shown (PET/SPECT through its default colour map and window, CT through its default window), ECFusion
(default settings), and a 50/50 blend of the MRI and the displayed second image (what a viewer shows with the
second image as a foreground at opacity 0.5). Under each, in the JSON line printed: anatomy kept
(``metrics.anatomy_vs_blend``: fused and blend, whole head and where the second image is bright) and, for CT-MRI,
bone kept.
Radiological display: patient left on the image's right; anterior up (axial), superior up (coronal/sagittal),
anterior on the left (sagittal).
- PET-MRI: the single-subject Colin27 T1 (1 mm; ``--colin``, default: found or fetched by Testing/real_data.py)
  + the mean of 12 real H2-15O PET scans (PET-Heat).
- SPECT-MRI: the same T1 + the mean of 90 real HMPAO SPECT scans (PET-Rainbow2).
- CT-MRI: no real CT is available here: the project's DIGITAL PHANTOM (MRI + CT), labelled as such.
The script also prints the slice-to-slice banding (``metrics.banding_ratio`` along the fused slice axis) of each
fused volume against its inputs. The data are read in place; only the PNGs are written to ``--out``.
No plotting library: PNGs are written with SimpleITK.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

TILE = 140  # pixels per montage tile (longest side): 3 x 4 tiles of a 1 mm head stay under 300 KB


def run_fuse(mri: Path, second: Path, task: str, out: Path, extra=()) -> float:
    """`ecfusion fuse` as a user would run it; returns its wall time (s)."""
    cmd = [sys.executable, "-m", "ECFusionLib.cli", "fuse", "--anatomical", str(mri), "--functional", str(second),
           "--task", task, "--output", str(out), "--quiet", *extra]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.time() - t0


def display_volumes(mri_path: Path, second_path: Path, fused_path: Path, task: str):
    """(MRI grey u8, second as displayed RGB u8, fused RGB u8), each z, y, x(, 3) on the MRI grid in LPS order,
    with the same intensity mappings ``fuse_images`` uses."""
    from ECFusionLib.geometry import resample_onto
    from ECFusionLib.intensity import ANATOMICAL_MAPPERS, second_mapper
    from ECFusionLib.tasks import task_spec

    mri = sitk.ReadImage(str(mri_path), sitk.sitkFloat32)
    second = sitk.ReadImage(str(second_path), sitk.sitkFloat32)
    fused = sitk.ReadImage(str(fused_path))
    moved = resample_onto(second, mri)
    lps = lambda img: sitk.DICOMOrient(img, "LPS")  # noqa: E731 - array axes z (S), y (P), x (L)
    spec = task_spec(task)  # mapped as fuse_images maps them (intensity.SECOND_MAPPERS / ANATOMICAL_MAPPERS)
    mri_u8, _ = ANATOMICAL_MAPPERS[spec.anatomical_mapping](sitk.GetArrayFromImage(mri))
    sec_rgb, sec_u8, _ = second_mapper(spec, sitk.GetArrayViewFromImage(second))(sitk.GetArrayFromImage(moved))
    if sec_rgb is None:  # a grey second image (CT)
        sec_rgb = np.repeat(sec_u8[..., None], 3, -1)
    def as_lps(arr, vector):
        img = sitk.GetImageFromArray(arr, isVector=vector)
        img.CopyInformation(mri)
        return sitk.GetArrayFromImage(lps(img))
    f = sitk.GetArrayFromImage(lps(fused))
    if f.ndim == 3:
        f = np.repeat(f[..., None], 3, -1)
    return as_lps(mri_u8, False), as_lps(sec_rgb, True), f, mri.GetSpacing()


def views(vol: np.ndarray, point) -> list[np.ndarray]:
    """Axial, coronal, sagittal planes (radiological display) of an LPS z, y, x(, c) array through ``point`` (z, y, x)."""
    z, y, x = point
    ax = vol[z]  # rows P (anterior up), cols L (patient left on the right)
    co = vol[::-1, y]  # rows S up, cols L
    sa = vol[::-1, :, x]  # rows S up, cols P (anterior on the left)
    return [ax, co, sa]


def fit(tile: np.ndarray, spacing_rc) -> np.ndarray:
    """Resample a 2D (or 2D x 3) tile to physical aspect, longest side ``TILE`` pixels, centred on a black square."""
    h, w = tile.shape[:2]
    ph, pw = h * spacing_rc[0], w * spacing_rc[1]
    scale = TILE / max(ph, pw)
    nh, nw = max(1, int(round(ph * scale))), max(1, int(round(pw * scale)))
    rows = np.minimum((np.arange(nh) / scale / spacing_rc[0]).astype(int), h - 1)
    cols = np.minimum((np.arange(nw) / scale / spacing_rc[1]).astype(int), w - 1)
    out = np.zeros((TILE, TILE, 3), np.uint8)
    t = tile[rows][:, cols]
    if t.ndim == 2:
        t = np.repeat(t[..., None], 3, -1)
    r0, c0 = (TILE - nh) // 2, (TILE - nw) // 2
    out[r0:r0 + nh, c0:c0 + nw] = t
    return out


def montage(columns: list[np.ndarray], point, spacing) -> np.ndarray:
    """3 x len(columns) montage: rows axial / coronal / sagittal, 4-pixel grey gutters."""
    sx, sy, sz = spacing  # LPS array: x = cols, y = rows (axial)
    spacings = [(sy, sx), (sz, sx), (sz, sy)]
    gut = 4
    rows = []
    for r in range(3):
        tiles = [fit(views(c, point)[r], spacings[r]) for c in columns]
        row = tiles[0]
        for t in tiles[1:]:
            row = np.concatenate([row, np.full((TILE, gut, 3), 80, np.uint8), t], 1)
        rows.append(row)
    out = rows[0]
    for row in rows[1:]:
        out = np.concatenate([out, np.full((gut, out.shape[1], 3), 80, np.uint8), row], 0)
    return out


def write_png(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))


def measures(mri_u8, sec_rgb, fused_rgb, task: str) -> dict:
    """Anatomy kept (fused and 50/50 blend) and, for CT-MRI, bone kept, on the LPS arrays (axial slices: axis 0)."""
    from ECFusionLib import metrics as M
    from ECFusionLib.colour import luminance
    from ECFusionLib.evaluation import check_name

    sec_y, fused_y = luminance(sec_rgb), luminance(fused_rgb)
    bone = check_name(task) == "bone_kept"  # the task's image check (TaskSpec.image_check): CT-MRI
    head = (mri_u8 > 4) & ~M.bone_zone(sec_y) if bone else None  # CT: the MRI's anatomy outside bone
    a = M.anatomy_vs_blend(mri_u8, fused_y, sec_y, axis=0, head=head)
    out = {k: round(v, 3) for k, v in a.items()}
    if bone:
        out["bone_kept"] = round(M.bone_kept(sec_y, mri_u8, fused_y), 3)
        out["bone_kept_blend"] = round(M.bone_kept(sec_y, mri_u8, M.blend_y(mri_u8, sec_y)), 3)
    return out


def figure(name: str, mri: Path, second: Path, task: str, out_dir: Path, tmp: Path, point=None) -> dict:
    from ECFusionLib import metrics as M
    from ECFusionLib.colour import luminance, to_uint8

    fused_path = tmp / f"{name}.nrrd"
    secs = run_fuse(mri, second, task, fused_path)
    mri_u8, sec_rgb, fused_rgb, spacing = display_volumes(mri, second, fused_path, task)
    if point is None:
        point = tuple(s // 2 for s in mri_u8.shape)
    blend = to_uint8(M.blend_rgb(mri_u8, sec_rgb))
    write_png(montage([mri_u8, sec_rgb, fused_rgb, blend], point, spacing), out_dir / f"{name}.png")
    band = M.banding_ratio(luminance(fused_rgb), luminance(sec_rgb), mri_u8, axis=0)  # axial slices: LPS z
    info = {"figure": f"{name}.png", "task": task, "shape_zyx": list(mri_u8.shape), "point_zyx": list(point),
            "fuse_s": round(secs, 1), "measures": measures(mri_u8, sec_rgb, fused_rgb, task),
            "banding_axial": {k: round(v, 3) for k, v in band.items()}}
    print(json.dumps(info))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real3d", default=str(ROOT.parent / "shared" / "data" / "real3d"))
    p.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    p.add_argument("--colin", help="Colin27 T1 (ch2.nii.gz from mricron-data); default: Testing/real_data.py's")
    p.add_argument("--phantom-spacing", type=float, default=1.5, help="mm; the CT-MRI phantom's MRI grid")
    args = p.parse_args(argv)
    from ECFusionLib.tasks import task_of_modality

    real, out = Path(args.real3d), Path(args.out)
    colin = Path(args.colin) if args.colin else None
    if colin is None:
        sys.path.insert(0, str(ROOT / "Testing"))
        from real_data import colin27_t1

        colin, why = colin27_t1()
        if colin is None:
            p.error(f"{why}; pass --colin ch2.nii.gz")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        pet, spect, ct = (task_of_modality(m) for m in ("PET", "SPECT", "CT"))
        figure("pet-mri_colin27", colin, real / "PET_H2O15_avg12.nii.gz", pet, out, tmp)
        figure("spect-mri_colin27", colin, real / "SPECT_HMPAO_avg90.nii.gz", spect, out, tmp)
        from ECFusionLib.phantom import make_phantom

        s = args.phantom_spacing
        ph = make_phantom(size=tuple(int(round(n / s)) for n in (181, 217, 181)), seed=0, spacing=s)
        for k in ("MRI", "CT"):
            sitk.WriteImage(ph[k], str(tmp / f"phantom_{k.lower()}.nrrd"))
        figure("ct-mri_phantom", tmp / "phantom_mri.nrrd", tmp / "phantom_ct.nrrd", ct, out, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
