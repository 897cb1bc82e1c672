"""Scoring fused 2D images: the fusion metrics averaged over images, the background level, the task's image
check (bone kept / hot spots kept) and the selection score training chooses its best epoch with.

Arrays are N x H x W (or H x W) on the 0-255 scale: A the second image's grey (CT, or the Y of PET/SPECT), B the
MRI, F the fused grey (Y). Needs scipy and scikit-image (the ``metrics`` extra), no torch.
"""
from __future__ import annotations

import math

import numpy as np

from . import metrics as M
from .tasks import task_spec

CHECK_TARGET = 0.95  # issue 14: bone kept / hot spots kept


def check_name(task: str) -> str:
    """The task's image check: "bone_kept" (a CT, shown grey) or "hot_kept" (PET/SPECT, the hottest uptake)."""
    return task_spec(task).image_check


def check_value(task: str, a255: np.ndarray, b255: np.ndarray, f255: np.ndarray) -> float:
    """The task's image check on one image (``metrics.bone_kept`` or ``metrics.hot_spots_kept``); NaN when
    the image has no bone / hot spot."""
    if check_name(task) == "bone_kept":
        return M.bone_kept(a255, b255, f255)
    return M.hot_spots_kept(a255, f255)


def background_level(a255: np.ndarray, b255: np.ndarray, f255: np.ndarray) -> float:
    """'bg': the mean fused grey level where both sources are black (<= 0.5); 0 when there is no such pixel.
    Lower is better: 0 keeps the air black."""
    bg = (a255 <= 0.5) & (b255 <= 0.5)
    return float(f255[bg].mean()) if bg.any() else 0.0


def evaluate_arrays(a255: np.ndarray, b255: np.ndarray, f255: np.ndarray, names=M.METRICS) -> dict[str, float]:
    """Mean of each metric over N image triples (N x H x W, 0-255), plus 'bg' (``background_level``)."""
    rows = [M.all_metrics(x, y, z, names) for x, y, z in zip(a255, b255, f255)]
    out = {n: float(np.mean([r[n] for r in rows])) for n in names}
    out["bg"] = background_level(a255, b255, f255)
    return out


def image_check(task: str, a255: np.ndarray, b255: np.ndarray, f255: np.ndarray) -> float:
    """Mean over N images of the task's image check (``check_value``); NaN when no image has bone / hot spots."""
    vals = [check_value(task, x, y, z) for x, y, z in zip(a255, b255, f255)]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def selection_score(model_metrics: dict, ref: dict, names, check: float | None = None) -> float:
    """Number of metrics beating the reference (pixel-max), + 1 when ``check`` (the image check) is given and
    >= 0.95 (as ``scripts/cross_validate.py`` chooses), tie-broken by mean relative margin."""
    wins = M.beats(model_metrics, ref, names)
    margin = np.mean([(ref[n] - model_metrics[n]) / abs(ref[n]) if n in M.LOWER_IS_BETTER
                      else (model_metrics[n] - ref[n]) / abs(ref[n]) for n in names])
    bonus = 1.0 if check is not None and math.isfinite(check) and check >= CHECK_TARGET else 0.0
    return len(wins) + bonus + float(np.tanh(margin))


# ------------------------------------------------------------------ fused PNG folders (`ecfusion evaluate`)
CHECKS = ("bone_kept", "hot_kept")


def column_names(checks: bool = False) -> list[str]:
    """The per-image score columns ``evaluate_pairs`` gives: the metrics, 'bg', and with ``checks`` the image checks."""
    return [*M.METRICS, "bg", *(CHECKS if checks else ())]


def evaluate_pairs(input_dir, fused_dir, tasks=None, names=None, baselines: bool = False,
                   checks: bool = False) -> list[dict]:
    """Score fused PNGs FUSED/<task>/<name>.png against their source pairs ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png.

    Args:
        input_dir, fused_dir: the two roots.
        tasks: only these tasks (default: every task folder present); names: only these file stems.
        baselines: also score pixel-max and pixel-average fusion of the sources.
        checks: also the image checks (``bone_kept`` for a CT task, ``hot_kept`` otherwise; NaN where not applicable).
    Returns:
        One row per image and method: {"task", "name", "method", <column_names(checks)>: value}.
    """
    from pathlib import Path

    import SimpleITK as sitk

    from .colour import luminance
    from .pairs import find_pairs, read_pair
    from .volume_io import read_image

    pairs = find_pairs(input_dir, tasks)
    if names:
        pairs = [p for p in pairs if p.name in set(names)]
    rows = []
    for pair in pairs:
        a, b, _ = read_pair(pair)
        fused = sitk.GetArrayFromImage(read_image(Path(fused_dir) / pair.task / f"{pair.name}.png", allow_rgb=True,
                                                  what="fused image"))
        candidates = {"ecfusion": np.rint(luminance(fused) if fused.ndim == 3 else fused.astype(np.float32))}
        if baselines:
            candidates.update({"pixel-max": np.maximum(a, b), "pixel-average": (a + b) / 2})
        for method, img in candidates.items():
            m = M.all_metrics(np.rint(a), b, np.rint(img))
            if checks:
                m.update({c: float("nan") for c in CHECKS})
                m[check_name(pair.task)] = check_value(pair.task, np.rint(a), b, np.rint(img))
            m["bg"] = background_level(a, b, img)
            rows.append({"task": pair.task, "name": pair.name, "method": method, **m})
    return rows


def summary_table(rows: list[dict], names: list[str]) -> str:
    """A plain-text table: per task and method, the mean of each column over its images (NaN ignored)."""
    lines = [f"{'task':10s} {'method':14s} " + " ".join(f"{n:>8s}" for n in names)]
    for task in sorted({r["task"] for r in rows}):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            lines.append(f"{task:10s} {method:14s} " + " ".join(f"{nanmean([r[n] for r in sel]):8.4f}" for n in names))
    return "\n".join(lines)


def nanmean(values) -> float:
    """Mean ignoring NaN (an image check that does not apply, e.g. a slice without bone); NaN if none applies."""
    v = np.asarray(values, float)
    return float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else float("nan")
