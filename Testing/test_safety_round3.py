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
from ECFusionLib.intensity import map_functional

from conftest import file_digest

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
    """A user's working folder holding mri.nrrd, pet.nrrd, ct.nrrd and w.pt; the current directory."""
    for name in ("MRI", "PET", "CT"):
        shutil.copy(phantom_files[name], tmp_path / f"{name.lower()}.nrrd")
    shutil.copy(weights_file, tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fuse(*extra, anatomical="mri.nrrd", functional="pet.nrrd", output="fused.nrrd", task="PET-MRI"):
    args = ["fuse", "--anatomical", anatomical, "--functional", functional, "--output", output, "--weights", "w.pt",
            "--device", "cpu", "--quiet", *extra]
    return args + (["--task", task] if task else [])


def png_pairs(root: Path, n: int = 2, size=(40, 56)) -> None:
    """ROOT/<task>/{CT|PET,MRI}/<name>.png, random content."""
    rng = np.random.default_rng(0)
    for task, second in (("CT-MRI", "CT"), ("PET-MRI", "PET")):
        (root / task / second).mkdir(parents=True)
        (root / task / "MRI").mkdir(parents=True)
        for k in range(n):
            name = f"7{k:03d}.png"
            sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, size).astype(np.uint8)),
                            str(root / task / "MRI" / name))
            if second == "PET":
                rgb, _, _ = map_functional(rng.random(size) * 10, "PET", window=10, level=5)
                sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(root / task / second / name))
            else:
                sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, size).astype(np.uint8)),
                                str(root / task / second / name))


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
