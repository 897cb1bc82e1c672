import json

import numpy as np
import pytest
import SimpleITK as sitk

from ECFusionLib.colour import rgb_to_ycbcr
from ECFusionLib.engine import AIR_LEVEL, MARGIN, content_box, cpu_has_bf16, fuse_volume
from ECFusionLib.errors import CancelledError, ECFusionError
from ECFusionLib.fusion import FusionSettings, fuse_images
from ECFusionLib.geometry import resample_onto

from helpers import array, random_volumes


def _vols(shape=(6, 40, 52), seed=0):
    return random_volumes(shape, seed)


def test_engine_is_deterministic_and_reports_progress(seeded_model):
    a, b = _vols()
    seen = []
    f1, info = fuse_volume(seeded_model, a, b, device="cpu", batch_size=1, progress=lambda k, n: seen.append((k, n)))
    f2, _ = fuse_volume(seeded_model, a, b, device="cpu")
    assert f1.dtype == np.uint8 and f1.shape == a.shape
    assert np.array_equal(f1, f2)
    assert seen[0] == (0, 6) and seen[-1] == (6, 6) and len(seen) == 7
    assert info.device == "cpu" and info.precision == ("bf16" if cpu_has_bf16() else "fp32")  # "auto"
    _, bf_info = fuse_volume(seeded_model, a[:1], b[:1], device="cpu", precision="bf16")
    assert bf_info.precision == ("bf16" if cpu_has_bf16() else "fp32")
    _, f32_info = fuse_volume(seeded_model, a[:1], b[:1], device="cpu", precision="fp32")
    assert f32_info.precision == "fp32"
    with pytest.raises(ECFusionError, match="precision"):
        fuse_volume(seeded_model, a[:1], b[:1], device="cpu", precision="fp16")


@pytest.mark.slow
def test_engine_slices_along_any_axis(seeded_model):
    a, b = _vols((5, 24, 20))
    f0, _ = fuse_volume(seeded_model, a, b, axis=0, device="cpu", fast=False)
    f2, info = fuse_volume(seeded_model, a, b, axis=2, device="cpu", batch_size=3, fast=False)
    assert f2.shape == a.shape and info.slices == 20
    # slice 7 along axis 2 equals fusing that 2D slice alone
    alone, _ = fuse_volume(seeded_model, a[:, :, 7], b[:, :, 7], device="cpu", fast=False)
    assert np.abs(f2[:, :, 7].astype(int) - alone.astype(int)).max() <= 1
    assert not np.array_equal(f0, f2)  # a different slicing direction is a different result


@pytest.mark.slow
def test_batch_size_does_not_change_the_result(seeded_model):
    a, b = _vols((7, 32, 32), seed=2)
    f1, _ = fuse_volume(seeded_model, a, b, device="cpu", batch_size=1, fast=False)
    f4, _ = fuse_volume(seeded_model, a, b, device="cpu", batch_size=4, fast=False)
    assert np.abs(f1.astype(int) - f4.astype(int)).max() <= 1


def test_cancel_stops_between_batches(seeded_model):
    a, b = _vols()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CancelledError):
        fuse_volume(seeded_model, a, b, device="cpu", batch_size=1, cancel=cancel)
    assert len(calls) == 3


def test_cuda_request_without_gpu_is_a_clear_error(seeded_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    a, b = _vols((1, 16, 16))
    with pytest.raises(ECFusionError, match="CUDA"):
        fuse_volume(seeded_model, a, b, device="cuda")


def test_pet_fusion_keeps_colour_and_grid(phantom, seeded_model):
    mri, pet = phantom["MRI"], phantom["PET"]
    before = (array(mri).copy(), array(pet).copy(), pet.GetOrigin())
    res = fuse_images(mri, pet, FusionSettings(task="PET-MRI", device="cpu"), model=seeded_model,
                      weights_info={"weights": "seeded", "sha256": "abc"})
    out = res.image
    assert out.GetNumberOfComponentsPerPixel() == 3 and out.GetPixelID() == sitk.sitkVectorUInt8
    assert out.GetSize() == mri.GetSize() and out.GetOrigin() == mri.GetOrigin()
    assert out.GetSpacing() == mri.GetSpacing() and out.GetDirection() == mri.GetDirection()
    # the output's chroma is the PET's (as displayed with PET-Heat), within rounding, wherever the
    # recoloured pixel is inside the RGB gamut (outside it, clipping to 0-255 changes the chroma)
    from ECFusionLib.fusion import default_window_level
    from ECFusionLib.intensity import map_functional

    window, level = default_window_level(array(pet), None, None, "PET-Heat")  # from the PET as acquired
    rgb, _, _ = map_functional(array(resample_onto(pet, mri)), "PET", "PET-Heat", window, level)
    cbcr_out = rgb_to_ycbcr(array(out))[..., 1:]
    cbcr_pet = rgb_to_ycbcr(rgb)[..., 1:]
    in_gamut = np.all((array(out) > 0) & (array(out) < 255), axis=-1)
    assert in_gamut.mean() > 0.3
    assert np.abs(cbcr_out - cbcr_pet)[in_gamut].max() <= 1.5
    # provenance
    assert res.metadata["task"] == "PET-MRI" and res.metadata["weights_sha256"] == "abc"
    assert json.loads(out.GetMetaData("ECFusion_second_intensity"))["colormap"] == "PET-Heat"
    assert json.loads(out.GetMetaData("ECFusion_anatomical_intensity"))["method"] == "percentiles"
    # inputs untouched
    assert np.array_equal(array(mri), before[0]) and np.array_equal(array(pet), before[1]) and pet.GetOrigin() == before[2]


@pytest.mark.slow
def test_ct_fusion_is_grey_and_rgb_functional_is_used_as_is(phantom, seeded_model):
    mri = phantom["MRI"]
    res = fuse_images(mri, phantom["CT"], FusionSettings(task="CT-MRI", device="cpu", ct_window=400, ct_level=100),
                      model=seeded_model)
    assert res.image.GetNumberOfComponentsPerPixel() == 1 and res.image.GetPixelID() == sitk.sitkUInt8
    assert res.metadata["second_intensity"] == {"modality": "CT", "method": "window", "window": 400.0, "level": 100.0}
    # an RGB SPECT volume (already pseudocoloured) keeps its colours
    from ECFusionLib.intensity import map_functional

    rgb, _, _ = map_functional(array(phantom["SPECT"]), "SPECT")
    rgb_img = sitk.GetImageFromArray(rgb, isVector=True)
    rgb_img.CopyInformation(phantom["SPECT"])
    res2 = fuse_images(mri, rgb_img, FusionSettings(task="SPECT-MRI", device="cpu"), model=seeded_model)
    assert res2.metadata["second_intensity"]["method"] == "rgb-luminance"
    assert res2.image.GetNumberOfComponentsPerPixel() == 3


def test_two_dimensional_images_fuse(seeded_model):
    rng = np.random.default_rng(0)
    mri = sitk.GetImageFromArray(rng.integers(0, 255, (50, 60)).astype(np.uint8))
    ct = sitk.GetImageFromArray(rng.integers(0, 255, (50, 60)).astype(np.uint8))
    res = fuse_images(mri, ct, FusionSettings(task="CT-MRI", device="cpu"), model=seeded_model)
    assert res.image.GetSize() == (60, 50)


def test_content_box_grows_to_multiples_and_stays_inside():
    a = np.zeros((2, 200, 220), np.uint8)
    b = np.zeros_like(a)
    assert content_box(a, b) is None
    a[1, 40:45, 50:53] = 200
    y0, y1, x0, x1 = content_box(a, b)
    assert y0 <= 40 - MARGIN and y1 >= 45 + MARGIN and x0 <= 50 - MARGIN and x1 >= 53 + MARGIN
    assert (y1 - y0) % 16 == 0 and (x1 - x0) % 16 == 0
    b[0, 195:, 210:] = 9
    y0, y1, x0, x1 = content_box(a, b)
    assert y1 == 200 and x1 == 220 and 0 <= y0 and 0 <= x0


@pytest.mark.slow
def test_fast_path_matches_reference_on_a_head(seeded_model, phantom_2mm):
    """Air skipping + bf16 against the fp32 full-slice reference, on a phantom head at 2 mm (lots of air)."""
    from ECFusionLib.intensity import map_ct, map_mri

    ph = phantom_2mm
    mri, _ = map_mri(array(ph["MRI"])[::3])
    ct, _ = map_ct(array(resample_onto(ph["CT"], ph["MRI"]))[::3])
    mri, ct = (np.pad(x, ((0, 0), (40, 40), (40, 40))) for x in (mri, ct))  # a field of view larger than the head
    ref, _ = fuse_volume(seeded_model, ct, mri, device="cpu", fast=False)
    fast, info = fuse_volume(seeded_model, ct, mri, device="cpu", fast=True, precision="fp32", batch_size=4)
    fast_bf16, _ = fuse_volume(seeded_model, ct, mri, device="cpu", fast=True, precision="bf16")
    bf16_diff = np.abs(fast_bf16.astype(int) - ref.astype(int))[(mri > AIR_LEVEL) | (ct > AIR_LEVEL)]
    print(f"bf16 vs fp32 reference in the head: mean {bf16_diff.mean():.3f}, max {bf16_diff.max()} grey levels")
    assert bf16_diff.mean() < 1.0
    diff = np.abs(fast.astype(int) - ref.astype(int))
    head = (mri > AIR_LEVEL) | (ct > AIR_LEVEL)
    assert info.computed_slices < ct.shape[0] and info.computed_fraction < 0.9  # air was skipped
    assert diff[head].mean() < 0.5  # fp32: cropping alone changes almost nothing
    empty = ~head.reshape(head.shape[0], -1).any(axis=1)
    assert np.array_equal(fast[empty], np.maximum(ct, mri)[empty])  # air slices: the inputs' maximum


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_path_matches_cpu_reference(seeded_model):
    a, b = _vols((12, 96, 80), seed=5)
    ref, _ = fuse_volume(seeded_model, a, b, device="cpu", fast=False)
    gpu, info = fuse_volume(seeded_model, a, b, device="cuda", precision="bf16")
    assert info.device.startswith("cuda") and info.precision == "bf16" and info.batch_size > 1
    assert np.abs(gpu.astype(int) - ref.astype(int)).mean() < 3.0
    seeded_model.cpu()
