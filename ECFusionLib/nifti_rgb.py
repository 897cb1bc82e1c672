"""RGB NIfTI the way viewers expect it: datatype RGB24 (128), one packed R,G,B triple per voxel.

SimpleITK writes a 3-component image to NIfTI as a 5-D vector (intent 1007, components as the 5th
dimension), which most neuroimaging viewers show as three separate volumes. Here the header comes from
SimpleITK itself (a scalar image with the same geometry, so qform/sform are ITK's), patched to RGB24, and the
voxels are written interleaved (x fastest). SimpleITK and nibabel both read the result as RGB.
"""
from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DT_RGB24 = 128


def rgb24_nifti_bytes(img: sitk.Image) -> bytes:
    """Header + packed RGB voxels of a 2D/3D RGB uint8 image (3 components) as an uncompressed NIfTI-1."""
    if img.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("an RGB image (3 components) is needed")
    rgb = np.ascontiguousarray(sitk.GetArrayViewFromImage(img), dtype=np.uint8)  # (z,) y, x, 3
    grey = sitk.VectorIndexSelectionCast(img, 0, sitk.sitkUInt8)
    with tempfile.TemporaryDirectory(prefix="ecfusion-nifti-") as tmp:
        ref = Path(tmp) / "header.nii"
        sitk.WriteImage(grey, str(ref), useCompression=False)
        blob = ref.read_bytes()
    nvox = rgb.size // 3
    offset = len(blob) - nvox  # SimpleITK's vox_offset (352): header + extension flag
    endian = "<" if struct.unpack("<i", blob[:4])[0] == 348 else ">"
    header = bytearray(blob[:offset])
    header[70:74] = struct.pack(endian + "2h", DT_RGB24, 24)  # datatype, bitpix
    header[112:120] = struct.pack(endian + "2f", 0.0, 0.0)  # scl_slope 0: no scaling (RGB is not scaled)
    header[124:132] = struct.pack(endian + "2f", 0.0, 0.0)  # cal_max, cal_min
    return bytes(header) + rgb.tobytes()


def write_rgb24_nifti(img: sitk.Image, path: str | Path, compress: bool | None = None) -> None:
    """Write ``img`` (RGB uint8) to ``path`` as RGB24 NIfTI; gzip when the name ends in .gz (or ``compress``)."""
    path = Path(path)
    data = rgb24_nifti_bytes(img)
    if compress is None:
        compress = path.name.lower().endswith(".gz")
    if compress:
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)
