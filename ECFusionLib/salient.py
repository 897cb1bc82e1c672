"""Keep the salient source: a deterministic rule applied to the network's fused Y (after the network).

The network may put the fused value below the second source where that source is what a reader looks for: CT bone
(bright on CT, dark on T1 MRI: a hollow skull) and the hottest PET/SPECT uptake (PET-Heat's top is white, so a
fused Y below the PET's turns a hot lesion grey: "no uptake"). The rule lifts the fused value toward the source
there, and nowhere else:

    w  = clip((S - threshold) / RAMP, 0, 1)          S: the CT (8-bit, after its window) or the functional Y
    w *= clip((dark + RAMP - M) / RAMP, 0, 1)        only if ``dark`` is set: where the MRI M is dark (CT bone)
    F' = F + w * max(S - F, 0)                        F: the network's fused Y (0-255)

so F' >= S wherever S >= threshold + RAMP (and M <= dark), F' = F where S <= threshold (or M >= dark + RAMP),
with linear blends between (no hard edge). It never darkens a pixel and never touches the MRI-only content.
The MRI condition is for CT-MRI: where the CT is bone but the MRI bright (marrow, scalp next to bone) the
network's MRI detail is kept, which is what the edge metrics reward (measured: the rule without it costs CT-MRI
0.055 Qabf; see the model card). With the functional Y restored, the colour
put back by ``colour.recolour`` is the functional image's own colour (its Y and chroma), so the hot spot keeps its
colour-map colour. CT-MRI (threshold 128, dark 30) and SPECT-MRI (128) were chosen by cross-validation over whole
AANLIB cases (``scripts/cross_validate.py``, folds in ``weights/cv_folds.json``); PET-MRI's 208 is the highest
threshold that keeps a white PET-Heat lesion's colour in 3D (``metrics.hot_colour_kept``; 224 does not), at no
loss of metrics won in cross-validation. The model card has the numbers.
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
                 ramp: float = RAMP) -> np.ndarray:
    """Apply the rule (module docstring) to ``fused_y`` (any shape, uint8 or float 0-255) given ``source`` (same
    shape, 0-255: the CT, or the functional Y) and ``anatomical`` (the MRI, 0-255; needed when the MRI condition
    applies). With ``task``, its cross-validated ``threshold`` and ``dark`` are used (explicit values override them);
    ``enabled=False`` or no threshold returns ``fused_y`` itself. Returns the same dtype as ``fused_y``."""
    if task is not None:
        threshold, dark = task_thresholds(task, threshold, dark)
    if not enabled or threshold is None:
        return fused_y
    f = np.asarray(fused_y, np.float32)
    s = np.asarray(source, np.float32)
    if f.shape != s.shape:
        raise ValueError(f"fused {f.shape} and source {s.shape} differ in shape")
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
