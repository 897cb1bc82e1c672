import numpy as np
import pytest
import SimpleITK as sitk

from ECFusionLib.errors import ECFusionError
from ECFusionLib.geometry import overlap_fraction, resample_onto, slice_axis
from ECFusionLib.intensity import map_ct, map_functional, map_mri


def test_ct_window_default_and_custom():
    hu = np.array([-1000.0, -35.0, 40.0, 115.0, 1500.0])
    u8, info = map_ct(hu)
    assert u8.tolist() == [0, 0, 128, 255, 255]
    assert info["window"] == 150 and info["level"] == 40
    u8b, info_b = map_ct(hu, window=2000, level=500)
    assert u8b[-1] == 255 and map_ct(np.array([1000.0]), 2000, 500)[0][0] == 191 and info_b["window"] == 2000


def test_mri_percentiles_ignore_outliers():
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 50, 50), np.float32)
    vol[:, 10:40, 10:40] = rng.normal(500, 20, (20, 30, 30))
    vol[0, 0, 0] = 1e6  # a single hot voxel must not squash the image
    u8, info = map_mri(vol)
    assert info["low"] == 0.0 and 1050 < info["high"] < 1150  # all tissue: 2.2 x its median (below)
    assert 100 < u8[5, 20, 20] < 135 and u8[5, 0, 5] == 0


def test_mri_tissue_median_is_mapped_as_in_training_with_or_without_the_scalp():
    """A skull-stripped brain (every voxel tissue) would map its white matter near white with the 99.5th
    percentile as the top (ch2bet: tissue median at 196 of 255, where the AANLIB training MRIs have 92-139): the
    PET colour then does not fit under the fused luminance and lesions were 0.36-1.0x as visible as in a blend.
    The top is at least 2.2x the tissue median (``intensity.mri_range``); a whole head, whose scalp fat sets a
    higher 99.5th percentile, maps as before."""
    from ECFusionLib.intensity import MRI_MEDIAN_HEADROOM, mri_range, robust_range

    rng = np.random.default_rng(2)
    head = np.zeros((30, 60, 60), np.float32)
    head[:, 5:55, 5:55] = 1300.0  # scalp fat, brighter than the brain
    head[:, 10:50, 10:50] = rng.normal(500, 40, (30, 40, 40))  # the brain
    brain = head.copy()
    brain[head == 1300.0] = 0.0  # skull-stripped: the brain in a black background
    assert mri_range(head) == robust_range(head)  # the scalp sets the top: unchanged
    low, high = mri_range(brain)
    assert high == pytest.approx(MRI_MEDIAN_HEADROOM * np.median(brain[brain > 0.1 * brain.max()]), rel=0.02)
    assert high > 1.5 * robust_range(brain)[1]
    assert np.median(map_mri(brain)[0][:, 10:50, 10:50]) < 128 and np.median(map_mri(head)[0][:, 10:50, 10:50]) < 128


def test_functional_colormap_records_settings():
    vals = np.linspace(0, 10, 1000).reshape(10, 100)
    rgb, y, info = map_functional(vals, "PET", colormap="PET-Heat", window=10, level=5)
    assert rgb.shape == (10, 100, 3) and y.shape == (10, 100)
    assert info == {"modality": "PET", "method": "colormap", "colormap": "PET-Heat", "window": 10.0, "level": 5.0}
    assert y[0, 0] == 0 and y[-1, -1] == 255


def test_default_functional_window_puts_normal_tissue_at_the_knee_and_ignores_a_small_lesion():
    """The default PET/SPECT window: from the 0.5th percentile, the tissue's 99th percentile at the colour map's
    luminance knee (PET-Heat: 0.33 of the map; grey: 0.8). A small hot lesion (0.05 % of the voxels, 3x) does not
    move it (the old 99.99th percentile top did: a lesion dimmed the whole brain), and the lesion lies above the
    knee, in the map's top colours."""
    from ECFusionLib.intensity import default_window_level, luminance_knee

    assert luminance_knee("PET-Heat") == pytest.approx(84 / 255)
    assert luminance_knee(None) == pytest.approx(0.8, abs=0.005)
    rng = np.random.default_rng(1)
    tissue = rng.uniform(1.0, 2.0, (40, 50, 50)).astype(np.float32)
    window, level = default_window_level(tissue, table="PET-Heat")
    top = np.percentile(tissue, 99)
    assert (level - window / 2) == pytest.approx(np.percentile(tissue, 0.5), rel=1e-3)
    assert (top - (level - window / 2)) / window == pytest.approx(luminance_knee("PET-Heat"), rel=1e-3)
    lesioned = tissue.copy()
    lesioned[:1, :5, :10] = 6.0  # 50 voxels of 100,000
    assert default_window_level(lesioned, table="PET-Heat") == pytest.approx((window, level), rel=2e-3)
    assert default_window_level(tissue, 3.0, 2.0, "PET-Heat") == (3.0, 2.0)  # given values win


def _img(arr, spacing=(1, 1, 1), origin=(0, 0, 0), direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_resample_respects_physical_space_with_oblique_direction():
    """A slab at physical x in [10, 20) mm, moved onto a rotated, anisotropic grid, lands where
    the reference grid's own index-to-physical mapping says it should."""
    angle = np.deg2rad(20)
    rot = [np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1]
    ref = _img(np.zeros((10, 40, 40), np.float32), spacing=(1.0, 1.0, 2.0), origin=(-5, -5, 0), direction=rot)
    moving = np.zeros((12, 30, 80), np.float32)  # z, y, x; covers x in [-10, 30), y in [-20, 40), z in [-1, 23)
    phys_x = -10 + np.arange(80) * 0.5
    moving[:, :, (phys_x >= 10) & (phys_x < 20)] = 100.0
    out = resample_onto(_img(moving, spacing=(0.5, 2.0, 2.0), origin=(-10, -20, -1)), ref)
    assert out.GetSize() == ref.GetSize() and out.GetDirection() == ref.GetDirection()
    arr = sitk.GetArrayFromImage(out)
    k, j, i = np.indices(arr.shape)
    d = np.array(rot).reshape(3, 3)
    idx_mm = np.stack([i * 1.0, j * 1.0, k * 2.0])
    px, py = (d @ idx_mm.reshape(3, -1)).reshape(3, *arr.shape)[:2] + np.array([-5, -5])[:, None, None, None]
    inside_y = (py > -19) & (py < 38)
    hot = inside_y & (px > 10.5) & (px < 19.5)
    cold = inside_y & ((px < 9.5) | (px > 20.5)) & (px > -9)
    assert hot.sum() > 500 and cold.sum() > 500
    assert np.allclose(arr[hot], 100.0) and np.allclose(arr[cold], 0.0)


def test_non_overlapping_volumes_are_an_error():
    a = _img(np.ones((5, 5, 5), np.float32))
    b = _img(np.ones((5, 5, 5), np.float32), origin=(500, 0, 0))
    assert overlap_fraction(b, a) == 0.0
    with pytest.raises(ECFusionError, match="do not overlap"):
        resample_onto(b, a)


def test_slice_axis_follows_direction():
    img = _img(np.zeros((4, 5, 6), np.float32))
    assert slice_axis(img, "auto") == 0  # k is superior-inferior
    assert slice_axis(img, "sagittal") == 2 and slice_axis(img, "coronal") == 1
    # a volume stored sagittally: index k runs left-right
    sag = _img(np.zeros((4, 5, 6), np.float32), direction=[0, 0, 1, 1, 0, 0, 0, 1, 0])
    assert slice_axis(sag, "axial") == 1
    with pytest.raises(ECFusionError):
        slice_axis(img, "diagonal")
