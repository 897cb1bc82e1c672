"""Scoring fused 2D images: the fusion metrics averaged over images, the background level, the task's image
check (bone kept / hot spots kept) and the selection score training chooses its best epoch with.

Arrays are N x H x W (or H x W) on the 0-255 scale: A the second image's grey (CT, or the Y of PET/SPECT), B the
MRI, F the fused grey (Y). Needs scipy and scikit-image (the ``metrics`` extra), no torch.

Against what a viewer shows without fusion (issue 18): ``anatomy_vs_blend_pairs`` gives anatomy kept (``metrics.
anatomy_kept``: the MRI's local structure in F) and the image check for the fused images and a 50/50 blend of the
same displayed images (``metrics.blend_y``, which for 2D pairs is the pixel average of A and B).
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


def anatomy_region(task: str, a255: np.ndarray, b255: np.ndarray) -> np.ndarray:
    """Where anatomy kept is measured (boolean, shape of the MRI ``b255``): ``metrics.anatomy_head`` -- the head,
    and for a CT task (image check ``bone_kept``) outside the CT's ``bone_zone``, where the fused image should
    show the CT (``bone_kept`` measures that)."""
    return M.anatomy_head(b255, a255 if check_name(task) == "bone_kept" else None)


def anatomy_value(task: str, a255: np.ndarray, b255: np.ndarray, f255: np.ndarray) -> dict[str, float]:
    """``metrics.anatomy_kept`` of one fused image (H x W) in ``anatomy_region``: {"head", "bright"} (NaN where
    the region has no MRI structure). The same of the blend ``metrics.blend_y(b255, a255)`` is the blend's value."""
    return M.anatomy_kept(b255, f255, a255, head=anatomy_region(task, a255, b255))


def anatomy_vs_blend_pairs(task: str, a255: np.ndarray, b255: np.ndarray, f255: np.ndarray) -> dict:
    """Anatomy kept and the image check over N 2D pairs of one task, fused against the 50/50 blend.

    Args: N x H x W arrays, 0-255: ``a255`` the CT (or the functional Y), ``b255`` the MRI, ``f255`` the fused Y.
    Returns: ``head`` / ``bright``: mean over images of ``anatomy_value`` (the MRI's structure kept, 0-1; for CT
    outside the bone), ``blend_head`` / ``blend_bright`` the same for ``metrics.blend_y``, ``ratio_head`` /
    ``ratio_bright`` fused / blend (>= 1: the fusion shows the MRI's anatomy at least as well as a blend);
    ``check`` the image check's name, ``check_fused`` / ``check_blend`` its mean (``image_check``). NaN ignored.
    """
    blend = [M.blend_y(b, a) for a, b in zip(a255, b255)]
    fused = [anatomy_value(task, a, b, f) for a, b, f in zip(a255, b255, f255)]
    mixed = [anatomy_value(task, a, b, x) for a, b, x in zip(a255, b255, blend)]
    out = {"check": check_name(task), "check_fused": image_check(task, a255, b255, f255),
           "check_blend": image_check(task, a255, b255, np.asarray(blend))}
    for key in ("head", "bright"):
        out[key], out["blend_" + key] = nanmean([r[key] for r in fused]), nanmean([r[key] for r in mixed])
        out["ratio_" + key] = out[key] / out["blend_" + key]
    return out


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
ANATOMY = ("anatomy", "anat_bright")  # anatomy_value's head / bright


def column_names(checks: bool = False) -> list[str]:
    """The per-image score columns ``evaluate_pairs`` gives: the metrics, 'bg', and with ``checks`` the image checks
    and anatomy kept (``anatomy_value``)."""
    return [*M.METRICS, "bg", *(CHECKS + ANATOMY if checks else ())]


def _check_columns(task: str, a255, b255, f255) -> dict[str, float]:
    """The ``checks`` columns of one image: its task's image check (the other NaN) and ``anatomy_value``."""
    out = {c: float("nan") for c in CHECKS}
    out[check_name(task)] = check_value(task, a255, b255, f255)
    anatomy = anatomy_value(task, a255, b255, f255)
    out.update(zip(ANATOMY, (anatomy["head"], anatomy["bright"])))
    return out


def evaluate_pairs(input_dir, fused_dir, tasks=None, names=None, baselines: bool = False,
                   checks: bool = False) -> list[dict]:
    """Score fused PNGs FUSED/<task>/<name>.png against their source pairs ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png.

    Args:
        input_dir, fused_dir: the two roots.
        tasks: only these tasks (default: every task folder present); names: only these file stems.
        baselines: also score pixel-max and pixel-average fusion of the sources.
        checks: also the image checks (``bone_kept`` for a CT task, ``hot_kept`` otherwise; NaN where not applicable)
            and anatomy kept (``anatomy_value``); the pixel-average baseline is the 50/50 blend.
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
                m.update(_check_columns(pair.task, np.rint(a), b, np.rint(img)))
            m["bg"] = background_level(a, b, img)
            rows.append({"task": pair.task, "name": pair.name, "method": method, **m})
    return rows


def summary_table(rows: list[dict], names: list[str]) -> str:
    """A plain-text table: per task and method, the mean of each column over its images (NaN ignored)."""
    width = {n: max(8, len(n)) for n in names}
    lines = [f"{'task':10s} {'method':14s} " + " ".join(f"{n:>{width[n]}s}" for n in names)]
    for task in sorted({r["task"] for r in rows}):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            means = (f"{nanmean([r[n] for r in sel]):{width[n]}.4f}" for n in names)
            lines.append(f"{task:10s} {method:14s} " + " ".join(means))
    return "\n".join(lines)


def nanmean(values) -> float:
    """Mean ignoring NaN (an image check that does not apply, e.g. a slice without bone); NaN if none applies."""
    v = np.asarray(values, float)
    return float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else float("nan")
