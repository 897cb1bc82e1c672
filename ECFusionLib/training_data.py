"""Training data: 2D pairs read into tensors (from PNG folders or one packed ``.npz``), the case split
(seeded, given cases, or a cross-validation fold), and the patch sampler.

Patches: each 256x256 image gives 9 overlapping 128x128 patches (stride 64). Each patch has a 50 %
chance of a random 64x64 square set to black or white, on ONE of the two images (chosen at random):
content present in only one source is what the network must learn to carry into the fused image.
``upsample=True`` (the paper) shows patches at 256x256 (nearest); ``False`` (the reduced CPU schedule)
trains on the 128x128 patches directly. Values are in [-1, 1].

Packed data (``pack_pairs``): the PNG pairs' pixels as read (uint8) and their file stems in one compressed
``.npz``, read with numpy alone (``allow_pickle=False``): for a machine without SimpleITK (the GPU image).
"""
from __future__ import annotations

import hashlib
import json
import random
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ECFusionError
from .evaluation import evaluate_arrays, image_check
from .pairs import Pair, split_cases
from .safe_files import atomic_write

PATCH, STRIDE, SQUARE = 128, 64, 64  # training patch, its stride, the occluding square (pixels)
DEFAULT_FOLDS = Path(__file__).resolve().parent / "weights" / "cv_folds.json"


# ------------------------------------------------------------------ reading pairs
def to_unit(x: np.ndarray) -> np.ndarray:
    """0-255 -> [-1, 1]."""
    return np.asarray(x, dtype=np.float32) / 127.5 - 1.0


def load_images(pairs: list[Pair], reader=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read pairs into two N x 1 x H x W float tensors in [-1, 1] (second modality / Y, MRI). ``reader(pair)``
    -> (second grey, MRI grey) 0-255; default: the PNG files (``pairs.read_pair``).

    Raises:
        ECFusionError: the images are not all of one size (naming the pairs that differ from the most common).
    """
    if reader is None:
        from .pairs import read_pair

        reader = lambda p: read_pair(p)[:2]  # noqa: E731
    a, b = [], []
    for p in pairs:
        sec, mri = reader(p)
        a.append(to_unit(sec))
        b.append(to_unit(mri))
    check_one_size(pairs, [x.shape for x in a])
    return torch.from_numpy(np.stack(a))[:, None], torch.from_numpy(np.stack(b))[:, None]


def _size(shape) -> str:
    return "x".join(map(str, shape[::-1]))  # width x height, as image viewers say


def check_one_size(pairs: list[Pair], shapes: list[tuple]) -> None:
    """ECFusionError naming the pairs whose size (H x W) differs from the most common one: a training set is
    stacked into one tensor, and the network learns at one scale (resize them, or leave them out)."""
    if len(set(shapes)) <= 1:
        return
    common = Counter(shapes).most_common(1)[0][0]
    odd = [f"{p.task}/{p.name} ({_size(s)})" for p, s in zip(pairs, shapes) if s != common]
    raise ECFusionError(f"training pairs must all have one size: most are {_size(common)}, but {len(odd)} differ: "
                        f"{', '.join(odd[:8])}{' ...' if len(odd) > 8 else ''}. Resize them to {_size(common)} (or "
                        "move them out of --data); nothing was trained")


def check_trainable_size(images: torch.Tensor) -> None:
    """ECFusionError when the images (N x 1 x H x W) are smaller than one training patch (PATCH x PATCH)."""
    h, w = images.shape[-2:]
    if min(h, w) < PATCH:
        raise ECFusionError(f"the training images are {w}x{h} pixels: too small for the network's {PATCH}x{PATCH} "
                            f"training patches (and the fusion metrics' windows); give pairs of at least {PATCH}x{PATCH} "
                            "(the paper's are 256x256)")


def data_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 (hex) of the tensors' values: identifies the data a run was trained on, wherever it lies."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)}|".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _grey(arr: np.ndarray) -> np.ndarray:
    from .colour import luminance

    return (luminance(arr) if arr.ndim == 3 else arr).astype(np.float32)


# ------------------------------------------------------------------ packed .npz
def pack_pairs(root, out, tasks=None) -> Path:
    """Pack the PNG pairs under ``root`` into one compressed ``.npz`` (the pixels as read, uint8, and the file stems)
    that training reads with numpy alone (``--data FILE.npz``): for a machine without SimpleITK (the GPU image)."""
    from SimpleITK import GetArrayFromImage

    from .pairs import find_pairs
    from .volume_io import read_image

    arrays = {}
    found = find_pairs(root, tasks)  # once: the folders are listed (and orphans reported) one time
    for task in sorted({p.task for p in found}):
        pairs = [p for p in found if p.task == task]
        sec = [GetArrayFromImage(read_image(p.second, allow_rgb=True)) for p in pairs]
        mri = [GetArrayFromImage(read_image(p.mri, allow_rgb=True)) for p in pairs]
        for name, stack in (("second", sec), ("mri", mri)):
            if len({x.shape for x in stack}) != 1 or any(x.dtype != np.uint8 for x in stack):
                raise ECFusionError(f"{task}: packing needs 8-bit images of one size ({name})")
            arrays[f"{task}/{name}"] = np.stack(stack)
        arrays[f"{task}/names"] = np.array([p.name for p in pairs])
    return _write_npz(out, arrays)


def _write_npz(out, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to the compressed ``.npz`` ``out`` atomically (its folder made if needed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    atomic_write(out, write)
    return out


def _read_npz(path, task: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of a packed file (those of ``task`` only when given), read with ``allow_pickle=False``.

    Raises:
        ECFusionError: not found, not an .npz, damaged, or holding Python objects (refused: loading them could
            run code).
    """
    path = Path(path)
    if not path.is_file():
        raise ECFusionError(f"packed data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single array, not an .npz archive")
            if task is not None and f"{task}/names" not in z.files:
                raise ECFusionError(f"{path} holds no {task} pairs (it has: "
                                    f"{sorted({k.split('/')[0] for k in z.files})})")
            return {k: z[k] for k in z.files if task is None or k.startswith(f"{task}/")}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ECFusionError(f"{path} holds Python objects (pickled arrays); they are refused because loading "
                                "them could run code. Write the file with scripts/pack_pairs.py") from exc
        raise ECFusionError(f"{path} is not a packed pairs file ({exc}); write it with scripts/pack_pairs.py") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ECFusionError(f"{path} cannot be read as a packed pairs file ({type(exc).__name__}: {exc}); it is "
                            "damaged or not an .npz from scripts/pack_pairs.py") from exc


def _task_arrays(arrays: dict, path, task: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, second N x H x W[x3] uint8, MRI N x H x W[x3] uint8) of ``task``; ECFusionError if not as
    ``pack_pairs`` writes them."""
    names, sec, mri = (arrays.get(f"{task}/{k}") for k in ("names", "second", "mri"))
    if names is None or names.dtype.kind not in "US" or names.ndim != 1:
        raise ECFusionError(f"{path}: '{task}/names' is not a list of names; write the file with scripts/pack_pairs.py")
    for what, x in (("second", sec), ("mri", mri)):
        if x is None or x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(names):
            raise ECFusionError(f"{path}: '{task}/{what}' is not {len(names)} 8-bit images; write the file with "
                                "scripts/pack_pairs.py")
    return [str(n) for n in names], sec, mri


def subset_packed(src, out, per_case: int) -> Path:
    """Write a copy of a packed file keeping the first ``per_case`` pairs of every case (numpy only): every case
    stays, so cross-validation folds still resolve (``scripts/gpu_train.sh --smoke``)."""
    arrays = _read_npz(src)
    for task in {k.split("/")[0] for k in arrays}:
        names, _, _ = _task_arrays(arrays, src, task)
        seen: dict[str, int] = {}
        keep = []
        for i, n in enumerate(names):
            case = Pair(task, n, Path(), Path()).case
            seen[case] = seen.get(case, 0) + 1
            if seen[case] <= per_case:
                keep.append(i)
        for k in ("names", "second", "mri"):
            arrays[f"{task}/{k}"] = arrays[f"{task}/{k}"][keep]
    return _write_npz(out, arrays)


def read_packed(path, task: str):
    """(pairs, reader) for ``task`` from a file written by ``pack_pairs``: the same grey images as the PNG path
    (the Y of RGB images, BT.601), read with numpy alone (``allow_pickle=False``)."""
    names, sec, mri = _task_arrays(_read_npz(path, task), path, task)
    pairs = [Pair(task, n, Path(path), Path(path)) for n in names]
    index = {n: i for i, n in enumerate(names)}
    return pairs, lambda p: (_grey(sec[index[p.name]]), _grey(mri[index[p.name]]))


def read_data(data, task: str):
    """(pairs, reader or None) of ``task`` from ``--data``: a packed ``.npz`` or a PNG folder."""
    if str(data).endswith(".npz"):
        return read_packed(data, task)
    from .pairs import find_pairs

    return find_pairs(data, [task]), None


# ------------------------------------------------------------------ splits
def read_folds(path, task: str) -> list[list[str]]:
    """The cross-validation folds of ``task`` (lists of case names) from a folds file (``weights/cv_folds.json``
    layout: {"tasks": {task: {"folds": [[case, ...], ...]}}})."""
    try:
        data = json.loads(Path(path).read_text())
        folds = data["tasks"][task]["folds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ECFusionError(f"cannot read the {task} folds from {path} ({type(exc).__name__}: {exc})") from exc
    return [[str(c) for c in f] for f in folds]


def split_for(cfg, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(training, validation) pairs: every case (``all_cases``), one fold held out (``holdout_fold``: validation is
    exactly that fold's cases, all present; training every other case), or ``split_cases`` (``val_cases`` / seeded).
    ``cfg``: a ``training.TrainConfig``."""
    if cfg.all_cases:
        return list(pairs), []
    val_cases = cfg.val_cases
    if cfg.holdout_fold is not None:
        path = cfg.folds or DEFAULT_FOLDS
        folds = read_folds(path, cfg.task)
        if not 0 <= cfg.holdout_fold < len(folds):
            raise ECFusionError(f"--holdout-fold {cfg.holdout_fold}: {path} has {len(folds)} {cfg.task} folds "
                                f"(0-{len(folds) - 1})")
        fold = folds[cfg.holdout_fold]
        if val_cases and set(map(str, val_cases)) != set(fold):
            raise ECFusionError(f"--val-cases {val_cases} and --holdout-fold {cfg.holdout_fold} ({fold}) disagree; give one")
        present = {p.case for p in pairs}
        missing = sorted(set(fold) - present)
        if missing:
            raise ECFusionError(f"fold {cfg.holdout_fold} of {path} names {cfg.task} cases not in the data: {missing}")
        val_cases = fold
    return split_cases(pairs, cfg.val_fraction, cfg.split_seed, val_cases)


# ------------------------------------------------------------------ a run's data
@dataclass
class TrainData:
    """The loaded pairs: training tensors (N x 1 x H x W, [-1, 1]; a = second image / Y, b = MRI), the validation
    images (8-bit and as float 0-255, N x H x W), pixel-max's scores on them (``ref``), and the data's digest."""

    train_pairs: list
    val_pairs: list
    ta: torch.Tensor
    tb: torch.Tensor
    va8: np.ndarray | None = None
    vb8: np.ndarray | None = None
    ref: dict | None = None
    digest: str = ""

    @property
    def validate(self) -> bool:
        return bool(self.val_pairs)



def load_data(cfg, log) -> TrainData:
    """Read and split the pairs of ``cfg`` (a ``training.TrainConfig``), check them (one size, at least one
    patch), and score pixel-max on the validation images; ``log`` gets the split."""
    pairs, reader = read_data(cfg.data, cfg.task)
    train_pairs, val_pairs = split_for(cfg, pairs)
    if not train_pairs or (not cfg.all_cases and not val_pairs):
        raise ECFusionError(f"need at least two cases to split training and validation, found {len({p.case for p in pairs})}")
    key = lambda c: (0, int(c), c) if c.isdigit() else (1, 0, c)  # noqa: E731
    log(f"{cfg.task}: {len(train_pairs)} training pairs (cases {sorted({p.case for p in train_pairs}, key=key)}), "
        f"{len(val_pairs)} validation pairs (cases {sorted({p.case for p in val_pairs}, key=key)})")
    a, b = load_images(train_pairs + val_pairs, reader)  # one size for all (checked)
    check_trainable_size(a)
    n = len(train_pairs)
    data = TrainData(train_pairs, val_pairs, a[:n], b[:n], digest=data_digest(a[:n], b[:n], a[n:], b[n:]))
    if data.validate:
        data.va8, data.vb8 = (np.rint((x[n:, 0].numpy() + 1) * 127.5).astype(np.uint8) for x in (a, b))
        va255, vb255 = data.va8.astype(np.float64), data.vb8.astype(np.float64)
        data.ref = evaluate_arrays(va255, vb255, np.maximum(va255, vb255), cfg.select_metrics)
        data.ref["check"] = image_check(cfg.task, va255, vb255, np.maximum(va255, vb255))
    return data


# ------------------------------------------------------------------ patches
def patch_grid(size: int, patch: int = PATCH, stride: int = STRIDE) -> list[int]:
    """Top-left offsets of the patches along one side of ``size`` pixels."""
    return list(range(0, size - patch + 1, stride))


class PatchSampler:
    """Every epoch: all 9 patches of every image, shuffled, with random occluding squares."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, patch=PATCH, stride=STRIDE, square=SQUARE, upsample=True,
                 seed=0):
        self.a, self.b = a, b
        self.patch, self.square, self.upsample = patch, square, upsample
        ys, xs = patch_grid(a.shape[-2], patch, stride), patch_grid(a.shape[-1], patch, stride)
        self.index = [(i, y, x) for i in range(a.shape[0]) for y in ys for x in xs]
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.index)

    def batches(self, batch_size: int):
        """Batches of (second, MRI) patches, B x 1 x P x P (2P with ``upsample``); the last partial batch is dropped."""
        order = self.index[:]
        self.rng.shuffle(order)
        for k in range(0, len(order) - batch_size + 1, batch_size):
            items = order[k : k + batch_size]
            pa = torch.stack([self.a[i, :, y : y + self.patch, x : x + self.patch] for i, y, x in items]).clone()
            pb = torch.stack([self.b[i, :, y : y + self.patch, x : x + self.patch] for i, y, x in items]).clone()
            for j in range(len(items)):
                if self.rng.random() < 0.5:
                    target = pa if self.rng.random() < 0.5 else pb
                    y0 = self.rng.randrange(0, self.patch - self.square + 1)
                    x0 = self.rng.randrange(0, self.patch - self.square + 1)
                    target[j, :, y0 : y0 + self.square, x0 : x0 + self.square] = 1.0 if self.rng.random() < 0.5 else -1.0
            if self.upsample:
                pa = F.interpolate(pa, scale_factor=2, mode="nearest")
                pb = F.interpolate(pb, scale_factor=2, mode="nearest")
            yield pa, pb
