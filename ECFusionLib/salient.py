"""Keep the salient source: a deterministic rule applied to the network's fused Y (after the network).

The network may put the fused value below the second source where that source is what a reader looks for: CT bone
(bright on CT, dark on T1 MRI: a hollow skull) and the hottest PET/SPECT uptake (PET-Heat's top is white, so a
fused Y below the PET's turns a hot lesion grey: "no uptake"). The rule lifts the fused value toward the source
there, and nowhere else:

    w  = clip((S - threshold) / RAMP, 0, 1)          S: the CT (8-bit, after its window) or the functional Y
    F' = F + w * max(S - F, 0)                        F: the network's fused Y (0-255)

so F' >= S wherever S >= threshold + RAMP, F' = F where S <= threshold, with a linear blend between (no hard
edge). It never darkens a pixel and never touches the MRI-only content. With the functional Y restored, the colour
put back by ``colour.recolour`` is the functional image's own colour (its Y and chroma), so the hot spot keeps its
colour-map colour. Thresholds per task were chosen by 5-fold (3 for PET-MRI) cross-validation over whole AANLIB
cases (``scripts/cross_validate.py``; the model card has the table); ``None`` switches the rule off.
"""
from __future__ import annotations

import numpy as np

from .tasks import check_task

RAMP = 32.0  # grey levels over which the rule fades in above the threshold
# Source grey level (0-255) above which the rule starts, per task (cross-validated; None = off).
DEFAULT_THRESHOLDS: dict[str, float | None] = {"CT-MRI": 160.0, "PET-MRI": 160.0, "SPECT-MRI": 160.0}


def keep_salient(fused_y: np.ndarray, source: np.ndarray, task: str | None = None, enabled: bool = True,
                 threshold: float | None = None, ramp: float = RAMP) -> np.ndarray:
    """Apply the rule (module docstring) to ``fused_y`` (any shape, uint8 or float 0-255) given ``source`` (same
    shape, 0-255: the CT, or the functional Y). ``threshold`` overrides the task's default; ``enabled=False`` or a
    task whose threshold is None returns ``fused_y`` unchanged. Returns the same dtype as ``fused_y``."""
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS.get(check_task(task)) if task is not None else None
    if not enabled or threshold is None:
        return fused_y
    f = np.asarray(fused_y, np.float32)
    s = np.asarray(source, np.float32)
    if f.shape != s.shape:
        raise ValueError(f"fused {f.shape} and source {s.shape} differ in shape")
    w = np.clip((s - float(threshold)) / float(ramp), 0.0, 1.0)
    out = f + w * np.maximum(s - f, 0.0)
    if np.issubdtype(np.asarray(fused_y).dtype, np.integer):
        return np.clip(np.rint(out), 0, 255).astype(np.asarray(fused_y).dtype)
    return out
