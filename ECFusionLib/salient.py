"""Keep the salient source: a deterministic rule applied to the network's fused Y (after the network).

The network may put the fused value below the second source where that source is what a reader looks for: CT bone
(bright on CT, dark on T1 MRI: a hollow skull) and focal PET/SPECT uptake (PET-Heat's top is white, so a fused Y
below the PET's turns a hot lesion grey: "no uptake"). The rule lifts the fused value toward the source there, and
nowhere else:

    F' = F + w * max(S - F, 0)        F: the network's fused Y (0-255), S: the CT (8-bit, after its window) or
                                      the functional Y (as displayed), w in [0, 1]:

- CT-MRI (``salient_threshold``/``salient_dark`` of the task): bone where the MRI is dark,
      w = clip((S - threshold) / RAMP, 0, 1) * clip((dark + RAMP - M) / RAMP, 0, 1)      M: the MRI (0-255)
  threshold 128 and dark 30 chosen by cross-validation over whole AANLIB cases (``scripts/cross_validate.py``,
  folds in ``weights/cv_folds.json``). Where the CT is bone but the MRI bright (marrow, scalp next to bone) the
  network's MRI detail is kept (the rule without the MRI condition costs CT-MRI 0.055 Qabf; see the model card).
- PET-MRI, SPECT-MRI (``salient_focal``): focal uptake above its local background, ``focal_weight`` (relative and
  scale-free: uptake / the surrounding tissue's Gaussian mean). Until issue 18 these tasks used a fixed grey level
  (PET 208, SPECT 128): under PET-Heat at the default window a normal brain is above it almost everywhere, so the
  rule replaced the fused detail by the PET over 55 % of a real head (anatomy kept 0.73x a 50/50 blend; relative
  rule 1.17x; the model card has the numbers).

With linear blends between (no hard edge), it never darkens a pixel and never touches the MRI-only content. With
the functional Y restored, the colour put back by ``colour.recolour`` is the functional image's own colour (its Y
and chroma), so the hot spot keeps its colour-map colour.
"""
from __future__ import annotations

import numpy as np

from .tasks import TASK_SPECS, check_task

RAMP = 32.0  # grey levels over which the rule fades in above the threshold
# Per task (cross-validated; the facts live in each TaskSpec): source grey level (0-255) above which the rule
# starts (None = off), and the MRI grey level below which it applies (None = anywhere).
DEFAULT_THRESHOLDS: dict[str, float | None] = {name: spec.salient_threshold for name, spec in TASK_SPECS.items()}
DEFAULT_DARK: dict[str, float | None] = {name: spec.salient_dark for name, spec in TASK_SPECS.items()}


def keep_salient(fused_y: np.ndarray, source: np.ndarray, task: str | None = None, enabled: bool = True, *,
                 anatomical: np.ndarray | None = None, threshold: float | None = None, dark: float | None = None,
                 ramp: float = RAMP, values: np.ndarray | None = None, spacing=None,
                 weight: np.ndarray | None = None) -> np.ndarray:
    """Apply the rule (module docstring) to ``fused_y`` (any shape, uint8 or float 0-255) given ``source`` (same
    shape, 0-255: the CT, or the functional Y) and ``anatomical`` (the MRI, 0-255; needed when the MRI condition
    applies). With ``task``, its rule is used: the cross-validated ``threshold`` and ``dark`` (explicit values
    override them), or for a focal task (PET/SPECT) ``focal_weight`` of ``values`` (the functional's physical
    values on the fused grid; default: ``source``) with voxel ``spacing`` (mm, array axis order; default 1), or
    the focal ``weight`` itself when the caller computed it (``fusion`` does, on the PET/SPECT's own grid).
    ``enabled=False`` or no rule returns ``fused_y`` itself. Returns the same dtype as ``fused_y``."""
    focal = task is not None and threshold is None and TASK_SPECS[check_task(task)].salient_focal
    if task is not None:
        threshold, dark = task_thresholds(task, threshold, dark)
    if not enabled or (threshold is None and not focal):
        return fused_y
    f = np.asarray(fused_y, np.float32)
    s = np.asarray(source, np.float32)
    if f.shape != s.shape:
        raise ValueError(f"fused {f.shape} and source {s.shape} differ in shape")
    if focal and weight is not None:
        w = np.asarray(weight, np.float32)
        if w.shape != f.shape:
            raise ValueError(f"fused {f.shape} and focal weight {w.shape} differ in shape")
    elif focal:
        v = s if values is None else np.asarray(values, np.float32)
        if v.shape != f.shape:
            raise ValueError(f"fused {f.shape} and functional values {v.shape} differ in shape")
        w = focal_weight(v, (1.0,) * f.ndim if spacing is None else spacing)
    else:
        if dark is not None:
            if anatomical is None or np.shape(anatomical) != f.shape:
                raise ValueError("the MRI condition (dark) needs the anatomical image, of the fused image's shape")
            anatomical = np.asarray(anatomical, np.float32)
        w = salient_mask(s, anatomical, threshold=threshold, dark=dark, ramp=ramp)
    out = f + w * np.maximum(s - f, 0.0)
    if np.issubdtype(np.asarray(fused_y).dtype, np.integer):
        return np.clip(np.rint(out), 0, 255).astype(np.asarray(fused_y).dtype)
    return out


def task_thresholds(task: str, threshold: float | None = None, dark: float | None = None):
    """(threshold, dark) of ``task`` (its cross-validated defaults above), explicit values overriding them."""
    task = check_task(task)
    return (DEFAULT_THRESHOLDS.get(task) if threshold is None else threshold,
            DEFAULT_DARK.get(task) if dark is None else dark)


def salient_mask(source, anatomical=None, *, threshold: float, dark: float | None = None, ramp: float = RAMP):
    """The rule's weight w in [0, 1] (module docstring): where the source (CT / functional Y, 0-255) is bright and,
    with ``dark``, the MRI (0-255) dark. Works on numpy arrays and on torch tensors alike (the training loss's
    ``--salient-weight`` term uses it), so the rule and the loss share one definition and one set of thresholds."""
    def clip01(x):
        return x.clamp(0.0, 1.0) if hasattr(x, "clamp") else np.clip(x, 0.0, 1.0)

    w = clip01((source - float(threshold)) / float(ramp))
    if dark is not None:
        if anatomical is None:
            raise ValueError("the MRI condition (dark) needs the anatomical image")
        w = w * clip01((float(dark) + float(ramp) - anatomical) / float(ramp))
    return w


# ---------------------------------------------------------------- focal uptake (PET/SPECT), relative
FOCAL_SIGMA_MM = 6.0  # Gaussian scale (mm) of the local background
FOCAL_RATIO = 1.2  # uptake / local background at which the rule starts ...
FOCAL_RAMP = 0.15  # ... and is full at FOCAL_RATIO + FOCAL_RAMP
FOCAL_FLOOR = 0.1  # values below this fraction of the volume's 99.9th percentile are background, never focal
FOCAL_WIDE = (2.5, 1.5)  # first pass: uptake above 1.5x its 2.5 x FOCAL_SIGMA_MM mean is left out of the background


def _smooth(arr: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing (``sigma_mm``, physical) of a 2D/3D array with voxel ``spacing`` (array axis order)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(arr, np.float32))
    img.SetSpacing([float(s) for s in spacing][::-1])
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, float(sigma_mm)))


def focal_weight(values: np.ndarray, spacing, *, sigma_mm: float = FOCAL_SIGMA_MM, ratio: float = FOCAL_RATIO,
                 ramp: float = FOCAL_RAMP, floor: float = FOCAL_FLOOR) -> np.ndarray:
    """Where the functional image has focal uptake above its local background: weight in [0, 1], float32,
    ``ratio_weight(focal_ratio(values, spacing))``.

    Ratios are scale-free, so the result does not depend on the window or the units. Measured on the real
    H2-15O PET and HMPAO SPECT averages (normal brains, 2 mm, their own grids): w > 0 on 3.0 % / 4.8 % of the
    tissue (w > 0.5 on 1.1 % / 2.4 %), so a normal brain is mostly left alone, while every lesion of 1.5x or
    more its local mean (radius 3-10 mm, ``volume_quality``) gets w = 1. Faint large lesions (1.3x, 10 mm) raise
    their own background and get w 0.15-0.3: a lower ratio would lift a fifth of a normal brain.
    """
    return ratio_weight(focal_ratio(values, spacing, sigma_mm=sigma_mm, floor=floor), ratio=ratio, ramp=ramp)


def focal_ratio(values: np.ndarray, spacing, *, sigma_mm: float = FOCAL_SIGMA_MM,
                floor: float = FOCAL_FLOOR) -> np.ndarray:
    """Uptake / its local background, float32 of ``values``' shape; 0 outside the tissue (below ``floor`` x the
    99.9th percentile).

    ``values``: the PET/SPECT (2D/3D; physical values >= 0, or its 0-255 grey when it has no values), on its
    own grid or the fused one; ``spacing``: voxel size in mm in array axis order. The background is the Gaussian
    (``sigma_mm``) average of the surrounding tissue, the uptake itself excluded (two passes: voxels above
    ``FOCAL_WIDE`` x a wide first background are left out of the second), so a large lesion does not raise its
    own background. The ratio is smooth where the values are, so it can be computed on the PET/SPECT's coarse
    grid and interpolated onto the MRI's (``fusion`` does, slab by slab)."""
    v = np.maximum(np.asarray(values, np.float32), 0.0)
    top = float(np.percentile(v, 99.9)) if v.size else 0.0
    if top <= 0:
        return np.zeros(v.shape, np.float32)
    tissue = (v > floor * top).astype(np.float32)
    eps = 1e-3
    wide, excess = FOCAL_WIDE
    first = _smooth(v * tissue, spacing, wide * sigma_mm) / np.maximum(_smooth(tissue, spacing, wide * sigma_mm), eps)
    around = tissue * (v <= excess * first)
    background = _smooth(v * around, spacing, sigma_mm) / np.maximum(_smooth(around, spacing, sigma_mm), eps)
    background = np.maximum(background, floor * top)
    return (v / background * tissue).astype(np.float32)


def ratio_weight(ratio_map: np.ndarray, *, ratio: float = FOCAL_RATIO, ramp: float = FOCAL_RAMP) -> np.ndarray:
    """The focal rule's weight from ``focal_ratio``: clip((uptake / background - ratio) / ramp, 0, 1), float32."""
    return np.clip((np.asarray(ratio_map, np.float32) - ratio) / ramp, 0.0, 1.0).astype(np.float32)
