"""Writing small DICOM series with SimpleITK's GDCM writer, as a scanner would: one file per slice with the
modality, position, orientation, spacing and UID tags set (and rescale slope/intercept for float data)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

_UID_ROOT = "1.2.826.0.1.3680043.2.1125."  # a documented example root, for tests


def new_uid(n: int) -> str:
    return _UID_ROOT + f"{int(time.time())}.{n}"


def write_series(image: sitk.Image, folder, *, modality: str, series_uid: str, description: str = "",
                 study_uid: str | None = None, extra: dict | None = None, slope: float | None = None,
                 tilt_mm_per_slice: float = 0.0, drop_slices=(), file_prefix: str = "IM",
                 per_slice_slope: bool = False) -> list[Path]:
    """Write the 3D ``image`` as one DICOM file per slice (along its third index axis) into ``folder``.

    Float images are stored as int16 with RescaleSlope ``slope`` (default: fitted to the range; with
    ``per_slice_slope``, fitted to each slice, as PET scanners do) and intercept 0. ``tilt_mm_per_slice`` shifts each slice's position along the column direction (a gantry
    tilt); ``drop_slices`` leaves slices out (inconsistent spacing). ``extra``: more tags {"gggg|eeee": value}.
    Files are written in reverse order so that readers must sort by position. Returns the paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    is_float = image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
    tags = {
        "0008|0060": modality, "0020|000e": series_uid, "0020|000d": study_uid or series_uid + ".0",
        "0008|103e": description, "0010|0010": "Phantom^Test", "0010|0020": "ECF-TEST",
        "0008|0021": "20260101", "0008|0031": "101500", "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])),
        "0018|0050": f"{image.GetSpacing()[2]:.6f}",
    }
    if is_float:
        arr = sitk.GetArrayViewFromImage(image)
        slope = slope or max(float(np.abs(arr).max()) / 30000.0, 1e-6)
        tags.update({"0028|1053": repr(slope), "0028|1052": "0", "0028|0100": "16", "0028|0101": "16",
                     "0028|0102": "15", "0028|0103": "1"})
    tags.update(extra or {})
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in reversed(range(image.GetSize()[2])):
        if k in drop_slices:
            continue
        sl = image[:, :, k]
        pos = np.array(image.TransformIndexToPhysicalPoint((0, 0, k))) + k * tilt_mm_per_slice * direction[:, 1]
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        if is_float and per_slice_slope:
            sl.SetMetaData("0028|1053", repr(max(float(np.abs(sitk.GetArrayViewFromImage(sl)).max()) / 30000.0, 1e-6)))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        path = folder / f"{file_prefix}{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        paths.append(path)
    return paths
