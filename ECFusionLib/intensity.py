"""Intensity mapping of each modality to the network's 8-bit grey scale (0-255), i.e. [-1, 1] as x/127.5 - 1.

- MRI: robust percentiles. low = the 0.5th percentile of all voxels (the background, usually 0),
  high = the 99.5th percentile of the voxels above ``low``, raised to 2.2x the tissue's median where that is larger
  (a skull-stripped brain, whose white matter would otherwise map near white: ``mri_range``); [low, high] ->
  [0, 255], clipped.
- CT: a Hounsfield window, default the CT task's (``tasks.WINDOW_DEFAULT``: level 40 HU / width 150 HU);
  configurable.
- PET/SPECT scalar volumes: window/level (default: ``default_window_level``: from the 0.5th percentile, with the
  normal tissue's top (99th percentile of the voxels above it) at the colour map's luminance knee, so a normal
  brain is not saturated and uptake above it takes the map's top colours) through a colour map (default: the
  task's, ``colour.DEFAULT_COLORMAP``) to RGB, then Y of BT.601 YCbCr.
  RGB functional volumes are used as they are (their Y).
Each mapping returns a small dict recorded in the output's metadata.
"""
from __future__ import annotations

import numpy as np

from .colour import DEFAULT_COLORMAP, apply_colormap, colormap_table, luminance, to_uint8
from .tasks import WINDOW_DEFAULT

DEFAULT_CT_WINDOW, DEFAULT_CT_LEVEL = WINDOW_DEFAULT  # HU
MRI_PERCENTILES = (0.5, 99.5)
MRI_MEDIAN_HEADROOM = 2.2  # top >= 2.2x the tissue median: tissue median at <= 0.45 of the range, as in the AANLIB
# training MRIs (0.37-0.55); a whole head's scalp fat usually sets a higher top (Colin27: 2.3x, unchanged)
FUNCTIONAL_PERCENTILES = (0.5, 99.0)  # background; the normal tissue's top (small hot spots do not move it)
KNEE_FRACTION = 0.8  # a colour map's luminance knee: where its Y first reaches this fraction of its maximum


def _sample(arr: np.ndarray) -> np.ndarray:
    """The voxels of ``arr``, flat; above 4 M a strided sample of ~2 M (percentiles: the same answer to a grey
    level, far less memory)."""
    sample = np.asarray(arr).ravel()
    return sample[:: sample.size // 2_000_000] if sample.size > 4_000_000 else sample


def robust_range(arr: np.ndarray, percentiles=MRI_PERCENTILES) -> tuple[float, float]:
    """(low, high): low-th percentile of all voxels, high-th percentile of the voxels above low."""
    sample = _sample(arr)
    low = float(np.percentile(sample, percentiles[0]))
    above = sample[sample > low]
    high = float(np.percentile(above, percentiles[1])) if above.size else float(sample.max())
    if high <= low:
        high = float(sample.max()) if sample.max() > low else low + 1.0
    return low, high


def luminance_knee(table: np.ndarray | str | None = None) -> float:
    """Where (0-1 along the map) the luminance of a 256 x 3 colour ``table`` (0-1; or a colour map name; None:
    grey) first reaches ``KNEE_FRACTION`` of its maximum. PET-Heat: 0.33 (black-red-orange below it, then
    yellow and the near-flat yellow-white), PET-Rainbow2: 0.48 (its Y peaks at yellow, 0.63, then falls toward
    red), grey: 0.8."""
    if table is None or isinstance(table, str):
        table = colormap_table(table or "Grey")
    y = luminance(np.asarray(table, np.float32) * 255.0)
    return max(float(np.argmax(y >= KNEE_FRACTION * y.max())) / (len(y) - 1), 0.05)


def default_window_level(values: np.ndarray, window: float | None = None, level: float | None = None,
                         table: np.ndarray | str | None = None) -> tuple[float, float]:
    """Window/level of scalar functional (PET/SPECT) ``values``: the given ones, else from the 0.5th percentile
    (low) with the normal tissue's top (the 99th percentile of the voxels above low) at the colour map's
    luminance knee (``luminance_knee(table)``): below it the displayed luminance follows the uptake (what the
    network reads, as in its training images), above it the map's top colours (PET-Heat's white, PET-Rainbow2's
    red) are left for uptake above the normal range, e.g. a lesion. Measured on the real H2-15O PET average
    (brain: voxels above 40 % of its top): the brain's 10th-90th percentiles at PET-Heat positions 43-79 of 255
    (red-orange to orange-yellow, Y 48-174), where the old window (0.5th-99.99th percentile) put all of it on
    the yellow-white plateau (Y >= 226); the HMPAO SPECT under PET-Rainbow2 at 64-113 (blue to green-yellow).
    Issue 18 measured knees at 90 % and 80 % of the maximum Y: 80 % kept more anatomy and made faint lesions
    more visible (model card).

    Args:
        values: the voxel values; callers pass the volume as acquired (not resampled), so the result does
            not depend on the anatomical grid.
        window, level: given values (either may be None).
        table: the colour map used (256 x 3, 0-1, or its name); None: grey.
    Returns:
        (window, level) in the values' units.
    """
    if window is not None and level is not None:
        return float(window), float(level)
    low, top = robust_range(values, FUNCTIONAL_PERCENTILES)
    high = low + (top - low) / luminance_knee(table)
    return (high - low if window is None else float(window)), ((high + low) / 2 if level is None else float(level))


def window_to_uint8(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear [low, high] -> [0, 255], clipped, rounded to uint8."""
    return to_uint8((np.asarray(arr, dtype=np.float32) - low) * (255.0 / (high - low)))


def mri_range(arr: np.ndarray, percentiles=MRI_PERCENTILES) -> tuple[float, float]:
    """(low, high) of an MRI's mapping: its ``robust_range``, with high raised to at least ``MRI_MEDIAN_HEADROOM``
    x the tissue's median above low (tissue: voxels above low + 10 % of the range) when that is larger."""
    low, high = robust_range(arr, percentiles)
    sample = _sample(arr)
    tissue = sample[sample > low + 0.1 * (high - low)]
    if tissue.size:
        high = max(high, low + MRI_MEDIAN_HEADROOM * (float(np.median(tissue)) - low))
    return low, high


def map_mri(arr: np.ndarray, percentiles=MRI_PERCENTILES, value_range: tuple[float, float] | None = None
            ) -> tuple[np.ndarray, dict]:
    """MRI -> uint8 over its ``mri_range``; ``value_range``: that range, computed before on the whole volume
    (``arr`` then being one slab of it)."""
    low, high = mri_range(arr, percentiles) if value_range is None else value_range
    return window_to_uint8(arr, low, high), {"modality": "MRI", "method": "percentiles", "percentiles": list(percentiles),
                                             "low": low, "high": high}


def map_ct(arr: np.ndarray, window: float | None = None, level: float | None = None) -> tuple[np.ndarray, dict]:
    window = DEFAULT_CT_WINDOW if window is None else float(window)
    level = DEFAULT_CT_LEVEL if level is None else float(level)
    low, high = level - window / 2, level + window / 2
    return window_to_uint8(arr, low, high), {"modality": "CT", "method": "window", "window": window, "level": level}


def map_functional(arr: np.ndarray, modality: str, colormap: str | None = None, window: float | None = None,
                   level: float | None = None, table: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scalar PET/SPECT -> (RGB ... x 3 uint8, Y uint8, mapping). ``table`` (256 x 3, 0-1) overrides ``colormap``;
    a missing window or level comes from ``default_window_level(arr)``."""
    name = colormap or DEFAULT_COLORMAP.get(modality, "PET-Heat")
    lut = colormap_table(name) if table is None else table
    window, level = default_window_level(arr, window, level, lut)
    rgb = apply_colormap(arr, lut, float(window), float(level))
    return rgb, to_uint8(luminance(rgb)), {"modality": modality, "method": "colormap",
                                           "colormap": name if table is None else "custom table",
                                           "window": float(window), "level": float(level)}


def map_rgb(rgb: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray, dict]:
    rgb = to_uint8(rgb)
    return rgb, to_uint8(luminance(rgb)), {"modality": modality, "method": "rgb-luminance"}


# ---------------------------------------------------------------- the mappings, keyed by the TaskSpec
# A mapper turns one part (slab) of a scalar image into (RGB or None, uint8 grey, mapping record). A second
# image's mapper is built per image by SECOND_MAPPERS[spec.second_mapping](spec, values, settings): ``values`` the
# image as acquired (for its default window), ``settings`` anything with colormap, colormap_table, window, level,
# ct_window, ct_level (fusion.FusionSettings; None: all defaults). Adding a mapping = a builder here + its name in
# tasks.SECOND_MAPPINGS.
class _Defaults:
    colormap = colormap_table = window = level = ct_window = ct_level = None


def _colormap_mapper(spec, values, settings):
    """Scalar PET/SPECT: coloured as displayed (the task's colour map unless set; window/level default:
    ``default_window_level`` of ``values`` and the table), then its luminance."""
    colormap = settings.colormap or spec.default_colormap
    table = colormap_table(colormap) if settings.colormap_table is None else settings.colormap_table
    window, level = default_window_level(values, settings.window, settings.level, table)
    return lambda part: map_functional(part, spec.second_modality, colormap, window, level, settings.colormap_table)


def _window_mapper(spec, values, settings):
    """Scalar CT: a fixed window/level in HU (default: the task's ``default_window``); grey, no colour."""
    window, level = spec.default_window
    window = window if settings.ct_window is None else settings.ct_window
    level = level if settings.ct_level is None else settings.ct_level
    return lambda part: (None, *map_ct(part, window, level))


SECOND_MAPPERS = {"window": _window_mapper, "colormap": _colormap_mapper}  # by TaskSpec.second_mapping
ANATOMICAL_MAPPERS = {"percentiles": map_mri}  # by TaskSpec.anatomical_mapping: (part, value_range=) -> (u8, record)


def second_mapper(spec, values: np.ndarray, settings=None):
    """The mapper of ``spec``'s scalar second image (see SECOND_MAPPERS); ``settings`` None: the defaults."""
    return SECOND_MAPPERS[spec.second_mapping](spec, values, settings or _Defaults)
