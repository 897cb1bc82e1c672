"""Finding and reading 2D image pairs in the layout ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png.

File names are a case number followed by a three-digit slice number (``41012.png``: case 41, slice 12).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .colour import luminance
from .errors import ECFusionError
from .tasks import TASKS, check_task
from .volume_io import read_image


@dataclass(frozen=True)
class Pair:
    task: str
    name: str  # file stem, e.g. "41012"
    second: Path  # CT / PET / SPECT image
    mri: Path

    @property
    def case(self) -> str:
        return self.name[:-3] if len(self.name) > 3 and self.name.isdigit() else self.name


def find_pairs(root: str | Path, tasks=None) -> list[Pair]:
    """All pairs under ``root`` for the given tasks (default: every task folder present)."""
    root = Path(root)
    if not root.is_dir():
        raise ECFusionError(f"input folder {root} does not exist")
    names = [check_task(t) for t in tasks] if tasks else [t for t in TASKS if (root / t).is_dir()]
    if not names:
        raise ECFusionError(f"no task folders ({', '.join(TASKS)}) in {root}; expected ROOT/<task>/{{CT|PET|SPECT,MRI}}/<name>.png")
    pairs = []
    for task in names:
        sec_dir, mri_dir = root / task / TASKS[task], root / task / "MRI"
        if not sec_dir.is_dir() or not mri_dir.is_dir():
            raise ECFusionError(f"{root / task} must contain the folders {TASKS[task]}/ and MRI/")
        for p in sorted(sec_dir.glob("*.png")):
            if (mri_dir / p.name).is_file():
                pairs.append(Pair(task, p.stem, p, mri_dir / p.name))
    if not pairs:
        raise ECFusionError(f"no PNG pairs with matching names found under {root}")
    return pairs


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Returns (second modality as grey H x W float 0-255 -- the Y of an RGB image --,
    MRI H x W float 0-255, the RGB image H x W x 3 uint8 or None when grey)."""
    sec = read_image(pair.second, allow_rgb=True)
    mri = read_image(pair.mri, allow_rgb=True)
    mri_arr = _grey(mri)
    from SimpleITK import GetArrayFromImage

    sec_arr = GetArrayFromImage(sec)
    rgb = None
    if sec.GetNumberOfComponentsPerPixel() == 3:
        rgb = sec_arr.astype(np.uint8)
        sec_grey = luminance(rgb)
    else:
        sec_grey = sec_arr.astype(np.float32)
    if sec_grey.shape != mri_arr.shape:
        raise ECFusionError(f"{pair.second} and {pair.mri} differ in size: {sec_grey.shape} vs {mri_arr.shape}")
    return sec_grey.astype(np.float32), mri_arr, rgb


def _grey(img) -> np.ndarray:
    from SimpleITK import GetArrayFromImage

    arr = GetArrayFromImage(img)
    return (luminance(arr) if img.GetNumberOfComponentsPerPixel() == 3 else arr).astype(np.float32)


def split_cases(pairs: list[Pair], val_fraction: float = 0.15, seed: int = 0, val_cases=None):
    """Split pairs into (train, val) by whole cases.

    ``val_cases`` (e.g. {"30"}) fixes the validation cases; otherwise cases are drawn in a seeded
    random order until at least ``val_fraction`` of the pairs are held out.
    """
    cases = sorted({p.case for p in pairs})
    if val_cases is None:
        order = cases[:]
        random.Random(seed).shuffle(order)
        val_cases, held = set(), 0
        for c in order:
            if held >= val_fraction * len(pairs) or len(val_cases) == len(cases) - 1:
                break
            val_cases.add(c)
            held += sum(p.case == c for p in pairs)
    val_cases = set(val_cases)
    return [p for p in pairs if p.case not in val_cases], [p for p in pairs if p.case in val_cases]
