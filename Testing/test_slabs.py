"""Bounded memory: the pre- and post-processing around the engine run slab by slab (slabs.py), with the same
output whatever the slab size, and without whole-volume float copies (numpy's allocations traced)."""
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ECFusionLib import slabs
from ECFusionLib.fusion import FusionSettings, fuse_images


def brightest(second, anatomical):  # a stand-in network (torch tensors in [-1, 1]): fast, and position-exact
    return torch.maximum(second, anatomical)


def _fuse(mri, second, task, transform=None, **settings):
    return sitk.GetArrayFromImage(fuse_images(mri, second, FusionSettings(task=task, **settings), model=brightest,
                                              transform=transform).image)


@pytest.mark.parametrize("task, key", [("PET-MRI", "PET"), ("CT-MRI", "CT"), ("SPECT-MRI", "SPECT")])
def test_output_does_not_depend_on_the_slab_size(monkeypatch, phantom, task, key):
    """Slabs of one slice, of 7 slices (a remainder at the end), and the whole volume give one output; also with
    a transform and with an RGB second image on the anatomical grid."""
    mri, second = phantom["MRI"], phantom[key]
    motion = sitk.Euler3DTransform()
    motion.SetRotation(0.05, -0.03, 0.02)
    motion.SetTranslation((3.0, -2.0, 1.0))
    whole = _fuse(mri, second, task), _fuse(mri, second, task, motion)
    per_slice = mri.GetSize()[0] * mri.GetSize()[1]
    for voxels in (1, 7 * per_slice):
        monkeypatch.setattr(slabs, "SLAB_VOXELS", voxels)
        assert np.array_equal(_fuse(mri, second, task), whole[0])
        assert np.array_equal(_fuse(mri, second, task, motion), whole[1])


def test_rgb_second_image_and_other_slice_axes(monkeypatch, phantom):
    mri = phantom["MRI"]
    rgb = sitk.Compose([sitk.Cast(sitk.RescaleIntensity(sitk.Resample(phantom["PET"], mri), 0, v), sitk.sitkUInt8)
                        for v in (255, 180, 90)])
    for axis in ("axial", "coronal", "sagittal"):
        whole = _fuse(mri, rgb, "PET-MRI", axis=axis)
        monkeypatch.setattr(slabs, "SLAB_VOXELS", 3 * 48 * 40)
        assert np.array_equal(_fuse(mri, rgb, "PET-MRI", axis=axis), whole), axis
        monkeypatch.undo()


def test_no_whole_volume_float_copy(monkeypatch):
    """A 200 x 200 x 100 MRI with a coarse PET: numpy's peak allocation while fusing stays near the uint8
    volumes (second Y, MRI, fused Y, RGB: 6 bytes per voxel) plus slab temporaries; a float32 copy of the
    volume alone would be 4 bytes per voxel more, and the whole-volume pipeline peaked at ~40."""
    mri = sitk.GaussianSource(sitk.sitkInt16, [200, 200, 100], sigma=[50, 50, 30], mean=[100, 100, 50], scale=1000)
    pet = sitk.GaussianSource(sitk.sitkFloat32, [50, 50, 25], sigma=[10, 10, 6], mean=[25, 25, 12], scale=5,
                              spacing=[4, 4, 4])
    monkeypatch.setattr(slabs, "SLAB_VOXELS", 200 * 200)
    monkeypatch.setattr(slabs, "ALIGNMENT_VOXELS", 500_000)
    tracemalloc.start()
    try:
        out = fuse_images(mri, pet, FusionSettings(task="PET-MRI", batch_size=4), model=brightest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    voxels = 200 * 200 * 100
    assert out.image.GetNumberOfComponentsPerPixel() == 3 and out.image.GetSize() == (200, 200, 100)
    assert peak / voxels < 9, f"{peak / voxels:.1f} bytes per voxel"


def test_alignment_of_large_volumes_on_a_coarse_grid(monkeypatch, phantom):
    """Above ALIGNMENT_VOXELS the check runs on a block-averaged grid and still tells aligned from moved."""
    mri, pet = phantom["MRI"], phantom["PET"]
    assert slabs.coarse_grid(mri) is mri
    monkeypatch.setattr(slabs, "ALIGNMENT_VOXELS", 10_000)
    coarse = slabs.coarse_grid(mri)
    assert np.prod(coarse.GetSize()) <= 10_000 and np.allclose(
        np.array(coarse.GetSpacing()) * coarse.GetSize(), np.array(mri.GetSpacing()) * mri.GetSize(), atol=1e-3 * 40 * 4.5)
    from ECFusionLib.fusion import _alignment

    motion = sitk.Euler3DTransform()
    motion.SetTranslation((30.0, 0.0, 0.0))
    ok, moved = _alignment(mri, pet, None), _alignment(mri, pet, motion)
    assert ok.containment > moved.containment
