"""DICOM input: real series written with SimpleITK's GDCM writer, fused through ``ecfusion fuse`` and compared
with fusing the same volumes as NRRD; series choice, Modality, rescale, SUV, and geometry errors."""
import json
import math
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ECFusionLib.cli import main
from ECFusionLib.dicom import read_dicom
from ECFusionLib.volume_io import read_image

from helpers import file_digest, run_cli as run
from dicom_helpers import new_uid, write_series


def fuse(capsys, anatomical, functional, out, weights, *extra):
    return run(capsys, "fuse", "--anatomical", anatomical, "--functional", functional, "--output", out,
               "--weights", weights, "--device", "cpu", "--quiet", *extra)


def fused(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


@pytest.fixture(scope="module")
def series(tmp_path_factory, phantom):
    """{"MRI", "PET", "CT"}: DICOM folders of the phantom (PET with per-slice rescale slopes), and their UIDs."""
    root = tmp_path_factory.mktemp("dicom")
    uids = {name: new_uid(i) for i, name in enumerate(("MRI", "PET", "CT"))}
    write_series(phantom["MRI"], root / "mri", modality="MR", series_uid=uids["MRI"], description="T1 MPRAGE")
    write_series(phantom["PET"], root / "pet", modality="PT", series_uid=uids["PET"], description="FDG AC",
                 per_slice_slope=True)
    write_series(phantom["CT"], root / "ct", modality="CT", series_uid=uids["CT"], description="head CT")
    return {name: root / name.lower() for name in uids}, uids


@pytest.mark.slow
def test_dicom_folders_fuse_like_nrrd_with_task_from_modality(capsys, tmp_path, phantom, series, phantom_files,
                                                              weights_file):
    folders, uids = series
    digests = {p: file_digest(p) for p in folders["PET"].iterdir()}
    code, text = fuse(capsys, folders["MRI"], folders["PET"], tmp_path / "dicom.nrrd", weights_file)  # no --task
    assert code == 0, text
    code, text = fuse(capsys, phantom_files["MRI"], phantom_files["PET"], tmp_path / "nrrd.nrrd", weights_file,
                      "--task", "PET-MRI")
    assert code == 0, text
    assert np.abs(fused(tmp_path / "dicom.nrrd") - fused(tmp_path / "nrrd.nrrd")).mean() < 1.0
    out = sitk.ReadImage(str(tmp_path / "dicom.nrrd"))
    assert out.GetMetaData("ECFusion_task") == "PET-MRI"
    functional = json.loads(out.GetMetaData("ECFusion_inputs"))["functional"]
    assert functional["dicom"] == {"series_uid": uids["PET"], "modality": "PT", "description": "FDG AC",
                                   "images": phantom["PET"].GetSize()[2]}
    assert {p: file_digest(p) for p in folders["PET"].iterdir()} == digests  # inputs untouched


@pytest.mark.slow
def test_ct_rescale_to_hounsfield_units(capsys, tmp_path, phantom, series, phantom_files, weights_file):
    folders, _ = series
    # stored as scanners do: HU + 1024 with Rescale Intercept -1024 (the GDCM writer inverts the rescale)
    write_series(phantom["CT"], tmp_path / "ct", modality="CT", series_uid=new_uid(9),
                 extra={"0028|1052": "-1024", "0028|1053": "1"})
    ds = pydicom.dcmread(sorted((tmp_path / "ct").iterdir())[0])
    hu = sitk.GetArrayFromImage(phantom["CT"])
    assert float(ds.RescaleIntercept) == -1024 and np.array_equal(ds.pixel_array, hu[0] + 1024)
    image, _, _ = read_dicom(tmp_path / "ct")
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(phantom["CT"]).astype(np.float32))
    code, text = fuse(capsys, folders["MRI"], tmp_path / "ct", tmp_path / "dicom.nrrd", weights_file, "--ct-window", "400")
    assert code == 0, text
    code, text = fuse(capsys, phantom_files["MRI"], phantom_files["CT"], tmp_path / "nrrd.nrrd", weights_file,
                      "--task", "CT-MRI", "--ct-window", "400")
    assert code == 0, text
    assert np.abs(fused(tmp_path / "dicom.nrrd") - fused(tmp_path / "nrrd.nrrd")).mean() < 1.0


@pytest.mark.slow
def test_sagittal_non_square_series_keeps_its_geometry(capsys, tmp_path, phantom, series, phantom_files, weights_file):
    folders, _ = series
    sagittal = sitk.PermuteAxes(phantom["CT"], [1, 2, 0])  # slices along left-right, 4.05 x 9 mm pixels
    write_series(sagittal, tmp_path / "sag", modality="CT", series_uid=new_uid(11))
    image, _, _ = read_dicom(tmp_path / "sag")
    assert image.GetSize() == sagittal.GetSize() and np.allclose(image.GetSpacing(), sagittal.GetSpacing())
    assert np.allclose(image.GetDirection(), sagittal.GetDirection()) and np.allclose(image.GetOrigin(), sagittal.GetOrigin())
    code, text = fuse(capsys, folders["MRI"], tmp_path / "sag", tmp_path / "sag.nrrd", weights_file)
    assert code == 0, text
    code, text = fuse(capsys, phantom_files["MRI"], phantom_files["CT"], tmp_path / "nrrd.nrrd", weights_file,
                      "--task", "CT-MRI")
    assert np.abs(fused(tmp_path / "sag.nrrd") - fused(tmp_path / "nrrd.nrrd")).mean() < 1.0


def test_folder_with_several_series_lists_them(capsys, tmp_path, phantom, series, phantom_files, weights_file):
    folders, uids = series
    mixed = tmp_path / "study"
    mixed.mkdir()
    for name in ("PET", "CT"):
        for path in folders[name].iterdir():
            shutil.copy(path, mixed / f"{name}_{path.name}")
    code, text = fuse(capsys, folders["MRI"], mixed, tmp_path / "o.nrrd", weights_file)
    assert code == 2 and "Traceback" not in text
    assert "holds 2 DICOM series" in text and "--functional-series" in text
    for uid, modality, description in ((uids["PET"], "PT", "FDG AC"), (uids["CT"], "CT", "head CT")):
        line = next(line for line in text.splitlines() if uid in line)
        assert modality in line and description in line
    assert f"  {phantom['PET'].GetSize()[2]}" in text and not (tmp_path / "o.nrrd").exists()
    code, text = fuse(capsys, folders["MRI"], mixed, tmp_path / "o.nrrd", weights_file, "--functional-series", uids["CT"])
    assert code == 0, text
    assert json.loads(sitk.ReadImage(str(tmp_path / "o.nrrd")).GetMetaData("ECFusion_inputs"))["functional"]["dicom"]["modality"] == "CT"
    code, text = fuse(capsys, folders["MRI"], mixed, tmp_path / "p.nrrd", weights_file, "--functional-series", "1.2.3")
    assert code == 2 and "no series 1.2.3" in text


def test_one_file_reads_its_whole_series(capsys, tmp_path, phantom, series, weights_file):
    folders, _ = series
    one = sorted(folders["PET"].iterdir())[3]
    assert read_image(one).GetSize() == phantom["PET"].GetSize()
    code, text = fuse(capsys, folders["MRI"], one, tmp_path / "o.nrrd", weights_file)
    assert code == 0, text
    assert f"one image of a {phantom['PET'].GetSize()[2]}-image series" in text


def test_modality_mismatch_warns_and_unknown_modality_needs_task(capsys, tmp_path, phantom, series, weights_file):
    folders, _ = series
    code, text = fuse(capsys, folders["MRI"], folders["PET"], tmp_path / "o.nrrd", weights_file, "--task", "CT-MRI")
    assert code == 0 and "warning" in text and "labelled modality PT but --task CT-MRI expects CT" in text
    bare = sitk.Image(phantom["PET"])
    for key in bare.GetMetaDataKeys():
        bare.EraseMetaData(key)
    sitk.WriteImage(bare, str(tmp_path / "pet.nrrd"))
    code, text = fuse(capsys, folders["MRI"], tmp_path / "pet.nrrd", tmp_path / "p.nrrd", weights_file)
    assert code == 2 and "cannot tell the task" in text and not (tmp_path / "p.nrrd").exists()


def _add_pet_dose_tags(folder, weight_kg, dose_bq, half_life_s, injection, series_time):
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientWeight, ds.Units, ds.DecayCorrection = str(weight_kg), "BQML", "START"
        ds.SeriesDate, ds.SeriesTime = "20260101", series_time
        item = Dataset()
        item.RadionuclideTotalDose, item.RadionuclideHalfLife = str(dose_bq), str(half_life_s)
        item.RadiopharmaceuticalStartTime = injection
        ds.RadiopharmaceuticalInformationSequence = Sequence([item])
        ds.save_as(path)


@pytest.mark.slow
def test_pet_units_suv(capsys, tmp_path, phantom, series, phantom_files, weights_file):
    folders, _ = series
    becquerel = phantom["PET"] * 1000.0  # Bq/ml
    write_series(becquerel, tmp_path / "pet", modality="PT", series_uid=new_uid(13), per_slice_slope=True)
    code, text = fuse(capsys, folders["MRI"], tmp_path / "pet", tmp_path / "o.nrrd", weights_file, "--pet-units", "suv")
    assert code == 2 and "PatientWeight" in text and "--pet-units native" in text
    _add_pet_dose_tags(tmp_path / "pet", 70, 370e6, 6586.2, injection="091500", series_time="101500")
    expected = 70e3 / (370e6 * 0.5 ** (3600 / 6586.2))  # SUV per Bq/ml: weight in g over the decayed dose
    code, text = fuse(capsys, folders["MRI"], tmp_path / "pet", tmp_path / "suv.nrrd", weights_file,
                      "--pet-units", "suv", "--window", "3", "--level", "2")
    assert code == 0, text
    units = json.loads(sitk.ReadImage(str(tmp_path / "suv.nrrd")).GetMetaData("ECFusion_functional_units"))
    assert units["units"] == "SUVbw" and math.isclose(units["factor"], expected, rel_tol=1e-9)
    assert units["elapsed_s"] == 3600 and units["decay_correction"] == "START"
    sitk.WriteImage(becquerel, str(tmp_path / "pet_bq.nrrd"))  # the same PET in Bq/ml, window/level in Bq/ml
    code, text = fuse(capsys, folders["MRI"], tmp_path / "pet_bq.nrrd", tmp_path / "bq.nrrd", weights_file,
                      "--task", "PET-MRI", "--window", str(3 / expected), "--level", str(2 / expected))
    assert code == 0, text
    assert np.abs(fused(tmp_path / "suv.nrrd") - fused(tmp_path / "bq.nrrd")).mean() < 1.0
    code, text = fuse(capsys, folders["MRI"], tmp_path / "pet_bq.nrrd", tmp_path / "x.nrrd", weights_file, "--pet-units", "suv",
                      "--task", "PET-MRI")
    assert code == 2 and "needs the PET as DICOM" in text


@pytest.mark.parametrize("defect, pattern", [
    ({"tilt_mm_per_slice": 2.0}, "gantry tilt of"),
    ({"drop_slices": (6,)}, "slice spacing varies from 9 to 18 mm"),
])
def test_irregular_geometry_is_an_explicit_error(capsys, tmp_path, phantom, series, weights_file, defect, pattern):
    folders, _ = series
    write_series(phantom["CT"], tmp_path / "ct", modality="CT", series_uid=new_uid(17), **defect)
    code, text = fuse(capsys, folders["MRI"], tmp_path / "ct", tmp_path / "o.nrrd", weights_file)
    assert code == 2 and pattern in text and "Traceback" not in text
    assert not (tmp_path / "o.nrrd").exists()


def test_empty_folder_and_subfolders(capsys, tmp_path, series, weights_file):
    folders, _ = series
    (tmp_path / "empty").mkdir()
    code, text = fuse(capsys, folders["MRI"], tmp_path / "empty", tmp_path / "o.nrrd", weights_file)
    assert code == 2 and "is a folder with no DICOM series in it" in text
    code, text = fuse(capsys, folders["MRI"], folders["PET"].parent, tmp_path / "o.nrrd", weights_file)
    assert code == 2 and "its subfolders" in text and "pet" in text


def test_left_handed_float_series_in_enhanced_files_lands_in_the_same_place(tmp_path, phantom):
    """A NIfTI-like left-handed grid (y flipped) in one-frame Enhanced MR files (geometry in functional groups,
    as GDCM writes float MR): read back on a right-handed grid, every voxel is where it was."""
    left = sitk.Cast(phantom["MRI"], sitk.sitkFloat32)
    left.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    enhanced = {"0008|0016": "1.2.840.10008.5.1.4.1.1.4.1"}  # Enhanced MR Image Storage
    write_series(left, tmp_path / "mr", modality="MR", series_uid=new_uid(23), extra=enhanced)
    assert "ImagePositionPatient" not in pydicom.dcmread(sorted((tmp_path / "mr").iterdir())[0])
    assert "Enhanced" in str(pydicom.dcmread(sorted((tmp_path / "mr").iterdir())[0]).SOPClassUID.name)
    image, _, _ = read_dicom(tmp_path / "mr")
    assert np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) > 0  # slices now run the other way
    back = sitk.Resample(image, left, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(left)).max() < 0.1
    write_series(left, tmp_path / "tilted", modality="MR", series_uid=new_uid(24), tilt_mm_per_slice=2.0, extra=enhanced)
    with pytest.raises(Exception, match="gantry tilt"):
        read_dicom(tmp_path / "tilted")


def test_every_fuse_option_reaches_the_fusion(capsys, tmp_path, series, weights_file):
    folders, _ = series
    code, text = fuse(capsys, folders["MRI"], folders["PET"], tmp_path / "o.nrrd", weights_file, "--no-keep-salient")
    assert code == 0, text
    assert sitk.ReadImage(str(tmp_path / "o.nrrd")).GetMetaData("ECFusion_keep_salient") == "false"
