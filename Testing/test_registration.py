"""Registration: a PET-like volume misaligned by a known rigid motion is put back within 1 mm / 1 degree."""
import numpy as np
import pytest
import SimpleITK as sitk

from ECFusionLib.cli import main
from ECFusionLib.errors import ECFusionError
from ECFusionLib.phantom import make_phantom
from ECFusionLib.registration import affine_matrix_lps, alignment_check, register

HEAD_CENTRE = (0.0, 0.0, -5.0)


@pytest.fixture(scope="module")
def pair(phantom_2mm):
    return phantom_2mm["MRI"], phantom_2mm["PET"]  # T1 at 2 mm, PET at 8 mm: different contrast


def known_motion(deg=(12.0, -8.0, 10.0), shift=(15.0, -12.0, 9.0)):
    t = sitk.Euler3DTransform()
    t.SetCenter(HEAD_CENTRE)
    t.SetRotation(*np.deg2rad(deg))
    t.SetTranslation(shift)
    return t


def moved_copy(img, motion):
    """The image content moved: moved(x) = img(motion(x)), on the image's own grid."""
    return sitk.Resample(img, img, motion, sitk.sitkLinear, 0.0)


def errors(found: sitk.Transform, truth: sitk.Transform):
    """(rotation error in degrees, translation error in mm at the head centre)."""
    a = affine_matrix_lps(found)
    b = affine_matrix_lps(truth)
    r = a[:3, :3].T @ b[:3, :3]
    angle = np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)))
    c = np.array([*HEAD_CENTRE, 1.0])
    return angle, float(np.linalg.norm((a @ c - b @ c)[:3]))


@pytest.mark.slow
def test_rigid_recovers_a_known_motion(pair):
    mri, pet = pair
    motion = known_motion()
    found = register(mri, moved_copy(pet, motion), "rigid")
    angle, shift = errors(found, motion.GetInverse())
    assert angle < 1.0 and shift < 1.0, (angle, shift)
    before = alignment_check(mri, sitk.Resample(moved_copy(pet, motion), mri, sitk.Transform(), sitk.sitkLinear, 0.0))
    after = alignment_check(mri, sitk.Resample(moved_copy(pet, motion), mri, found, sitk.sitkLinear, 0.0))
    assert before.misaligned and not after.misaligned and after.dice > before.dice


@pytest.mark.slow
def test_aligned_pair_stays_put():
    # at 1.5 mm (PET at 6 mm): on the coarser 2 mm pair the 8 mm PET voxels bias the optimum by ~0.5 degrees
    ph = make_phantom(size=(121, 145, 121), seed=3, spacing=1.5)
    mri, pet = ph["MRI"], ph["PET"]
    found = register(mri, pet, "rigid")
    pts = [np.array(p, float) for p in [(0, 0, 0), (60, 0, 0), (0, 70, 0), (0, 0, 60), (-50, -50, 40)]]
    moved = max(np.linalg.norm(np.array(found.TransformPoint(tuple(p))) - p) for p in pts)
    # < 1 mm (a sixth of a PET voxel): the PET noise is now the same on every run (it used the wall clock);
    # with it the largest move is 0.68 mm, and the old 0.5 mm bound held only for some noise draws (0.35-0.77)
    assert moved < 1.0


@pytest.mark.slow
def test_affine_mode_returns_affine(pair):
    mri, pet = pair
    found = register(mri, moved_copy(pet, known_motion((5, 0, 0), (5, 0, 0))), "affine", iterations=60)
    assert isinstance(found, sitk.AffineTransform)
    with pytest.raises(ECFusionError):
        register(mri, pet, "elastic")


@pytest.mark.slow
def test_register_and_fuse_commands(tmp_path, pair, weights_file, capsys):
    mri, pet = pair
    mri_path, pet_path = tmp_path / "mri.nrrd", tmp_path / "pet_moved.nrrd"
    sitk.WriteImage(mri, str(mri_path))
    motion = known_motion((0, 0, 10), (12, 0, 0))
    sitk.WriteImage(moved_copy(pet, motion), str(pet_path))
    tfm = tmp_path / "pet_to_mri.tfm"
    assert main(["register", "--anatomical", str(mri_path), "--functional", str(pet_path), "--output", str(tfm)]) == 0
    angle, shift = errors(sitk.ReadTransform(str(tfm)), motion.GetInverse())
    assert angle < 1.0 and shift < 1.0
    assert "Dice" in capsys.readouterr().out
    out = tmp_path / "fused.nrrd"
    code = main(["fuse", "--anatomical", str(mri_path), "--functional", str(pet_path), "--task", "PET-MRI",
                 "--output", str(out), "--weights", weights_file, "--device", "cpu", "--quiet"])
    assert code == 0 and "misaligned" in capsys.readouterr().err  # the check suggests registration
    code = main(["fuse", "--anatomical", str(mri_path), "--functional", str(pet_path), "--task", "PET-MRI",
                 "--output", str(out), "--weights", weights_file, "--device", "cpu", "--quiet", "--transform", str(tfm)])
    assert code == 0 and "misaligned" not in capsys.readouterr().err
    assert '"misaligned": false' in sitk.ReadImage(str(out)).GetMetaData("ECFusion_alignment")
    assert main(["register", "--anatomical", str(mri_path), "--functional", str(pet_path), "--output", str(tmp_path / "t.png")]) == 2
