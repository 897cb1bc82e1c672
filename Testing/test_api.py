"""The public Python API: ``import ECFusionLib`` stays light; ``ECFusionLib.fuse`` (paths or images in, an image out)
and ``ECFusionLib.fuse_file`` give what ``ecfusion fuse`` gives."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import ECFusionLib
from helpers import file_digest, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_package_loads_neither_torch_nor_simpleitk():
    code = ("import sys, ECFusionLib\n"
            "assert 'fuse' in dir(ECFusionLib) and 'fuse_file' in ECFusionLib.__all__\n"
            "print(sorted(m for m in ('torch', 'SimpleITK', 'skimage', 'scipy') if m in sys.modules))\n"
            "from ECFusionLib import fuse, FusionSettings\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    # nothing heavy at import; the pipeline itself imports torch only when the torch backend runs (backends.py)
    assert r.stdout.split("\n")[:2] == ["[]", "False"]


@pytest.mark.slow
def test_fuse_takes_paths_or_images_and_matches_the_command_line(tmp_path, monkeypatch, capsys, phantom_files,
                                                                  weights_file):
    monkeypatch.chdir(Path(phantom_files["MRI"]).parent)  # relative paths, as a user in that folder gives them
    mri, pet = Path(phantom_files["MRI"]).name, Path(phantom_files["PET"]).name
    before = {p: file_digest(p) for p in (mri, pet)}
    settings = dict(weights=weights_file, device="cpu", precision="fp32", window=6.0, level=3.0)
    from_paths = ECFusionLib.fuse(mri, pet, task="pet-mri", **settings)
    images = sitk.ReadImage(mri), sitk.ReadImage(pet)
    from_images = ECFusionLib.fuse(*images, task="PET-MRI", **settings)
    assert from_paths.GetNumberOfComponentsPerPixel() == 3 and from_paths.GetSize() == images[0].GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(from_paths), sitk.GetArrayFromImage(from_images))
    out = tmp_path / "cli.nrrd"
    code, text = run_cli(capsys, "fuse", "--anatomical", mri, "--functional", pet, "--task", "PET-MRI", "--output", out,
                         "--weights", weights_file, "--device", "cpu", "--precision", "fp32", "--window", "6",
                         "--level", "3", "--quiet")
    assert code == 0, text
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(from_paths))
    done = ECFusionLib.fuse_file(mri, pet, tmp_path / "api.nrrd", task="PET-MRI", **settings)
    assert done.task == "PET-MRI" and np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(done.output))),
                                                     sitk.GetArrayFromImage(from_paths))
    assert {p: file_digest(p) for p in (mri, pet)} == before  # inputs untouched


def test_api_errors_say_what_is_wrong(tmp_path, phantom_files, weights_file):
    mri, pet = phantom_files["MRI"], phantom_files["PET"]
    with pytest.raises(TypeError, match="windw"):
        ECFusionLib.fuse(mri, pet, task="PET-MRI", windw=3, weights=weights_file)
    with pytest.raises(ECFusionLib.ECFusionError, match="unknown task 'PET-CT'"):
        ECFusionLib.fuse(mri, pet, task="PET-CT", weights=weights_file)
    with pytest.raises(ECFusionLib.ECFusionError, match="cannot tell the task"):
        ECFusionLib.fuse(sitk.ReadImage(mri), sitk.Image(8, 8, 8, sitk.sitkFloat32), weights=weights_file)
    with pytest.raises(ECFusionLib.ECFusionError):
        ECFusionLib.fuse_file(mri, pet, pet, task="PET-MRI", weights=weights_file)  # never over an input
