"""Finding and reading 2D image pairs in the layout ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png.

File names are a case number followed by a three-digit slice number (``41012.png``: case 41, slice 12).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .colour import luminance
from .errors import ECFusionError
from .tasks import TASKS, check_task, task_spec

log = logging.getLogger(__name__)

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
        spec = task_spec(task)  # the 2D folder names: ROOT/<name>/<second_modality>, ROOT/<name>/<anatomical_modality>
        sec_dir, mri_dir = root / task / spec.second_modality, root / task / spec.anatomical_modality
        if not sec_dir.is_dir() or not mri_dir.is_dir():
            raise ECFusionError(f"{root / task} must contain the folders {sec_dir.name}/ and {mri_dir.name}/")
        seconds = {p.name: p for p in _pngs(sec_dir)}
        mris = {p.name for p in _pngs(mri_dir)}
        for name, p in seconds.items():
            if name in mris:
                pairs.append(Pair(task, p.stem, p, mri_dir / name))
        for folder, alone in ((sec_dir, sorted(set(seconds) - mris)), (mri_dir, sorted(mris - set(seconds)))):
            if alone:
                partner = mri_dir.name if folder == sec_dir else sec_dir.name
                log.warning("%d image(s) in %s have no %s partner of the same name and are skipped: %s%s",
                            len(alone), folder, partner, ", ".join(alone[:5]), " ..." if len(alone) > 5 else "")
    if not pairs:
        raise ECFusionError(f"no PNG pairs with matching names found under {root}")
    return pairs


def _pngs(folder: Path) -> list[Path]:
    """The .png files in ``folder``; anything else named .png (a folder "dir.png") is skipped with a warning."""
    found = sorted(folder.glob("*.png"))
    odd = [p.name for p in found if not p.is_file()]
    if odd:
        one = len(odd) == 1
        log.warning("%s: %s %s (a folder named .png?) and %s skipped", folder, ", ".join(odd[:5]),
                    "is not an image file" if one else "are not image files", "is" if one else "are")
    return [p for p in found if p.is_file()]


def image_size(path: Path) -> tuple[int, ...]:
    """Size (x, y[, z]) from the file's header, without reading the pixels."""
    from SimpleITK import ImageFileReader

    reader = ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ECFusionError(f"cannot read {path}: it is not a readable PNG image") from exc
    return tuple(reader.GetSize())


def check_pair_sizes(pairs: list[Pair]) -> None:
    """ECFusionError naming the pairs whose two images differ in size (2D pairs must match pixel for pixel:
    there is no geometry to resample with, so registration cannot help)."""
    bad = []
    for p in pairs:
        a, b = image_size(p.second), image_size(p.mri)
        if a != b:
            bad.append(f"{p.task}/{p.name} ({'x'.join(map(str, a))} vs MRI {'x'.join(map(str, b))})")
    if bad:
        raise ECFusionError(f"{len(bad)} pair(s) have images of different sizes: {', '.join(bad[:5])}"
                            f"{' ...' if len(bad) > 5 else ''}. 2D pairs must have the same size; resize one "
                            "image of each pair (nothing was written)")


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Returns (second modality as grey H x W float 0-255 -- the Y of an RGB image --,
    MRI H x W float 0-255, the RGB image H x W x 3 uint8 or None when grey)."""
    from .volume_io import read_image  # SimpleITK: imported here, so training from a packed .npz needs none

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
        raise ECFusionError(f"{pair.second} and {pair.mri} differ in size: {sec_grey.shape} vs {mri_arr.shape}; "
                            "2D pairs must have the same size (resize one)")
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
