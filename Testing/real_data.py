"""Real head volumes for the tests: found or fetched outside the repository, or the test is skipped with the reason.

- The single-subject 1 mm T1 (Colin27, ``ch2.nii.gz``) from Debian's ``mricron-data`` package: the folder in
  ``$ECFUSION_MRICRON_DIR`` (holding ``ch2.nii.gz``, or the package's ``usr/share/mricron/templates``), else the
  cache ``$ECFUSION_TEST_DATA`` (default ``~/.cache/ecfusion-test-data``), else fetched into that cache with
  ``apt-get download mricron-data`` + ``dpkg -x`` (``apt-get update -qq`` first if the download fails).
  ``python Testing/real_data.py`` does the fetch (``.ci/run`` calls it before the tests).
- The real H2-15O PET and HMPAO SPECT averages (SPM12, 2 mm MNI): the folder in ``$ECFUSION_REAL3D_DIR``, else
  ``shared/data/real3d`` beside the repository or one of its parents (``../shared/data/real3d``).
- The AANLIB 2D pairs (Harvard Whole Brain Atlas: registered 256 x 256 CT/PET/SPECT-MRI slices, real scans): the
  folder in ``$ECFUSION_AANLIB_DIR``, else ``shared/data/aanlib`` beside the repository or one of its parents.
Nothing is ever written inside the repository.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T1_NAME = "ch2.nii.gz"
BRAIN_NAME = "ch2bet.nii.gz"  # the same T1 skull-stripped (brain only), also in mricron-data
T1_NAMES = (T1_NAME, BRAIN_NAME)
TEMPLATES = Path("usr/share/mricron/templates")
REAL3D = ("PET_H2O15_avg12.nii.gz", "SPECT_HMPAO_avg90.nii.gz")


def cache_dir() -> Path:
    return Path(os.environ.get("ECFUSION_TEST_DATA", Path.home() / ".cache" / "ecfusion-test-data"))


def _t1_in(folder: Path, name: str = T1_NAME) -> Path | None:
    for candidate in (folder / name, folder / TEMPLATES / name):
        if candidate.is_file():
            return candidate
    return None


def _run(cmd: list[str], cwd: Path) -> bool:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def fetch_mricron(cache: Path) -> str | None:
    """Download ``mricron-data`` and unpack it into ``cache``; None when done, else why it could not."""
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        return "apt-get/dpkg not available (not a Debian-based system)"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        if not _run(["apt-get", "download", "mricron-data"], work):
            _run(["apt-get", "update", "-qq"], work)  # works as root only; harmless otherwise
            if not _run(["apt-get", "download", "mricron-data"], work):
                return "`apt-get download mricron-data` failed (offline, or no package list)"
        debs = sorted(work.glob("mricron-data_*.deb"))
        if not debs or not _run(["dpkg", "-x", str(debs[0]), str(work / "x")], work):
            return "`dpkg -x` of mricron-data failed"
        for name in T1_NAMES:
            unpacked = work / "x" / TEMPLATES / name
            if not unpacked.is_file():
                return f"mricron-data has no {name}"
            shutil.copyfile(unpacked, cache / (name + ".part"))
            os.replace(cache / (name + ".part"), cache / name)  # never a half-written file in the cache
    return None


def colin27_t1(fetch: bool = True, name: str = T1_NAME) -> tuple[Path | None, str]:
    """(path of ch2.nii.gz, or of ``name``: ``BRAIN_NAME`` for the skull-stripped one, "") or (None, why not)."""
    given = os.environ.get("ECFUSION_MRICRON_DIR")
    if given:
        found = _t1_in(Path(given), name)
        return (found, "") if found else (None, f"ECFUSION_MRICRON_DIR={given} holds no {name}")
    found = _t1_in(cache_dir(), name)
    if found or not fetch:
        return found, "" if found else f"{name} not in {cache_dir()}"
    why = fetch_mricron(cache_dir())
    return (cache_dir() / name, "") if why is None else (None, f"single-subject T1 unavailable: {why}")


def real3d_dir() -> tuple[Path | None, str]:
    """(folder holding the real PET and SPECT, "") or (None, why not)."""
    given = os.environ.get("ECFUSION_REAL3D_DIR")
    candidates = [Path(given)] if given else [p / "shared" / "data" / "real3d" for p in ROOT.parents]
    for folder in candidates:
        if all((folder / name).is_file() for name in REAL3D):
            return folder, ""
    return None, ("real PET/SPECT volumes not found: set ECFUSION_REAL3D_DIR to a folder holding "
                  + ", ".join(REAL3D))


def aanlib_dir(task: str = "CT-MRI") -> tuple[Path | None, str]:
    """(root of the AANLIB pairs holding ``task``'s folder, "") or (None, why not)."""
    given = os.environ.get("ECFUSION_AANLIB_DIR")
    candidates = [Path(given)] if given else [p / "shared" / "data" / "aanlib" for p in ROOT.parents]
    for folder in candidates:
        if (folder / task / "MRI").is_dir():
            return folder, ""
    second = task.split("-")[0]  # the second modality's folder: CT, PET or SPECT
    return None, (f"AANLIB {task} pairs not found (../shared/data/aanlib): set ECFUSION_AANLIB_DIR to a folder "
                  f"holding {task}/{second}/ and {task}/MRI/")


if __name__ == "__main__":  # fetch for CI; never fails the build
    for t1_name in T1_NAMES:
        path, why = colin27_t1(name=t1_name)
        print(f"real_data: {path}" if path else f"real_data: {why} (the tests that need it will be skipped)")
    sys.exit(0)
