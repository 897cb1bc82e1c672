"""A digital head phantom: an MRI-like T1 volume and matching CT, PET and SPECT volumes.

Everything is generated (no download): nested ellipsoids for scalp, skull, CSF, a folded cortical grey
matter ribbon, white matter and ventricles, plus a hot lesion. Each modality is written on its own grid,
as scanners do: T1 at 1 mm (181 x 217 x 181 by default), CT at 0.9 x 0.9 x 2 mm, PET on a 4 mm grid and
SPECT on 4.4 mm, with offset origins, so that fusing them exercises the resampling. Physical units: mm (LPS).
Deterministic: random numbers come from ``numpy.random.default_rng(seed)`` and, for the PET noise, SimpleITK
with seed ``seed + 1`` (SimpleITK takes seed 0 to mean "the wall clock"). Smoothing is SimpleITK's (no scipy).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

# tissue label ids
BG, SCALP, SKULL, CSF, GM, WM, LESION = range(7)
T1 = {BG: 0, SCALP: 650, SKULL: 120, CSF: 260, GM: 560, WM: 820, LESION: 600}
CT_HU = {BG: -1000, SCALP: 30, SKULL: 1300, CSF: 5, GM: 40, WM: 28, LESION: 45}
FDG = {BG: 0.0, SCALP: 0.8, SKULL: 0.4, CSF: 0.3, GM: 8.0, WM: 3.0, LESION: 16.0}
NOISE_SEED_OFFSET = 1  # SimpleITK's noise filters take seed 0 to mean "the wall clock": never pass 0
PERFUSION = {BG: 0.0, SCALP: 2.0, SKULL: 1.0, CSF: 1.0, GM: 60.0, WM: 25.0, LESION: 90.0}


def label_volume(size=(181, 217, 181), spacing=1.0, seed: int = 0) -> sitk.Image:
    """Tissue labels on an isotropic grid (``spacing`` mm) centred on (0, 0, 0) mm. size is (x, y, z)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing for n in (nz, ny, nx)], indexing="ij")
    # normalised radius of the head ellipsoid (semi-axes 72 x 92 x 82 mm, LPS)
    r = np.sqrt((x / 72.0) ** 2 + (y / 92.0) ** 2 + ((z + 5) / 82.0) ** 2)
    theta, phi = np.arctan2(y, x), np.arctan2(z + 5, np.hypot(x, y))
    folds = 0.025 * np.sin(9 * theta + 2 * rng.random()) * np.cos(7 * phi + 2 * rng.random())
    lab = np.full(r.shape, BG, np.uint8)
    lab[r < 1.0] = SCALP
    lab[r < 0.93] = SKULL
    lab[r < 0.86] = CSF
    lab[r < 0.84] = GM
    lab[r < 0.74 + folds] = WM
    vent = np.sqrt(((np.abs(x) - 9) / 7.0) ** 2 + ((y + 5) / 24.0) ** 2 + ((z - 5) / 12.0) ** 2) < 1.0
    lab[vent & (r < 0.7)] = CSF
    deep_gm = np.sqrt(((np.abs(x) - 22) / 9.0) ** 2 + ((y - 2) / 12.0) ** 2 + ((z + 2) / 10.0) ** 2) < 1.0
    lab[deep_gm] = GM
    lesion = np.sqrt(((x + 35) / 11.0) ** 2 + ((y - 30) / 11.0) ** 2 + ((z - 25) / 11.0) ** 2) < 1.0
    lab[lesion & (r < 0.84)] = LESION
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing([spacing] * 3)
    img.SetOrigin([-(n - 1) / 2 * spacing for n in size])
    return img


def _render(labels: sitk.Image, values: dict, fwhm_mm: float, noise: float, rng, bias: bool = False) -> sitk.Image:
    lab = sitk.GetArrayViewFromImage(labels)
    lut = np.zeros(max(values) + 1, np.float32)
    for k, v in values.items():
        lut[k] = v
    vol = lut[lab]
    if fwhm_mm > 0:
        smooth = sitk.GetImageFromArray(vol)
        smooth.CopyInformation(labels)
        sigma = fwhm_mm / 2.355  # mm
        kernel = 2 * int(4 * sigma / labels.GetSpacing()[0] + 0.5) + 1  # +-4 sigma, as scipy's gaussian_filter
        vol = sitk.GetArrayFromImage(sitk.DiscreteGaussian(smooth, sigma * sigma, kernel, 0.001, True))
    if bias:
        z = np.linspace(-1, 1, vol.shape[0])[:, None, None]
        vol *= (1.0 + 0.08 * z).astype(np.float32)
    if noise > 0:
        vol += rng.normal(0, noise, vol.shape).astype(np.float32) * (lab > 0)
    img = sitk.GetImageFromArray(vol.astype(np.float32))
    img.CopyInformation(labels)
    return img


def _on_grid(img: sitk.Image, spacing, size, origin, pixel=sitk.sitkFloat32, default=0.0) -> sitk.Image:
    ref = sitk.Image([int(s) for s in size], pixel)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetOrigin([float(o) for o in origin])
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, default, pixel)


def make_phantom(size=(181, 217, 181), seed: int = 0, spacing: float = 1.0) -> dict[str, sitk.Image]:
    """{"MRI", "CT", "PET", "SPECT"} images, each on its own grid (see module docstring).

    ``spacing`` scales every grid: size (40, 48, 40) with spacing 4.5 gives the same head on coarse
    grids (small test volumes). The head needs an extent of about 181 x 217 x 181 mm.
    """
    rng = np.random.default_rng(seed)
    labels = label_volume(size, spacing, seed)
    ext = np.array(size, float) * spacing
    s = spacing
    mri = sitk.Cast(sitk.Clamp(_render(labels, T1, 1.5 * s, 12.0, rng, bias=True), lowerBound=0), sitk.sitkInt16)
    ct_hr = _render(labels, CT_HU, 1.0 * s, 6.0, rng)
    ct_sp = np.array((0.9, 0.9, 2.0)) * s
    ct = sitk.Cast(_on_grid(ct_hr, ct_sp, np.ceil(ext / ct_sp), -(ext / 2) + np.array((1.3, -2.1, 0.7)) * s,
                            default=-1000.0), sitk.sitkInt16)
    pet_hr = _render(labels, FDG, 6.0 * s, 0.0, rng)
    pet = _on_grid(pet_hr, [4.0 * s] * 3, np.ceil(ext / (4.0 * s)) + 2, -(ext / 2) - np.array((3.0, 5.0, 2.0)) * s)
    noise = sitk.AdditiveGaussianNoise(pet * 0, 0.15, 0, NOISE_SEED_OFFSET + seed)  # SimpleITK: seed 0 = wall clock
    pet = sitk.Clamp(pet + noise * sitk.Cast(pet > 0.2, sitk.sitkFloat32), lowerBound=0)
    spect_hr = _render(labels, PERFUSION, 11.0 * s, 0.0, rng)
    spect = _on_grid(spect_hr, [4.42 * s] * 3, np.ceil(ext / (4.42 * s)) + 2, -(ext / 2) - np.array((6.0, 2.0, 4.0)) * s)
    pet, spect = sitk.Cast(pet, sitk.sitkFloat32), sitk.Cast(spect, sitk.sitkFloat32)  # before the tags: Cast drops them
    for img, modality in ((mri, "MR"), (ct, "CT"), (pet, "PT"), (spect, "NM")):
        img.SetMetaData("Modality", modality)
    return {"MRI": mri, "CT": ct, "PET": pet, "SPECT": spect}


def write_phantom(folder: str | Path, size=(181, 217, 181), seed: int = 0) -> dict[str, Path]:
    """Write the phantom as NRRD files into ``folder``; returns {modality: path}."""
    from .volume_io import write_image_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, img in make_phantom(size, seed).items():
        paths[name] = write_image_atomic(img, folder / f"phantom_{name.lower()}.nrrd")
    return paths
