"""Axial, coronal and sagittal thumbnails of a fused volume, side by side in one PNG (for batch reports).

Each view is the middle slice, in radiological display (patient's right on the image's left, superior at
the top), resampled to square pixels on one common scale (mm per pixel) so that the views line up.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import SimpleITK as sitk

GAP = 4  # black pixels between the views


def views(image: sitk.Image, height: int = 160) -> list[np.ndarray]:
    """[axial, coronal, sagittal] H x W x 3 uint8 arrays; the tallest physical extent maps to ``height`` pixels.

    image: a 3D volume, grey or RGB (any orientation; reoriented to LPS first). 2D images: one view.
    """
    if image.GetDimension() == 2:
        arr = sitk.GetArrayFromImage(image)
        return [_rgb(arr)]
    lps = sitk.DICOMOrient(image, "LPS")
    arr = sitk.GetArrayFromImage(lps)  # z (I->S), y (A->P), x (R->L)
    sx, sy, sz = lps.GetSpacing()
    nz, ny, nx = arr.shape[:3]
    mm_per_px = max(nz * sz, ny * sy, nx * sx) / height
    planes = [(arr[nz // 2], sy, sx),  # axial: rows A->P, columns R->L
              (arr[::-1, ny // 2], sz, sx),  # coronal: rows S->I, columns R->L
              (arr[::-1, :, nx // 2], sz, sy)]  # sagittal: rows S->I, columns A->P
    return [_rgb(_resample(plane, row_mm, col_mm, mm_per_px)) for plane, row_mm, col_mm in planes]


def _resample(plane: np.ndarray, row_mm: float, col_mm: float, mm_per_px: float) -> np.ndarray:
    """A 2D slice (H x W or H x W x 3) with pixels of row_mm x col_mm resampled to square ``mm_per_px`` pixels
    (linear, after a Gaussian of half the new pixel size where it shrinks, against aliasing)."""
    img = sitk.GetImageFromArray(plane.astype(np.float32), isVector=plane.ndim == 3)
    img.SetSpacing((col_mm, row_mm))
    if mm_per_px > 1.5 * min(row_mm, col_mm):
        img = sitk.SmoothingRecursiveGaussian(img, mm_per_px / 2)
    size = [max(1, round(plane.shape[1] * col_mm / mm_per_px)), max(1, round(plane.shape[0] * row_mm / mm_per_px))]
    ref = sitk.Image(size, img.GetPixelID(), img.GetNumberOfComponentsPerPixel())
    ref.SetSpacing((mm_per_px, mm_per_px))
    ref.SetOrigin([(mm_per_px - s) / 2 for s in (col_mm, row_mm)])  # same edges, not same first centre
    return sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0))


def _rgb(plane: np.ndarray) -> np.ndarray:
    plane = np.clip(np.rint(plane), 0, 255).astype(np.uint8)
    return plane if plane.ndim == 3 else np.repeat(plane[..., None], 3, axis=2)


def contact_strip(image: sitk.Image, height: int = 160) -> np.ndarray:
    """The views side by side, H x W x 3 uint8, on black."""
    parts = views(image, height)
    h = max(p.shape[0] for p in parts)
    w = sum(p.shape[1] for p in parts) + GAP * (len(parts) - 1)
    strip = np.zeros((h, w, 3), np.uint8)
    x = 0
    for p in parts:
        top = (h - p.shape[0]) // 2
        strip[top:top + p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + GAP
    return strip


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an H x W x 3 uint8 array as PNG (8-bit RGB, no filter)."""
    h, w, _ = rgb.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(rgb, np.uint8).reshape(h, w * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def thumbnail_png(image: sitk.Image, height: int = 160) -> bytes:
    """Axial | coronal | sagittal of ``image`` as one PNG file's bytes."""
    return png_bytes(contact_strip(image, height))
