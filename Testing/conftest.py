"""Shared fixtures: seeded random weights written as a real weights file, and small phantom volumes."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ECFusionSlicer"))  # the module's Qt-free ECFusionSlicerLib
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ECFusionLib.network import ECFusionNet
from ECFusionLib.phantom import make_phantom
from ECFusionLib.weights import save_weights

SMALL = (40, 48, 40)  # phantom size (x, y, z) on a 4.5 mm grid: the whole head, quick on 2 CPU cores


@pytest.fixture(scope="session")
def seeded_model() -> ECFusionNet:
    torch.manual_seed(1234)
    return ECFusionNet().eval()


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
def phantom_files(tmp_path_factory, phantom) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("phantom")
    out = {}
    for name, img in phantom.items():
        out[name] = str(folder / f"{name.lower()}.nrrd")
        sitk.WriteImage(img, out[name])
    return out


def file_digest(path) -> str:
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def array(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)
