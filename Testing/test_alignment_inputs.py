"""The alignment check and the input warnings that need image content (issue 18): real heads where available."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from real_data import real3d_dir

from ECFusionLib.geometry import resample_onto
from ECFusionLib.input_checks import input_warnings, suggest_ct_window
from ECFusionLib.registration import MISALIGNED_MM, alignment_check


def real(name: str) -> sitk.Image:
    folder, why = real3d_dir()
    if folder is None:
        pytest.skip(why)
    return sitk.ReadImage(str(folder / name), sitk.sitkFloat32)


def moved(img: sitk.Image, shift_mm: float, degrees: float) -> sitk.Image:
    """``img`` resampled after a rigid motion about its centre: rotation about the S axis, shift along (1,1,1)."""
    t = sitk.Euler3DTransform()
    t.SetCenter(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()]))
    t.SetRotation(0.0, 0.0, np.deg2rad(degrees))
    t.SetTranslation([shift_mm / np.sqrt(3)] * 3)
    return sitk.Resample(img, img, t, sitk.sitkLinear, 0.0)


@pytest.mark.parametrize("shift, degrees, expected", [(0, 0, False), (2, 0, False), (0, 3, False), (10, 0, True)])
def test_alignment_check_on_one_grid_warns_only_when_misaligned(shift, degrees, expected):
    """The ICBM152 T1 and the real PET share one 2 mm grid: aligned (and 2 mm / 3 degrees off) is not reported,
    10 mm is. The old mask check reported the aligned pair of Colin27 and this PET (containment 0.78)."""
    t1, pet = real("T1_ICBM152avg.nii.gz"), real("PET_H2O15_avg12.nii.gz")
    report = alignment_check(t1, resample_onto(moved(pet, shift, degrees), t1), label="case 7")
    assert report.misaligned is expected, report
    if expected:
        assert report.residual_mm >= MISALIGNED_MM and report.message().startswith("case 7: ")


def test_swapped_and_ct_as_pet_on_one_grid_are_reported():
    """On one grid (no voxel-size hint): a PET given as the MRI, and a sharp CT-like volume with no negative values
    given as the PET, each get a warning naming the fix; the right inputs get none."""
    t1, pet = real("T1_ICBM152avg.nii.gz"), real("PET_H2O15_avg12.nii.gz")
    from ECFusionLib.phantom import make_phantom

    ph = make_phantom(size=(40, 48, 40), seed=3, spacing=4.5)
    mri = sitk.Image(ph["MRI"])
    for key in mri.GetMetaDataKeys():  # no modality labels: the content alone tells
        mri.EraseMetaData(key)
    ct = resample_onto(ph["CT"], mri)
    ct_positive = sitk.Cast(ct, sitk.sitkFloat32) + 1024.0  # a CT stored without its offset: no negative values
    assert input_warnings("PET-MRI", t1, pet) == []
    assert input_warnings("PET-MRI", mri, resample_onto(ph["PET"], mri)) == []
    swapped = input_warnings("PET-MRI", resample_onto(ph["PET"], mri), mri)
    assert any("swapped" in w for w in swapped), swapped
    as_pet = input_warnings("PET-MRI", mri, ct_positive)
    assert any("--task CT-MRI" in w for w in as_pet), as_pet


def test_ct_not_in_hu_gets_a_suggested_window_once_and_not_after_one_is_given(phantom):
    """A CT stored as HU + 1024: the warning suggests a window from its histogram near (150, 1064), the default
    HU window moved by the offset; with --ct-window/--ct-level given it is not said."""
    ct = sitk.Cast(phantom["CT"], sitk.sitkFloat32) + 1024.0
    ct.SetSpacing((0.9, 0.9, 2.0))
    window, level = suggest_ct_window(sitk.GetArrayFromImage(ct))
    assert 100 <= window <= 200 and 1024 <= level <= 1100
    warnings = input_warnings("CT-MRI", phantom["MRI"], ct)
    hu = [w for w in warnings if "Hounsfield" in w]
    assert len(hu) == 1 and f"--ct-window {window:.4g} --ct-level {level:.4g}" in hu[0]
    assert not any("Hounsfield" in w for w in input_warnings("CT-MRI", phantom["MRI"], ct, ct_window_given=True))
