"""Geometry: resampling the second volume onto the anatomical grid in physical space, overlap check,
and choosing the slice axis. All with SimpleITK (LPS physical coordinates, mm)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import ECFusionError
from .tasks import AXES  # noqa: F401 - the vocabulary lives in the task registry


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def check_overlap(moving: sitk.Image, reference: sitk.Image) -> None:
    """ECFusionError when ``moving`` and ``reference`` do not overlap in physical space."""
    if overlap_fraction(moving, reference) == 0.0:
        raise ECFusionError(
            "the two volumes do not overlap in physical space (check their origins and orientations, or register "
            "them first); fusing them would give a blank image"
        )


def overlap_fraction(moving: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference grid (sampled on a coarse grid of about 64 points a side) inside ``moving``."""
    shrink = [max(1, s // 64) for s in reference.GetSize()]
    grid = sitk.Image([max(1, s // k) for s, k in zip(reference.GetSize(), shrink)], sitk.sitkUInt8)
    grid.SetSpacing([sp * k for sp, k in zip(reference.GetSpacing(), shrink)])
    grid.SetOrigin(reference.GetOrigin())
    grid.SetDirection(reference.GetDirection())
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    _copy_geometry(moving, ones)
    inside = sitk.Resample(ones, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(sitk.GetArrayViewFromImage(inside).mean())


def _copy_geometry(src: sitk.Image, dst: sitk.Image) -> None:
    dst.SetOrigin(src.GetOrigin())
    dst.SetSpacing(src.GetSpacing())
    dst.SetDirection(src.GetDirection())


def resample_onto(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
                  default: float | None = None) -> sitk.Image:
    """Resample ``moving`` (scalar or RGB) onto ``reference``'s grid with linear interpolation.

    ``transform`` maps points of the reference space to the moving space (ITK convention);
    outside values are ``default`` (the moving image's minimum when None). Volumes that do not
    overlap in space raise ECFusionError instead of giving a blank result.
    """
    if transform is None and same_grid(moving, reference):
        return moving
    if transform is None:
        check_overlap(moving, reference)
    if default is None:
        default = float(sitk.GetArrayViewFromImage(moving).min())
    pixel = sitk.sitkVectorFloat32 if moving.GetNumberOfComponentsPerPixel() > 1 else sitk.sitkFloat32
    return sitk.Resample(sitk.Cast(moving, pixel), reference, transform or sitk.Transform(), sitk.sitkLinear, default, pixel)


def slice_axis(image: sitk.Image, axis: str = "auto") -> int:
    """The numpy array axis (of ``GetArrayFromImage``'s z, y, x order) to slice along.

    'auto'/'axial' = the index axis closest to the patient's superior-inferior direction, 'coronal' to
    anterior-posterior, 'sagittal' to left-right; 'i', 'j', 'k' name index axes directly. 2D images: 0.
    """
    if image.GetDimension() == 2:
        return 0
    if axis not in AXES:
        raise ECFusionError(f"unknown slice axis '{axis}': use one of {', '.join(AXES)}")
    if axis in ("i", "j", "k"):
        return 2 - "ijk".index(axis)
    lps = {"auto": 2, "axial": 2, "coronal": 1, "sagittal": 0}[axis]
    d = np.array(image.GetDirection()).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(d[lps, :])))
