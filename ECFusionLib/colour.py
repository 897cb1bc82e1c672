"""Colour handling: BT.601 full-range RGB <-> YCbCr and colour maps for scalar PET/SPECT.

Convention: the one of OpenCV's 8-bit ``COLOR_RGB2YCrCb`` (BT.601, full range, chroma offset 128):
    Y  = 0.299 R + 0.587 G + 0.114 B
    Cb = 128 + (B - Y) / 1.772
    Cr = 128 + (R - Y) / 1.402
All arrays here are ... x 3 with channels last, values on the 0-255 scale.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ECFusionError
from .tasks import TASK_SPECS

KR, KB = 0.299, 0.114
KG = 1.0 - KR - KB


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """... x 3 RGB (0-255, any dtype) -> ... x 3 float32 YCbCr (Y, Cb, Cr on 0-255)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = KR * r + KG * g + KB * b
    cb = 128.0 + (b - y) / (2.0 * (1.0 - KB))
    cr = 128.0 + (r - y) / (2.0 * (1.0 - KR))
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """... x 3 float YCbCr (0-255) -> ... x 3 uint8 RGB (rounded, clipped)."""
    ycbcr = np.asarray(ycbcr, dtype=np.float32)
    y, cb, cr = ycbcr[..., 0], ycbcr[..., 1] - 128.0, ycbcr[..., 2] - 128.0
    r = y + 2.0 * (1.0 - KR) * cr
    b = y + 2.0 * (1.0 - KB) * cb
    g = (y - KR * r - KB * b) / KG
    return to_uint8(np.stack([r, g, b], axis=-1))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Y of ... x 3 RGB, float32 on 0-255."""
    return rgb_to_ycbcr(rgb)[..., 0]


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def recolour(fused_y: np.ndarray, functional_rgb: np.ndarray) -> np.ndarray:
    """Fused luminance (..., 0-255 float) + the functional image's CbCr -> ... x 3 uint8 RGB.

    Luminance-preserving: where the fused Y with the functional chroma would leave the RGB cube (a bright MRI
    edge under a saturated PET colour), the chroma is scaled down toward grey, hue kept, until it fits, so the
    output's Y is the fused Y (within rounding, <= 0.5 level). Plain clipping of R, G, B instead would change
    both the luminance (the fused detail) and the hue.
    """
    ycbcr = rgb_to_ycbcr(functional_rgb)
    y = np.clip(np.asarray(fused_y, dtype=np.float32), 0.0, 255.0)
    cb, cr = ycbcr[..., 1] - 128.0, ycbcr[..., 2] - 128.0
    dr = 2.0 * (1.0 - KR) * cr  # R - Y
    db = 2.0 * (1.0 - KB) * cb  # B - Y
    dg = -(KR * dr + KB * db) / KG  # G - Y
    d = np.stack([dr, dg, db], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(d > 0, (255.0 - y[..., None]) / d, np.where(d < 0, y[..., None] / -d, np.inf))
    scale = np.minimum(1.0, room.min(axis=-1))
    return to_uint8(y[..., None] + scale[..., None] * d)


# Control points (index 0-255, R, G, B in 0-1), linear in RGB: as Slicer's vtkMRMLPETProceduralColorNode
# defines them (Libs/MRML/Core/vtkMRMLPETProceduralColorNode.cxx), and a plain grey ramp.
_CONTROL_POINTS: dict[str, list[tuple[float, float, float, float]]] = {
    "Grey": [(0, 0.0, 0.0, 0.0), (255, 1.0, 1.0, 1.0)],
    "PET-Heat": [
        (0, 0.0, 0.0, 0.0), (35, 0.36, 0.0, 0.0), (38, 0.5, 0.0, 0.0), (50, 0.7, 0.1, 0.0),
        (70, 0.7, 0.5, 0.0), (87, 1.0, 1.0, 0.0), (255, 1.0, 1.0, 1.0),
    ],
    "PET-Rainbow": [
        (0, 0.0, 0.0, 0.0), (35, 0.0, 0.0, 0.3), (38, 0.2, 0.0, 0.3), (50, 0.5, 0.0, 0.0),
        (70, 0.7, 0.5, 0.0), (87, 1.0, 1.0, 0.0), (255, 1.0, 1.0, 1.0),
    ],
    "PET-Rainbow2": [
        (0, 0.0, 0.0, 0.0), (32, 0.250980392, 0.0, 0.501960784), (64, 0.0, 0.0, 1.0), (96, 0.0, 1.0, 0.0),
        (160, 1.0, 1.0, 0.0), (192, 1.0, 0.752941176, 0.0), (255, 1.0, 0.011764706, 0.0),
    ],
    "PET-DICOM": [
        (0, 0.0, 0.0, 0.0), (63, 0.0, 0.501960784, 0.490196078), (128, 0.501960784, 0.0, 1.0),
        (192, 1.0, 0.501960784, 0.0), (255, 1.0, 1.0, 1.0),
    ],
}
COLORMAPS = tuple(_CONTROL_POINTS)
# second modality -> default colour map (Slicer's colour-node names for the same tables), from the task registry
DEFAULT_COLORMAP = {s.second_modality: s.default_colormap for s in TASK_SPECS.values() if s.default_colormap}


def colormap_table(name_or_path: str) -> np.ndarray:
    """A 256 x 3 float32 table (0-1) for a named colour map or a user file.

    A user file is a text/CSV table of 256 rows of R G B (0-1 or 0-255), or a .npy array of that shape.
    """
    if name_or_path in _CONTROL_POINTS:
        pts = np.array(_CONTROL_POINTS[name_or_path], dtype=np.float64)
        x = np.arange(256, dtype=np.float64)
        return np.stack([np.interp(x, pts[:, 0], pts[:, c]) for c in (1, 2, 3)], axis=1).astype(np.float32)
    path = Path(name_or_path)
    if not path.is_file():
        raise ECFusionError(
            f"unknown colour map '{name_or_path}': use one of {', '.join(COLORMAPS)} or the path of a 256x3 table file"
        )
    try:
        table = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise ECFusionError(f"cannot read colour table {path}: {exc}") from exc
    return validate_table(np.asarray(table, dtype=np.float64), str(path))


def validate_table(table: np.ndarray, what: str = "colour table") -> np.ndarray:
    """Check a 256 x 3 table and scale it to 0-1 (tables with values above 1 are taken as 0-255)."""
    if table.shape != (256, 3) or not np.all(np.isfinite(table)) or table.min() < 0:
        raise ECFusionError(f"{what}: expected 256 rows of 3 finite non-negative values (R G B), got shape {table.shape}")
    if table.max() > 1.0:
        table = table / 255.0
    return np.clip(table, 0, 1).astype(np.float32)


def apply_colormap(values: np.ndarray, table: np.ndarray, window: float, level: float) -> np.ndarray:
    """Scalar values -> ... x 3 uint8 RGB, as a Slicer slice view shows them.

    Values are mapped linearly from [level - window/2, level + window/2] to table positions 0..255
    (clipped at both ends) and take the table entry at the position rounded down, as Slicer's
    window/level colour mapping does (checked against slicer-core in the tests).
    """
    if not window > 0:
        raise ECFusionError(f"colour window must be positive, got {window}")
    pos = np.clip((np.asarray(values, dtype=np.float32) - (level - window / 2.0)) / window, 0.0, 1.0) * 255.0
    return to_uint8(table[np.floor(pos).astype(np.int32)] * 255.0)
