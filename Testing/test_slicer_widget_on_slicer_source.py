"""The real ECFusionSlicerWidget on Slicer's own parameterNodeWrapper, slicer.util and ScriptedLoadableModule.

For each Slicer release in ../shared/slicer-source (v5.8.1, v5.10.0, v5.12.3 and the preview), one subprocess
(Testing/slicer_widget_driver.py) imports Slicer's Python sources at that release from there (never copied
into this repository), with slicer-core's MRML and Qt/CTK stand-ins that emit signals as Qt does
(Testing/slicer_app_fakes.py), builds the panel from the real .ui and drives it as a user would. Each scenario
is one test here; each release's subprocess runs all its scenarios once (about 15 s of CPU).
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
    """The driver's results for ``release``. The first call starts one driver per release at once (they wait
    mostly on one core each) and collects them all."""
    if not _RESULTS:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        procs = {r: subprocess.Popen([sys.executable, str(DRIVER), str(SOURCE / r)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for r in RELEASES}
        for r, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            line = next((x for x in out.splitlines() if x.startswith("ECFUSION-RESULTS ")), None)
            _RESULTS[r] = json.loads(line.split(" ", 1)[1]) if line else {
                "driver": f"driver failed (exit {proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}"}
    outcome = _RESULTS[release]
    assert "driver" not in outcome, outcome["driver"]
    return outcome


def test_every_supported_release_is_present():
    assert {"v5.8.1", "v5.10.0", "v5.12.3"} <= set(RELEASES), f"{SOURCE}: {RELEASES}"
    assert any(r.startswith("main-") for r in RELEASES), "no preview (main-<commit>) sources"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("release", RELEASES)
def test_widget_on_slicer_release(release, scenario):
    outcome = results(release)[scenario]
    assert outcome == "ok", f"Slicer {release}, {scenario}: {SCENARIOS[scenario].__doc__}\n{outcome}"
