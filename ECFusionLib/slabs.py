"""Slab-wise processing of whole volumes in bounded memory: the pre- and post-processing around the engine
(resampling, intensity mapping, the keep-salient rule, colour) run on slabs of slices, so that no float copy
of a whole volume is ever held; the whole-volume arrays are uint8.

    for idx in slabs(shape, axis):              # numpy index tuples, slabs along the slice axis
        part = resample_region(moving, reference, idx, transform, default)

Each slab's result equals the same region of the whole-volume computation: every step is voxel-wise (the
linear interpolation at a voxel depends on its physical point only), so the output does not depend on
``SLAB_VOXELS``.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import SimpleITK as sitk

SLAB_VOXELS = 1024 * 1024  # voxels per slab (4 slices of 512 x 512): ~4 MB per float32 temporary, ~80 MB in all
ALIGNMENT_VOXELS = 8_000_000  # above this, the alignment check runs on a grid shrunk to about this size


def slabs(shape: tuple[int, ...], axis: int, voxels: int | None = None) -> Iterator[tuple[slice, ...]]:
    """Index tuples cutting an array of ``shape`` into consecutive slabs along ``axis``, about ``voxels``
    (default ``SLAB_VOXELS``) each, at least one slice."""
    voxels = voxels or SLAB_VOXELS
    n = shape[axis]
    per_slice = max(1, math.prod(shape) // max(1, n))
    step = max(1, voxels // per_slice)
    for start in range(0, n, step):
        idx = [slice(None)] * len(shape)
        idx[axis] = slice(start, min(n, start + step))
        yield tuple(idx)


def region(image: sitk.Image, idx: tuple[slice, ...]) -> tuple[list[int], list[int]]:
    """(start index, size) in SimpleITK's (x, y, z) order of the numpy region ``idx`` (z, y, x) of ``image``."""
    size = list(image.GetSize())
    start = [0] * len(size)
    for axis, s in enumerate(idx):
        dim = len(size) - 1 - axis
        lo, hi, _ = s.indices(size[dim])
        start[dim], size[dim] = lo, hi - lo
    return start, size


def resample_region(moving: sitk.Image, reference: sitk.Image, idx: tuple[slice, ...],
                    transform: sitk.Transform | None, default: float) -> np.ndarray:
    """``geometry.resample_onto(moving, reference, transform, default)`` on the region ``idx`` of the reference
    grid only, as a float32 array (k x ... x 3 for RGB). ``moving`` should already be float32 or an integer
    type (exact in float32); the interpolation is done in double either way."""
    start, size = region(reference, idx)
    pixel = sitk.sitkVectorFloat32 if moving.GetNumberOfComponentsPerPixel() > 1 else sitk.sitkFloat32
    f = sitk.ResampleImageFilter()
    f.SetSize(size)
    f.SetOutputOrigin(reference.TransformIndexToPhysicalPoint(start))
    f.SetOutputSpacing(reference.GetSpacing())
    f.SetOutputDirection(reference.GetDirection())
    f.SetTransform(transform or sitk.Transform())
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(default)
    f.SetOutputPixelType(pixel)
    return sitk.GetArrayFromImage(f.Execute(moving))


def float_source(moving: sitk.Image) -> sitk.Image:
    """``moving`` as the resampler should read it: float64 is cast to float32 first (as ``resample_onto`` does);
    integer and float32 images are used as they are (their values are exact in float32: no whole copy)."""
    if moving.GetPixelID() in (sitk.sitkFloat64, sitk.sitkVectorFloat64):
        pixel = sitk.sitkVectorFloat32 if moving.GetNumberOfComponentsPerPixel() > 1 else sitk.sitkFloat32
        return sitk.Cast(moving, pixel)
    return moving


def coarse_grid(image: sitk.Image, voxels: int | None = None) -> sitk.Image:
    """``image`` itself when it has at most ``voxels`` (default ``ALIGNMENT_VOXELS``) voxels, else block-averaged
    (``BinShrink``) by the smallest whole factor per side that brings it under that (same physical extent)."""
    voxels = voxels or ALIGNMENT_VOXELS
    n = math.prod(image.GetSize())
    if n <= voxels:
        return image
    factor = math.ceil((n / voxels) ** (1 / image.GetDimension()))
    return sitk.BinShrink(image, [factor] * image.GetDimension())
