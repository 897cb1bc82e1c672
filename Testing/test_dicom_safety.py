"""Issue 20, DICOM: real series (SimpleITK's GDCM writer, then edited with pydicom as archives hold them) read from
a user's working folder with relative paths: one study folder holding both series (the README's example),
character sets of European and Japanese archives, dirty tags, copied, cut-off and non-image files."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ECFusionLib.cli import main

from conftest import file_digest
from dicom_helpers import new_uid, write_series
from test_safety_round3 import readme_command, run

UIDS = {"MR": new_uid(101), "PT": new_uid(102)}


@pytest.fixture(scope="module")
def study_files(tmp_path_factory, phantom):
    """study/: an MR and a PT series in one folder (as an archive export writes them)."""
    root = tmp_path_factory.mktemp("study") / "study"
    write_series(phantom["MRI"], root, modality="MR", series_uid=UIDS["MR"], description="T1", file_prefix="MR")
    write_series(phantom["PET"], root, modality="PT", series_uid=UIDS["PT"], description="FDG", file_prefix="PT",
                 per_slice_slope=True)
    return root


@pytest.fixture
def work(tmp_path, monkeypatch, study_files, weights_file):
    """The working folder: study/ (both series), mri/ and pet/ (each alone), w.npz; the current directory."""
    shutil.copytree(study_files, tmp_path / "study")
    for name, prefix in (("mri", "MR"), ("pet", "PT")):
        (tmp_path / name).mkdir()
        for f in study_files.glob(f"{prefix}*.dcm"):
            shutil.copy(f, tmp_path / name / f.name)
    shutil.copy(weights_file, tmp_path / "w.npz")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fuse(*extra, anatomical="mri/", functional="pet/", output="fused.nrrd"):
    return ["fuse", "--anatomical", anatomical, "--functional", functional, "--output", output, "--weights", "w.npz",
            "--device", "cpu", "--quiet", *extra]


def edit(folder, change, files="*.dcm"):
    """Apply ``change(dataset, index)`` to each file of ``folder`` (sorted) and save it."""
    for i, path in enumerate(sorted(Path(folder).glob(files))):
        ds = pydicom.dcmread(path)
        change(ds, i)
        ds.save_as(path)


# ------------------------------------------------------------------ one folder, two series
def test_readme_example_one_folder_two_series(capsys, work):
    argv = readme_command("ecfusion fuse --anatomical study/ --anatomical-series")
    assert argv[argv.index("--anatomical") + 1] == "study/" and argv[argv.index("--functional") + 1] == "study/"
    argv[argv.index("--anatomical-series") + 1] = UIDS["MR"]  # the README's "1.2.840...7": the user's own UIDs
    argv[argv.index("--functional-series") + 1] = UIDS["PT"]
    digests = {p: file_digest(p) for p in Path("study").iterdir()}
    code, text = run(capsys, *argv)
    assert code == 0, text
    out = sitk.ReadImage("fused.nrrd")
    assert out.GetMetaData("ECFusion_task") == "PET-MRI"
    inputs = json.loads(out.GetMetaData("ECFusion_inputs"))
    assert inputs["anatomical"]["dicom"]["modality"] == "MR" and inputs["functional"]["dicom"]["modality"] == "PT"
    assert {p: file_digest(p) for p in Path("study").iterdir()} == digests


def test_one_folder_without_uids_lists_the_series(capsys, work):
    code, text = run(capsys, *fuse(anatomical="study/", functional="study/"))
    assert code == 2 and "same file" not in text and "Traceback" not in text
    assert "holds 2 DICOM series" in text and "--anatomical-series UID" in text
    assert UIDS["MR"] in text and UIDS["PT"] in text
    assert not Path("fused.nrrd").exists()


@pytest.mark.parametrize("case", ["same uid", "one-series folder"])
def test_one_series_as_both_inputs_is_refused(capsys, work, case):
    argv = (fuse("--anatomical-series", UIDS["PT"], "--functional-series", UIDS["PT"], anatomical="study/",
                 functional="study/") if case == "same uid" else fuse(anatomical="pet/", functional="pet"))
    code, text = run(capsys, *argv)
    assert code == 2 and "the same DICOM series" in text and UIDS["PT"] in text and "Traceback" not in text


# ------------------------------------------------------------------ character sets
CHARSETS = {  # Specific Character Set -> (patient name, series description) as such archives hold them
    "ISO_IR 100": ("Müller^Jürgen", "PET Ganzkörper"),
    "ISO_IR 192": ("Müller^Jürgen", "PET Ganzkörper ☢"),
    "ISO 2022 IR 6\\ISO 2022 IR 87": ("Yamada^Tarou=山田^太郎", "PET 全身"),
    "ISO 2022 IR 100": ("Müller^Jürgen", "PET Ganzkörper"),
}


@pytest.mark.parametrize("charset", list(CHARSETS))
def test_character_sets_of_real_archives(capsys, work, charset):
    name, description = CHARSETS[charset]

    def change(ds, i):
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
        ds.PatientName, ds.SeriesDescription = name, description

    edit("pet", change)
    edit("mri", change)
    raw = Path(sorted(Path("pet").iterdir())[0]).read_bytes()
    if charset == "ISO_IR 100":
        assert "Müller".encode("latin-1") in raw and "Müller".encode() not in raw  # really Latin-1 bytes
    code, text = run(capsys, *fuse())
    assert code == 0, text
    out = sitk.ReadImage("fused.nrrd")
    assert json.loads(out.GetMetaData("ECFusion_inputs"))["functional"]["dicom"]["description"] == description


# ------------------------------------------------------------------ dirty tags
def _dose_tags(ds, i):
    ds.add_new(0x00101030, "DS", "70")
    ds.Units, ds.DecayCorrection, ds.SeriesTime, ds.SeriesDate = "BQML", "START", "101500", "20260101"
    item = Dataset()
    item.RadionuclideTotalDose, item.RadionuclideHalfLife, item.RadiopharmaceuticalStartTime = "370000000", "6586.2", "091500"
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])


def _set_weight(folder, text):
    """PatientWeight as the scanner wrote it (bytes, not checked by pydicom)."""
    for path in sorted(Path(folder).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds["PatientWeight"].value = b""  # placeholder, replaced by the raw text below
        ds.save_as(path)
        data = path.read_bytes()
        at = data.index(b"\x10\x00\x30\x10")  # (0010,1030), little endian
        explicit = data[at + 4:at + 6] == b"DS"  # explicit VR: tag, "DS", 2-byte length; implicit: 4-byte length
        new = text.encode() + (b" " if len(text) % 2 else b"")
        length = len(new).to_bytes(2 if explicit else 4, "little")
        path.write_bytes(data[:at + 4] + (b"DS" if explicit else b"") + length + new + data[at + 8:])


@pytest.mark.parametrize("weight, ok", [("70kg", True), ("70 KG", True), ("154 lb", False), ("unknown", False)])
def test_patient_weight_with_units_or_text(capsys, work, weight, ok):
    edit("pet", _dose_tags)
    _set_weight("pet", weight)
    assert weight.encode() in sorted(Path("pet").iterdir())[0].read_bytes()
    code, text = run(capsys, *fuse("--pet-units", "suv", "--window", "3", "--level", "2"))
    assert "Traceback" not in text
    if ok:
        assert code == 0, text
        units = json.loads(sitk.ReadImage("fused.nrrd").GetMetaData("ECFusion_functional_units"))
        assert units["patient_weight_kg"] == 70.0
        assert math.isclose(units["factor"], 70e3 / (370e6 * 0.5 ** (3600 / 6586.2)), rel_tol=1e-9)
    else:
        assert code == 2 and f"PatientWeight (0010,1030) is '{weight}'" in text and "kg" in text


def test_pet_slice_without_rescale_is_refused_naming_the_file(capsys, work):
    victim = sorted(Path("pet").iterdir())[4]

    def change(ds, i):
        del ds.RescaleSlope, ds.RescaleIntercept

    edit("pet", change, files=victim.name)
    code, text = run(capsys, *fuse())
    assert code == 2 and victim.name in text and "Rescale Slope/Intercept" in text and "Traceback" not in text
    assert not Path("fused.nrrd").exists()


# ------------------------------------------------------------------ copies, cut-off files, objects without image
def test_exact_copy_of_a_file_is_named_as_a_copy(capsys, work):
    shutil.copy(sorted(Path("pet").iterdir())[3], "pet/copy of PT0008.dcm")
    code, text = run(capsys, *fuse())
    assert code == 2 and "copies of one image" in text and "copy of PT0008.dcm" in text
    assert "several volumes" not in text


@pytest.mark.parametrize("which", ["middle", "last"])
def test_file_with_cut_off_pixel_data_is_named(capsys, work, which):
    files = sorted(Path("pet").iterdir(), key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    victim = files[len(files) // 2] if which == "middle" else files[-1]
    os.truncate(victim, victim.stat().st_size - 100)
    code, text = run(capsys, *fuse())
    assert code == 2 and victim.name in text and "cut off" in text and "Traceback" not in text
    assert not Path("fused.nrrd").exists()


def _rtstruct(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StructureSetLabel = "RTSTRUCT", generate_uid(), "brain"
    ds.save_as(path, enforce_file_format=True)


def _dicomdir(folder: Path) -> Path:
    from pydicom.fileset import FileSet

    fs = FileSet()
    for f in sorted(Path("pet").iterdir())[:2]:
        ds = pydicom.dcmread(f)
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 2, ds.get("InstanceNumber", 1)
        ds.StudyDate, ds.StudyTime = "20260101", "101500"
        fs.add(ds)
    fs.write(folder)
    return folder / "DICOMDIR"


@pytest.mark.parametrize("kind", ["RTSTRUCT", "DICOMDIR"])
def test_dicom_objects_without_an_image_say_what_they_are(capsys, work, kind):
    if kind == "RTSTRUCT":
        _rtstruct(work / "rs.dcm")
        functional, expect = "rs.dcm", "RT Structure Set Storage (Modality RTSTRUCT), which holds no image"
    else:
        functional, expect = str(_dicomdir(work / "disc").relative_to(work)), "a DICOMDIR"
    code, text = run(capsys, *fuse("--task", "PET-MRI", functional=functional))
    assert code == 2 and expect in text and "not a readable DICOM file" not in text and "Traceback" not in text
