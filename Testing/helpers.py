"""Helpers shared by the test files (fixtures live in conftest.py): running the command line in-process,
random 8-bit volumes, and a tiny set of 2D training pairs written as real PNG files."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk


SEED = 1234  # the seeded random network of the tests (conftest.seeded_model) and of the golden outputs


def seeded_network(seed: int = SEED):
    """A new ``ecfusion-v1`` network with seeded random weights, in eval mode (no weights file needed)."""
    import torch

    from ECFusionLib.registry import create_model

    torch.manual_seed(seed)
    return create_model("ecfusion-v1").eval()


def state_digest(model) -> str:
    """SHA-256 over a model's tensors (name, dtype, shape, bytes), whatever file format they came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().float().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def run_cli(capsys, *argv) -> tuple[int, str]:
    """``ecfusion *argv`` in this process: (exit code, stdout + stderr). Arguments may be paths or numbers."""
    from ECFusionLib.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def random_volumes(shape=(6, 40, 52), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 volumes of uniform noise (slices x rows x columns), e.g. a second image and an MRI."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)


def array(img: sitk.Image) -> np.ndarray:
    """The image's voxels as a numpy array (z, y, x[, components])."""
    return sitk.GetArrayFromImage(img)


def file_digest(path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tiny_pairs(root: Path, cases=("5", "6"), slices=3, size=128, seed=0, task="PET-MRI") -> Path:
    """2D training pairs ``root/<task>/{PET|CT,MRI}/<case><slice>.png``: a blob head, MRI-like grey stripes and a
    PET-like hot spot (RGB heat colours for PET-MRI, its grey for CT-MRI), ``size`` x ``size`` pixels."""
    from ECFusionLib.intensity import map_functional
    from ECFusionLib.tasks import TASKS

    rng = np.random.default_rng(seed)
    second = TASKS[task]
    (root / task / second).mkdir(parents=True, exist_ok=True)
    (root / task / "MRI").mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size]
    for c in cases:
        for s in range(slices):
            cy, cx = rng.uniform(40, 88, 2) * size / 128
            head = ((y - cy) / (45 * size / 128)) ** 2 + ((x - cx) / (38 * size / 128)) ** 2 < 1
            mri = (head * (120 + 60 * np.sin(x / 5.0 + s))).clip(0, 255).astype(np.uint8)
            pet = head * np.exp(-((y - cy - 10) ** 2 + (x - cx) ** 2) / 200.0) * 10
            rgb, _, _ = map_functional(pet, "PET", "PET-Heat", 10, 5)
            name = f"{c}{s:03d}.png"
            sitk.WriteImage(sitk.GetImageFromArray(mri), str(root / task / "MRI" / name))
            img = sitk.GetImageFromArray(rgb, isVector=True) if task == "PET-MRI" else \
                sitk.GetImageFromArray(rgb.mean(axis=-1).astype(np.uint8))
            sitk.WriteImage(img, str(root / task / second / name))
    return root


def png_pairs(root: Path, n: int = 2, size=(40, 56), rng=None, dark_rows: int = 0) -> Path:
    """ROOT/<task>/{CT|PET,MRI}/7000.png ... (``n`` pairs each of CT-MRI and PET-MRI), random content from ``rng``
    (default: seed 0); the PET as PET-Heat RGB, the first ``dark_rows`` rows of each MRI black. Returns ``root``."""
    from ECFusionLib.intensity import map_functional

    rng = np.random.default_rng(0) if rng is None else rng
    for task, second in (("CT-MRI", "CT"), ("PET-MRI", "PET")):
        (root / task / second).mkdir(parents=True)
        (root / task / "MRI").mkdir(parents=True)
        for k in range(n):
            name = f"7{k:03d}.png"
            mri = rng.integers(0, 255, size).astype(np.uint8)
            mri[:dark_rows] = 0
            sitk.WriteImage(sitk.GetImageFromArray(mri), str(root / task / "MRI" / name))
            if second == "PET":
                rgb, _, _ = map_functional(rng.random(size) * 10, "PET", window=10, level=5)
                sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(root / task / second / name))
            else:
                sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, size).astype(np.uint8)),
                                str(root / task / second / name))
    return root
