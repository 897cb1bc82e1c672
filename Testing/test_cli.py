"""The ``ecfusion`` command: volume and 2D modes, and every bad input with its message and exit code."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ECFusionLib.cli import main

from helpers import file_digest, png_pairs, run_cli as run


def fuse_args(files, weights, out, task="PET-MRI", second="PET"):
    return ["fuse", "--anatomical", files["MRI"], "--functional", files[second], "--task", task,
            "--output", out, "--weights", weights, "--device", "cpu", "--quiet"]


def test_fuse_volume_writes_nrrd_and_leaves_inputs_alone(capsys, tmp_path, phantom_files, weights_file):
    digests = {k: file_digest(v) for k, v in phantom_files.items()}
    out = tmp_path / "fused.nrrd"
    code, text = run(capsys, *fuse_args(phantom_files, weights_file, out))
    assert code == 0, text
    img = sitk.ReadImage(str(out))
    mri = sitk.ReadImage(phantom_files["MRI"])
    assert img.GetNumberOfComponentsPerPixel() == 3 and img.GetSize() == mri.GetSize()
    assert np.allclose(img.GetOrigin(), mri.GetOrigin()) and np.allclose(img.GetSpacing(), mri.GetSpacing())
    assert json.loads(img.GetMetaData("ECFusion_second_intensity"))["colormap"] == "PET-Heat"
    assert {k: file_digest(v) for k, v in phantom_files.items()} == digests
    assert [p.name for p in tmp_path.iterdir()] == ["fused.nrrd"]  # no temporary files left


def test_fuse_nifti_ct_with_sidecar(capsys, tmp_path, phantom_files, weights_file):
    out = tmp_path / "ct_fused.nii.gz"
    code, text = run(capsys, *fuse_args(phantom_files, weights_file, out, "CT-MRI", "CT"), "--ct-window", "300")
    assert code == 0, text
    assert sitk.ReadImage(str(out)).GetNumberOfComponentsPerPixel() == 1
    meta = json.loads((tmp_path / "ct_fused.json").read_text())
    assert meta["second_intensity"]["window"] == 300.0 and meta["task"] == "CT-MRI"


def _write(img, path):
    sitk.WriteImage(img, str(path))
    return str(path)


@pytest.fixture
def bad_inputs(tmp_path, phantom):
    d = {}
    d["missing"] = str(tmp_path / "nope.nrrd")
    (tmp_path / "garbage.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")
    d["garbage"] = str(tmp_path / "garbage.nrrd")
    d["4d"] = _write(sitk.JoinSeries([phantom["PET"], phantom["PET"]]), tmp_path / "pet4d.nrrd")
    two = sitk.Compose(phantom["PET"], phantom["PET"])
    d["2comp"] = _write(two, tmp_path / "pet2c.nrrd")
    arr = sitk.GetArrayFromImage(phantom["PET"])
    arr[2, 3, 4] = np.nan
    nan = sitk.GetImageFromArray(arr)
    nan.CopyInformation(phantom["PET"])
    d["nan"] = _write(nan, tmp_path / "petnan.nrrd")
    const = sitk.Image(phantom["PET"].GetSize(), sitk.sitkFloat32) + 3.0
    const.CopyInformation(phantom["PET"])
    d["constant"] = _write(const, tmp_path / "const.nrrd")
    far = sitk.Image(phantom["PET"])
    far.SetOrigin([1000.0, 0.0, 0.0])
    d["far"] = _write(far, tmp_path / "far.nrrd")
    return d


@pytest.mark.parametrize("case, pattern", [
    ("missing", "not found"),
    ("garbage", "cannot read"),
    ("4d", "4D"),
    ("2comp", "2 components"),
    ("nan", "NaN"),
    ("constant", "constant"),
    ("far", "do not overlap"),
])
def test_bad_functional_input(capsys, tmp_path, phantom_files, weights_file, bad_inputs, case, pattern):
    files = dict(phantom_files, PET=bad_inputs[case])
    out = tmp_path / "out.nrrd"
    code, text = run(capsys, *fuse_args(files, weights_file, out))
    assert code == 2
    assert pattern in text and "Traceback" not in text
    assert not out.exists()


def test_unknown_task(capsys, tmp_path, phantom_files, weights_file):
    code, text = run(capsys, *fuse_args(phantom_files, weights_file, tmp_path / "o.nrrd", task="PET-CT"))
    assert code == 2 and "unknown task 'PET-CT'" in text and "CT-MRI" in text


def test_missing_and_corrupt_weights(capsys, tmp_path, phantom_files, weights_file):
    out = tmp_path / "o.nrrd"
    code, text = run(capsys, *fuse_args(phantom_files, str(tmp_path / "none.pt"), out))
    assert code == 3 and "not found" in text
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 1000)
    code, text = run(capsys, *fuse_args(phantom_files, str(bad), out))
    assert code == 3 and "corrupt" in text
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(weights_file).read_bytes()[:5000])
    code, text = run(capsys, *fuse_args(phantom_files, str(truncated), out))
    assert code == 3 and not out.exists()


def test_output_folder_not_writable(capsys, tmp_path, phantom_files, weights_file):
    code, text = run(capsys, *fuse_args(phantom_files, weights_file, tmp_path / "no_such_dir" / "o.nrrd"))
    assert code == 2 and "does not exist" in text
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() == 0 and os.access(ro, os.W_OK) and _root_can_write(ro):
            pytest.skip("running as root: permissions do not stop writes")
        code, text = run(capsys, *fuse_args(phantom_files, weights_file, ro / "o.nrrd"))
        assert code == 2 and "not writable" in text
    finally:
        ro.chmod(0o700)


def _root_can_write(folder):
    try:
        (folder / ".probe").write_text("x")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


def test_unsupported_output_type(capsys, tmp_path, phantom_files, weights_file):
    code, text = run(capsys, *fuse_args(phantom_files, weights_file, tmp_path / "o.jpg"))
    assert code == 2 and "unsupported file type" in text


def test_failed_write_leaves_nothing(monkeypatch, tmp_path, phantom):
    from ECFusionLib import volume_io

    def broken(img, path, useCompression=True):
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(volume_io.sitk, "WriteImage", broken)
    with pytest.raises(Exception, match="disk full"):
        volume_io.write_image_atomic(phantom["PET"], tmp_path / "x.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_png_folder_mode_and_evaluate(capsys, tmp_path, weights_file):
    rng = np.random.default_rng(0)
    root = tmp_path / "pairs"
    png_pairs(root, rng=rng, dark_rows=5)
    out = tmp_path / "fused"
    code, text = run(capsys, "fuse", "--input-dir", root, "--output", out, "--weights", weights_file, "--quiet")
    assert code == 0, text
    ct = sitk.ReadImage(str(out / "CT-MRI" / "7000.png"))
    pet = sitk.ReadImage(str(out / "PET-MRI" / "7001.png"))
    assert ct.GetNumberOfComponentsPerPixel() == 1 and ct.GetSize() == (56, 40)
    assert pet.GetNumberOfComponentsPerPixel() == 3
    csv_path = tmp_path / "m.csv"
    code, text = run(capsys, "evaluate", "--input-dir", root, "--fused", out, "--baselines", "--csv", csv_path)
    assert code == 0, text
    assert "pixel-max" in text and "ecfusion" in text
    assert len(csv_path.read_text().splitlines()) == 1 + 2 * 2 * 3


def test_png_folder_with_wrong_layout(capsys, tmp_path, weights_file):
    (tmp_path / "empty").mkdir()
    code, text = run(capsys, "fuse", "--input-dir", tmp_path / "empty", "--output", tmp_path / "o", "--weights", weights_file)
    assert code == 2 and "no task folders" in text


def test_installed_command_help():
    exe = Path(sys.executable).parent / "ecfusion"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ECFusionLib.cli"]
    res = subprocess.run([*cmd, "fuse", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "examples:" in res.stdout and "--input-dir" in res.stdout


def test_phantom_files_carry_their_modality(tmp_path):
    """The demo's phantom NRRDs say what they are (README: the task registry's codes read from the `Modality` key);
    the PET and SPECT lost theirs to a final cast before."""
    from ECFusionLib.modality import image_modality
    from ECFusionLib.phantom import write_phantom

    paths = write_phantom(tmp_path, size=(40, 48, 40))
    found = {name: image_modality(sitk.ReadImage(str(path))) for name, path in paths.items()}
    assert found == {"MRI": "MR", "CT": "CT", "PET": "PT", "SPECT": "NM"}
