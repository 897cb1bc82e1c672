"""Issue 20: never lose or corrupt a user's data, round 3. Each case runs as a user would: from a working folder
(``monkeypatch.chdir``) with relative arguments, on real files (and a real full disk where root may mount one).
Expected: a clear message and exit 2 (no traceback), inputs byte-identical, nothing half-written."""
from __future__ import annotations

import gzip
import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ECFusionLib.cli import main

from conftest import file_digest
from helpers import png_pairs

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def readme_command(start: str) -> list[str]:
    """The README's command line that starts with ``start``, without its comment, as argv (after ``ecfusion``)."""
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith(start):
            return shlex.split(line.split("  #")[0])[1:]
    raise AssertionError(f"the README has no example starting with {start!r}")


@pytest.fixture
def workdir(tmp_path, monkeypatch, phantom_files, weights_file):
    """A user's working folder holding mri.nrrd, pet.nrrd, ct.nrrd and w.npz; the current directory."""
    for name in ("MRI", "PET", "CT"):
        shutil.copy(phantom_files[name], tmp_path / f"{name.lower()}.nrrd")
    shutil.copy(weights_file, tmp_path / "w.npz")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fuse(*extra, anatomical="mri.nrrd", functional="pet.nrrd", output="fused.nrrd", task="PET-MRI"):
    args = ["fuse", "--anatomical", anatomical, "--functional", functional, "--output", output, "--weights", "w.npz",
            "--device", "cpu", "--quiet", *extra]
    return args + (["--task", task] if task else [])


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob(".*"))


# ------------------------------------------------------------------ relative paths
@pytest.mark.parametrize("output", ["fused.nii.gz", "fused.nii", "fused.nrrd", "out/fused.nii.gz", "./fused.mha"])
def test_relative_output_paths(capsys, workdir, output):
    (workdir / "out").mkdir()
    code, text = run(capsys, *fuse(output=output))
    assert code == 0, text
    assert sitk.ReadImage(output).GetSize() == sitk.ReadImage("mri.nrrd").GetSize()
    assert hidden(workdir) == []  # no temporary left


def test_readme_2d_example_with_relative_folders(capsys, workdir):
    png_pairs(workdir / "pairs")
    argv = readme_command("ecfusion fuse --input-dir pairs/")
    assert argv == ["fuse", "--input-dir", "pairs/", "--output", "fused_pngs/"]
    code, text = run(capsys, *argv)
    assert code == 0, text
    for task in ("CT-MRI", "PET-MRI"):
        for name in ("7000", "7001"):
            assert sitk.ReadImage(f"fused_pngs/{task}/{name}.png").GetSize() == (56, 40)
            assert Path(f"fused_pngs/{task}/{name}.json").is_file()
    assert hidden(workdir) == []


# ------------------------------------------------------------------ full disks
@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A real 2 MB file system (tmpfs, mounted as root) as the working folder; skipped where mounting is not
    allowed (not root, or a container without the capability)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {res.stderr.strip() or res.returncode}")
    monkeypatch.chdir(mount)
    try:
        yield mount
    finally:
        monkeypatch.chdir(tmp_path)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system until about ``leave`` bytes are free."""
    st = os.statvfs(folder)
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


@pytest.mark.parametrize("task, output", [("CT-MRI", "fused.nii.gz"), ("CT-MRI", "fused.nii"), ("CT-MRI", "fused.mha"),
                                          ("CT-MRI", "fused.nrrd"), ("PET-MRI", "fused.nii.gz")])
@pytest.mark.parametrize("leave", [0.25, 0.75])
def test_full_disk_keeps_the_previous_output(capsys, small_disk, phantom_files, weights_file, task, output, leave):
    """The same command again on a disk with room for a quarter (three quarters) of its output: exit 2, the
    previous output and its sidecar byte-identical, no temporary left."""
    second = "ct.nrrd" if task == "CT-MRI" else "pet.nrrd"
    for name in ("mri.nrrd", second):
        shutil.copy(phantom_files[name.split(".")[0].upper()], name)
    options = ["--weights", weights_file, "--device", "cpu", "--quiet", "--task", task, "--anatomical", "mri.nrrd",
               "--functional", second, "--output", output]
    code, text = run(capsys, "fuse", *options)
    assert code == 0, text
    before = {p.name: file_digest(p) for p in small_disk.iterdir()}
    fill_disk(small_disk, int(leave * Path(output).stat().st_size))
    code, text = run(capsys, "fuse", *options)
    assert code == 2, text
    assert ("disk is probably full" in text or "No space left" in text) and "nothing was written" in text
    assert "Traceback" not in text
    (small_disk / "filler").unlink()
    assert {p.name: file_digest(p) for p in small_disk.iterdir()} == before  # previous output and inputs intact
    assert sitk.ReadImage(output).GetSize() == sitk.ReadImage("mri.nrrd").GetSize()


# ------------------------------------------------------------------ batch: collisions, dirty manifests, re-runs
def batch(*extra):
    return ["batch", "cohort.csv", "--output-dir", "fused/", "--weights", "w.npz", "--device", "cpu", "--quiet", *extra]


@pytest.fixture
def cohort(workdir):
    """sub-01/ and sub-02/ with mri.nrrd and pet.nrrd each, beside the manifest; the current directory."""
    for sub in ("sub-01", "sub-02"):
        (workdir / sub).mkdir()
        for name in ("mri.nrrd", "pet.nrrd"):
            shutil.copy(name, workdir / sub / name)
    return workdir


def write_manifest(text: str, encoding="utf-8") -> dict:
    Path("cohort.csv").write_bytes(text.encode(encoding))
    return {p: file_digest(p) for p in Path(".").rglob("*.nrrd")}


@pytest.mark.parametrize("rows, expect", [
    # the output of line 3 is the PET of line 2 (relative to --output-dir): it would be replaced by a fused volume
    ("sub-01,sub-01/mri.nrrd,sub-01/pet.nrrd,a.nrrd\nsub-02,sub-02/mri.nrrd,sub-02/pet.nrrd,../sub-01/pet.nrrd\n",
     "line 3: output sub-01/pet.nrrd is line 2's functional input sub-01/pet.nrrd"),
    # one file spelt two ways
    ("a,sub-01/mri.nrrd,sub-01/pet.nrrd,same.nrrd\nb,sub-02/mri.nrrd,sub-02/pet.nrrd,x/../same.nrrd\n",
     "line 3: output fused/same.nrrd is also written by line 2"),
    # two NIfTI outputs share one sidecar (a.json)
    ("a,sub-01/mri.nrrd,sub-01/pet.nrrd,a.nii.gz\nb,sub-02/mri.nrrd,sub-02/pet.nrrd,a.nii\n",
     "line 3: output fused/a.json is also written by line 2"),
    # a row's output is its own input
    ("a,sub-01/mri.nrrd,sub-01/pet.nrrd,../sub-01/mri.nrrd\n", "line 2: output sub-01/mri.nrrd is its own anatomical input"),
])
def test_batch_refuses_outputs_that_collide_before_any_work(capsys, cohort, rows, expect):
    rows = rows.replace("/pet.nrrd,", "/pet.nrrd,PET-MRI,")
    digests = write_manifest("id,anatomical,functional,task,output\n" + rows)
    code, text = run(capsys, *batch())
    assert code == 2 and expect in text and "nothing was run" in text and "Traceback" not in text, text
    assert not Path("fused").exists()
    assert {p: file_digest(p) for p in Path(".").rglob("*.nrrd")} == digests


def test_batch_hard_link_to_an_input_is_refused(capsys, cohort):
    Path("fused").mkdir()
    os.link("sub-01/pet.nrrd", "fused/b.nrrd")
    Path("cohort.csv").write_text("id,anatomical,functional,task,output\n"
                                  "a,sub-01/mri.nrrd,sub-01/pet.nrrd,PET-MRI,a.nrrd\n"
                                  "b,sub-02/mri.nrrd,sub-02/pet.nrrd,PET-MRI,b.nrrd\n")
    code, text = run(capsys, *batch())
    assert code == 2 and "line 3: output fused/b.nrrd is line 2's functional input sub-01/pet.nrrd" in text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig", "utf-32"])
def test_batch_manifest_in_unicode_encodings_is_read(cohort, encoding):
    from ECFusionLib.manifest import read_manifest

    text = "id,anatomical,functional,task\nsub-01,sub-01/mri.nrrd,sub-01/pet.nrrd,PET-MRI\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # as Windows tools write it: with its byte order mark
    Path("cohort.csv").write_bytes(data)
    rows = read_manifest("cohort.csv", "fused/")
    assert [r.id for r in rows] == ["sub-01"] and rows[0].request.functional == str(cohort / "sub-01" / "pet.nrrd")


def test_batch_manifest_in_another_encoding_or_a_folder(capsys, cohort):
    Path("cohort.csv").write_bytes("id,anatomical,functional,task\nMüller,sub-01/mri.nrrd,sub-01/pet.nrrd,PET-MRI\n"
                                   .encode("cp1252"))
    code, text = run(capsys, *batch())
    assert code == 2 and "is not UTF-8 text (byte 0xfc on line 2" in text and "CSV UTF-8" in text
    assert "codec" not in text and "Traceback" not in text
    Path("cohorts").mkdir()
    Path("cohort.csv").rename("cohorts/cohort.csv")
    code, text = run(capsys, "batch", "cohorts", "--output-dir", "fused/")
    assert code == 2 and "manifest cohorts is a folder; give the CSV file itself; it holds cohort.csv" in text


def test_failed_scheduler_connection_leaves_nothing(capsys, cohort):
    Path("cohort.csv").write_text("id,anatomical,functional,task\nsub-01,sub-01/mri.nrrd,sub-01/pet.nrrd,PET-MRI\n")
    code, text = run(capsys, *batch("--scheduler", "nonsense://nowhere:1"))
    assert code == 2 and "cannot connect to the Dask scheduler" in text and "Traceback" not in text
    assert not Path("fused").exists()


@pytest.mark.parametrize("damage", ["body", "tail"])
def test_rerun_redoes_an_output_whose_body_is_damaged(cohort, damage):
    from ECFusionLib.batch_worker import BatchJob, run_row
    from ECFusionLib.manifest import read_manifest

    Path("cohort.csv").write_text("id,anatomical,functional,task\nsub-01,sub-01/mri.nrrd,sub-01/pet.nrrd,PET-MRI\n")
    Path("fused").mkdir()
    row = read_manifest("cohort.csv", "fused/", device="cpu", weights=str(cohort / "w.npz"))[0]
    job = BatchJob(row.id, row.line, row.request)
    assert run_row(job)["status"] == "ok" and run_row(job)["status"] == "skipped"
    out = Path("fused/sub-01.nrrd")
    good = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    data = bytearray(out.read_bytes())
    if damage == "body":  # a few bytes flipped in the middle of the compressed voxels: the header is intact
        for k in range(len(data) * 3 // 4, len(data) * 3 // 4 + 16):
            data[k] ^= 0xFF
    else:  # cut off
        data = data[: len(data) * 3 // 4]
    out.write_bytes(bytes(data))
    record = run_row(job)
    assert record["status"] == "ok" and "previous output was damaged" in record["message"], record
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), good)
    assert run_row(job)["status"] == "skipped"


# ------------------------------------------------------------------ headers that cannot be right
def nifti_with(path: str, offset: int, value: float) -> None:
    """mri.nrrd as NIfTI-1 at ``path`` with the float32 header field at ``offset`` set to ``value``."""
    import struct

    sitk.WriteImage(sitk.ReadImage("mri.nrrd"), "plain.nii")
    data = bytearray(Path("plain.nii").read_bytes())
    data[offset:offset + 4] = struct.pack("<f", value)
    Path("plain.nii").unlink()
    Path(path).write_bytes(gzip.compress(bytes(data)) if path.endswith(".gz") else bytes(data))


@pytest.mark.parametrize("offset, value, field", [
    (80, -4.5, "pixdim[1] (the voxel size along x) is -4.5"), (84, 0.0, "pixdim[2] (the voxel size along y) is 0"),
    (88, float("nan"), "pixdim[3] (the voxel size along z) is nan"), (268, float("nan"), "qoffset_x (qform) is nan"),
    (292, float("inf"), "srow_x[3] (sform) is inf"), (256, float("nan"), "quatern_b (qform) is nan"),
    (300, float("-inf"), "srow_y[1] (sform) is -inf"),
])
@pytest.mark.parametrize("name", ["mri.nii", "mri.nii.gz"])
def test_nifti_geometry_that_cannot_be_right_is_refused(capsys, workdir, offset, value, field, name):
    nifti_with(name, offset, value)
    digest = file_digest(name)
    code, text = run(capsys, *fuse(anatomical=name))
    assert code == 2 and f"anatomical image {name}: its NIfTI header cannot be right: {field}" in text, text
    assert "Traceback" not in text and "WARNING" not in text and "misaligned" not in text
    assert file_digest(name) == digest and not Path("fused.nrrd").exists()


@pytest.mark.parametrize("name, field, value", [
    ("bad.mha", "Offset = ", "nan 0 0"), ("bad.mha", "ElementSpacing = ", "18 inf 18"),
    ("bad.mha", "TransformMatrix = ", "1 0 0 0 nan 0 0 0 1"),
    ("bad.nrrd", "space origin: ", "(nan,0,0)"), ("bad.nrrd", "space directions: ", "(18,0,0) (0,inf,0) (0,0,18)"),
])
def test_text_headers_with_nan_or_inf_geometry_are_refused(capsys, workdir, name, field, value):
    """MetaImage reads "Offset = nan 0 0" as the origin 0 0 0 without a word (then "misaligned"); NRRD's reader
    says "val[0] not like val[1]". Both name the field instead."""
    sitk.WriteImage(sitk.ReadImage("pet.nrrd"), "pet" + name[3:], useCompression=False)
    data = Path("pet" + name[3:]).read_bytes()
    end = b"ElementDataFile = LOCAL\n" if name.endswith(".mha") else b"\n\n"
    head, sep, body = data.partition(end)
    key = field.split("=")[0].split(":")[0].strip().encode()
    lines = [(field + value).encode() if ln.startswith(key) else ln for ln in head.split(b"\n")]
    assert (field + value).encode() in lines
    Path(name).write_bytes(b"\n".join(lines) + sep + body)
    code, text = run(capsys, *fuse(functional=name))
    assert code == 2 and f"functional image {name}: its header cannot be right: '{field + value}'" in text, text
    assert "misaligned" not in text and "Traceback" not in text


def test_metaimage_input_is_not_labelled_met_mod_unknown(capsys, workdir):
    sitk.WriteImage(sitk.ReadImage("pet.nrrd"), "pet.mha")
    code, text = run(capsys, *fuse(functional="pet.mha"))
    assert code == 0 and "MET_MOD" not in text, text


# ------------------------------------------------------------------ messages that say what the file is
@pytest.mark.parametrize("name", ["pet.nrrd", "pet.nii.gz", "pet.nii", "pet.mha", "pet.dcm"])
def test_empty_file_says_empty(capsys, workdir, name):
    Path(name).unlink(missing_ok=True)
    Path(name).touch()
    code, text = run(capsys, *fuse(functional=name))
    assert code == 2 and f"{name} is empty (0 bytes)" in text and "Traceback" not in text
    assert "damaged" not in text and "cut off" not in text


def test_png_renamed_nifti_says_what_it_is(capsys, workdir):
    sitk.WriteImage(sitk.Cast(sitk.ReadImage("pet.nrrd")[:, :, 5] * 10, sitk.sitkUInt8), "slice.png")
    shutil.copy("slice.png", "pet.nii.gz")
    code, text = run(capsys, *fuse(functional="pet.nii.gz"))
    assert code == 2 and "pet.nii.gz is a PNG image, not the .nii.gz its name says" in text and "rename it to pet.png" in text
    assert "cut off" not in text


def test_folder_named_png_in_a_2d_task_folder_is_skipped(capsys, workdir):
    png_pairs(Path("pairs"))
    Path("pairs/CT-MRI/CT/dir.png").mkdir()
    code, text = run(capsys, "fuse", "--input-dir", "pairs/", "--output", "fused_pngs/", "--weights", "w.npz", "--quiet")
    assert code == 0, text
    assert "pairs/CT-MRI/CT: dir.png is not an image file (a folder named .png?) and is skipped" in text
    assert len(list(Path("fused_pngs").rglob("*.png"))) == 4


@pytest.mark.parametrize("case, expect", [
    ("folder", "--weights models is a folder; give the weights file itself; it holds w.npz"),
    ("safetensors", "is a safetensors file, a format ECFusion does not read: it reads ECFusion weights files: .npz"),
    ("onnx", "is an ONNX model, a format ECFusion does not read"),
    ("empty", "is empty (0 bytes)"),
])
def test_weights_that_are_not_a_weights_file(capsys, workdir, case, expect):
    if case == "folder":
        Path("models").mkdir()
        shutil.copy("w.npz", "models/w.npz")
        weights = "models"
    elif case == "safetensors":
        import json
        import struct

        header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        Path("model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
        weights = "model.safetensors"
    elif case == "onnx":
        Path("model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
        weights = "model.onnx"
    else:
        Path("w0.pt").touch()
        weights = "w0.pt"
    argv = fuse()
    argv[argv.index("--weights") + 1] = weights
    code, text = run(capsys, *argv)
    assert code == 3 and expect in text and "Traceback" not in text and "not found" not in text, text


def test_batch_weights_folder_is_refused_once_before_any_work(capsys, cohort):
    Path("cohort.csv").write_text("id,anatomical,functional,task\nsub-01,sub-01/mri.nrrd,sub-01/pet.nrrd,PET-MRI\n")
    Path("models").mkdir()
    code, text = run(capsys, "batch", "cohort.csv", "--output-dir", "fused/", "--weights", "models", "--quiet")
    assert code == 3 and text.count("is a folder; give the weights file itself") == 1 and not Path("fused").exists()


def test_process_substitution_says_it_must_be_a_regular_file(workdir):
    """``--anatomical <(cat mri.nrrd)`` in bash: the path is a pipe (/dev/fd/N)."""
    import sys

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    command = (f"{shlex.quote(sys.executable)} -m ECFusionLib.cli fuse --anatomical <(cat mri.nrrd) --functional pet.nrrd "
               "--task PET-MRI --output fused.nrrd --weights w.npz --device cpu --quiet")
    import ECFusionLib

    here = str(Path(ECFusionLib.__file__).resolve().parents[1])  # the ECFusionLib under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "is a pipe (e.g. from process substitution <(...)), not a regular file" in res.stderr
    assert "Save it to a file first" in res.stderr and "Traceback" not in res.stderr


def test_register_on_a_full_disk_keeps_the_previous_transform(capsys, small_disk, phantom_files):
    for name in ("MRI", "PET"):
        shutil.copy(phantom_files[name], f"{name.lower()}.nrrd")
    argv = ["register", "--anatomical", "mri.nrrd", "--functional", "pet.nrrd", "--output", "pet_to_mri.tfm"]
    code, text = run(capsys, *argv)
    assert code == 0, text
    before = file_digest("pet_to_mri.tfm")
    fill_disk(small_disk, 0)
    code, text = run(capsys, *argv)
    assert code == 2 and "cannot write pet_to_mri.tfm" in text and "nothing was written" in text, text
    assert file_digest("pet_to_mri.tfm") == before and sorted(p.name for p in small_disk.iterdir()) == [
        "filler", "mri.nrrd", "pet.nrrd", "pet_to_mri.tfm"]


def test_pipes_as_manifest_or_weights_say_regular_file(capsys, cohort):
    os.mkfifo("cohort.csv")  # what bash's <(...) gives: a pipe, not a file
    os.mkfifo("weights.npz")
    code, text = run(capsys, "batch", "cohort.csv", "--output-dir", "fused/", "--quiet")
    assert code == 2 and "manifest cohort.csv is a pipe (e.g. from process substitution <(...)), not a regular file" in text
    argv = fuse()
    argv[argv.index("--weights") + 1] = "weights.npz"
    code, text = run(capsys, *argv)
    assert code == 3 and "--weights weights.npz is not a regular file" in text and "not found" not in text
