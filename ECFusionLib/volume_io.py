"""Reading and writing images with SimpleITK: validation with clear errors, atomic writes.

Supported: NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz), MetaImage (.mha/.mhd) volumes and PNG images.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ECFusionError

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
IMAGE_SUFFIXES = VOLUME_SUFFIXES + (".png",)
# single-file formats only: a header + data pair (.nhdr/.mhd) cannot be renamed into place atomically
OUTPUT_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".png")


def full_suffix(path: str | Path) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def read_image(path: str | Path, *, allow_rgb: bool = False, what: str = "image") -> sitk.Image:
    """Read and validate one image.

    Errors (ECFusionError) for: a missing or unreadable file, more than 3 dimensions, a vector
    image other than RGB (3 components, when ``allow_rgb``), NaN/Inf values, a constant image.
    """
    path = Path(path)
    if not path.is_file():
        raise ECFusionError(f"{what} file not found: {path}")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ECFusionError(f"cannot read {what} {path}: {msg}. Use an NRRD, NIfTI, MHA or PNG file.") from exc
    check_image(img, f"{what} {path}", allow_rgb=allow_rgb)
    return img


def check_image(img: sitk.Image, what: str, *, allow_rgb: bool = False) -> None:
    """Validate an in-memory image the same way as ``read_image``."""
    if img.GetDimension() > 3:
        raise ECFusionError(
            f"{what} is {img.GetDimension()}D; a 2D or 3D image is needed. Extract one time frame first "
            "(e.g. a static PET frame)."
        )
    ncomp = img.GetNumberOfComponentsPerPixel()
    if ncomp != 1 and not (allow_rgb and ncomp == 3):
        allowed = "a scalar image or an RGB (3-component) image" if allow_rgb else "a scalar (single-component) image"
        raise ECFusionError(f"{what} has {ncomp} components per voxel; expected {allowed}.")
    arr = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ECFusionError(f"{what} contains {bad} NaN or infinite values; replace them (e.g. with 0) before fusing.")
    if arr.size == 0 or arr.min() == arr.max():
        raise ECFusionError(f"{what} is constant (every voxel is {arr.flat[0] if arr.size else 'empty'}); there is nothing to fuse.")


def check_writable(path: str | Path) -> Path:
    """Fail early, before any work, if ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if full_suffix(path) not in OUTPUT_SUFFIXES:
        raise ECFusionError(f"output {path}: unsupported file type; use one of {', '.join(OUTPUT_SUFFIXES)}")
    if not folder.is_dir():
        raise ECFusionError(f"output folder {folder} does not exist; create it first")
    try:  # a real write test: permissions, read-only file systems and quotas all show up here
        fd, probe = tempfile.mkstemp(prefix=".ecfusion-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ECFusionError(f"output folder {folder} is not writable ({exc.strerror}); choose another output location") from exc
    return path


def write_image_atomic(img: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    path = check_writable(path)
    suffix = full_suffix(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(img, tmp, useCompression=compress)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, RuntimeError):
            raise ECFusionError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from exc
        raise
    return path
