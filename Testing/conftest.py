"""Shared fixtures (session-scoped: built once per run): seeded random weights as a model and as a real weights
file, the phantom head on a coarse grid (and its files) and at 2 mm. Helper functions live in helpers.py.

Slow tests (over ~15 s on 2 cores: registration, whole training runs, Dask clusters, large phantoms, subprocesses
that import torch) carry ``@pytest.mark.slow``; ``pytest Testing -m "not slow"`` is the quick run for development,
the full run (CI) includes them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
# as the `ecfusion` command sets for itself (runtime.tune_cpu), before torch starts OpenMP: threads that spin while
# waiting made a 40 x 48 x 40 fusion take 7.6 s of CPU instead of 0.3 s on the shared 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ECFusionSlicer"))  # the module's Qt-free ECFusionSlicerLib
sys.path.insert(0, str(ROOT / "scripts"))

import pytest
import SimpleITK as sitk
import torch

from ECFusionLib.network import ECFusionNet
from ECFusionLib.phantom import make_phantom
from ECFusionLib.weights import save_weights
from helpers import seeded_network

SMALL = (40, 48, 40)  # phantom size (x, y, z) on a 4.5 mm grid: the whole head, quick on 2 CPU cores


@pytest.fixture(scope="session")
def seeded_model() -> ECFusionNet:
    """ecfusion-v1 with seeded random weights (helpers.SEED), eval mode; tests must not change it."""
    return seeded_network()


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory, seeded_model) -> str:
    path = tmp_path_factory.mktemp("weights") / "seeded.npz"
    save_weights(seeded_model, path, {"note": "seeded random weights for tests"})
    return str(path)


@pytest.fixture(scope="session")
def phantom() -> dict[str, sitk.Image]:
    """The phantom head on coarse grids (MRI 40 x 48 x 40 at 4.5 mm; CT, PET, SPECT on their own grids)."""
    return make_phantom(size=SMALL, seed=3, spacing=4.5)


@pytest.fixture(scope="session")
def phantom_2mm() -> dict[str, sitk.Image]:
    """The phantom head with the MRI on a 90 x 108 x 90 grid at 2 mm (about 5 s to build: once per run)."""
    return make_phantom(size=(90, 108, 90), seed=3, spacing=2.0)


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory, phantom) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("phantom")
    out = {}
    for name, img in phantom.items():
        out[name] = str(folder / f"{name.lower()}.nrrd")
        sitk.WriteImage(img, out[name])
    return out


from helpers import array, file_digest  # noqa: E402,F401 (kept importable from here for older test files)
