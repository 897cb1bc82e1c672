"""The real ECFusionSlicerWidget on Slicer's own parameterNodeWrapper, slicer.util and ScriptedLoadableModule.

For each Slicer release in ../shared/slicer-source (v5.8.1, v5.10.0, v5.12.3 and the preview), one subprocess
(Testing/slicer_widget_driver.py) imports Slicer's Python sources at that release from there (never copied
into this repository), with slicer-core's MRML and Qt/CTK stand-ins that emit signals as Qt does
(Testing/slicer_app_fakes.py), builds the panel from the real .ui and drives it as a user would. Each scenario
is one test here; the subprocess runs all of a release's scenarios once (about 6 s).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer_core")

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI), or beside the folder of worktrees; ECFUSION_SLICER_SOURCE overrides.
SOURCE = Path(os.environ.get("ECFUSION_SLICER_SOURCE") or next(
    (p / "shared" / "slicer-source" for p in (ROOT.parent, ROOT.parent.parent)
     if (p / "shared" / "slicer-source").is_dir()), ROOT.parent / "shared" / "slicer-source"))
RELEASES = sorted(p.name for p in SOURCE.iterdir() if (p / "Base" / "Python" / "slicer").is_dir()) \
    if SOURCE.is_dir() else []
DRIVER = Path(__file__).with_name("slicer_widget_driver.py")
sys.path.insert(0, str(DRIVER.parent))
from slicer_widget_driver import SCENARIOS  # noqa: E402  (names only; the driver's imports are light)

_RESULTS: dict[str, dict] = {}


def results(release: str) -> dict:
    """The driver's results for ``release`` (run once per release)."""
    if release not in _RESULTS:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        proc = subprocess.run([sys.executable, str(DRIVER), str(SOURCE / release)], capture_output=True, text=True,
                              timeout=600, env=env, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("ECFUSION-RESULTS ")), None)
        assert line, f"driver failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        _RESULTS[release] = json.loads(line.split(" ", 1)[1])
    return _RESULTS[release]


def test_every_supported_release_is_present():
    assert {"v5.8.1", "v5.10.0", "v5.12.3"} <= set(RELEASES), f"{SOURCE}: {RELEASES}"
    assert any(r.startswith("main-") for r in RELEASES), "no preview (main-<commit>) sources"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("release", RELEASES)
def test_widget_on_slicer_release(release, scenario):
    outcome = results(release)[scenario]
    assert outcome == "ok", f"Slicer {release}, {scenario}: {SCENARIOS[scenario].__doc__}\n{outcome}"
