"""Geometry a header cannot mean: refused with the file and the field, before ITK reads it with a raw warning
("unexpected scales in sform") and a made-up grid that then looks "misaligned".

- NIfTI-1/-2 (``.nii``, ``.nii.gz``): voxel sizes ``pixdim[1..ndim]`` must be finite and > 0 (``pixdim[0]`` is
  the qform's handedness, not a size); the quaternion and offsets of a qform in use (``qform_code`` > 0) and
  the rows of an sform in use (``sform_code`` > 0) must be finite.
- Any image once read (``check_image_geometry``): spacing finite and > 0, origin and direction finite.

Units: mm. Raises ``ECFusionError`` naming the file, the field and its value.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ECFusionError
from .file_integrity import full_suffix

# NIfTI-1 / NIfTI-2 byte layouts: (endian-free struct format, offset)
_N1 = {"dim": ("8h", 40), "pixdim": ("8f", 76), "codes": ("2h", 252), "quatern": ("6f", 256), "srow": ("12f", 280)}
_N2 = {"dim": ("8q", 16), "pixdim": ("8d", 104), "codes": ("2i", 344), "quatern": ("6d", 352), "srow": ("12d", 400)}
QUATERN = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
SROW = tuple(f"srow_{axis}[{k}]" for axis in "xyz" for k in range(4))


def _nifti_header(path: Path) -> bytes:
    if full_suffix(path) == ".nii.gz":
        with gzip.open(path, "rb") as fh:
            return fh.read(540)
    with open(path, "rb") as fh:
        return fh.read(540)


def nifti_fields(header: bytes) -> dict | None:
    """{"dim", "pixdim", "codes", "quatern", "srow": tuples} of a NIfTI-1 or -2 header; None if not NIfTI."""
    for endian in "<>":
        for size, layout in ((348, _N1), (540, _N2)):
            if len(header) >= size and struct.unpack(endian + "i", header[:4])[0] == size:
                return {k: struct.unpack_from(endian + fmt, header, off) for k, (fmt, off) in layout.items()}
    return None


def check_header_geometry(path: str | Path, what: str = "image") -> None:
    """ECFusionError for a NIfTI, NRRD or MetaImage header whose voxel sizes or orientation cannot be right (see
    module docstring)."""
    path = Path(path)
    if full_suffix(path) in (".nrrd", ".nhdr", ".mha", ".mhd"):
        _check_text_header(path, what)
    if full_suffix(path) not in (".nii", ".nii.gz"):
        return
    try:
        fields = nifti_fields(_nifti_header(path))
    except (OSError, EOFError, zlib.error, struct.error):
        return  # unreadable or cut off: check_complete and the reader say so
    if fields is None:
        return
    ndim = int(fields["dim"][0])
    bad = []
    for i in range(1, min(max(ndim, 1), 7) + 1):
        value = fields["pixdim"][i]
        if not (math.isfinite(value) and value > 0):
            bad.append(f"pixdim[{i}] (the voxel size along {'xyztuvw'[i - 1]}) is {value:g}")
    qform, sform = fields["codes"]
    if qform > 0:
        bad += [f"{name} (qform) is {v:g}" for name, v in zip(QUATERN, fields["quatern"]) if not math.isfinite(v)]
    if sform > 0:
        bad += [f"{name} (sform) is {v:g}" for name, v in zip(SROW, fields["srow"]) if not math.isfinite(v)]
    if bad:
        raise ECFusionError(f"{what} {path}: its NIfTI header cannot be right: {'; '.join(bad)}. Voxel sizes must be "
                            "> 0 and the orientation finite; fix the header (e.g. nibabel, or export the image "
                            "again) rather than let the image land in the wrong place")


TEXT_FIELDS = {  # header fields holding numbers that place the voxels (MetaImage "=", NRRD ":")
    "=": ("offset", "origin", "position", "elementspacing", "elementsize", "transformmatrix", "rotation",
          "orientation"),
    ":": ("space origin", "space directions", "spacings"),
}


def _check_text_header(path: Path, what: str) -> None:
    """MetaImage reads "Offset = nan 0 0" as 0 0 0 without a word; NRRD's reader says "val[0] not like val[1]":
    both refused here, naming the field. "none" (an NRRD axis without a direction) and "nan" spacings of
    non-spatial NRRD axes are allowed where the format allows them."""
    from .file_integrity import _read_text_header

    sep = ":" if full_suffix(path) in (".nrrd", ".nhdr") else "="
    stop = (lambda line: line == "") if sep == ":" else (lambda line: line.replace(" ", "").lower().startswith("elementdatafile="))
    try:
        lines, _ = _read_text_header(path, stop)
    except OSError:
        return
    for line in lines:
        key, found, value = line.partition(sep)
        key = key.strip().lower()
        if not found or key not in TEXT_FIELDS[sep]:
            continue
        numbers = value.replace("(", " ").replace(")", " ").replace(",", " ").replace("=", " ").split()
        bad = [n for n in numbers if n.lower() != "none" and not _finite(n)]
        if key == "spacings":  # NRRD: NaN marks a non-spatial axis
            bad = [n for n in bad if n.lower() != "nan"]
        if bad:
            raise ECFusionError(f"{what} {path}: its header cannot be right: {line.strip()!r} holds {', '.join(bad)}, "
                                "not a finite number; fix the header or export the image again")


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def check_image_geometry(img, what: str) -> None:
    """ECFusionError unless ``img``'s spacing is finite and > 0 and its origin and direction are finite."""
    spacing, origin, direction = (np.asarray(v, float) for v in (img.GetSpacing(), img.GetOrigin(), img.GetDirection()))
    bad = []
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        bad.append(f"spacing {tuple(spacing.tolist())} (must be finite and > 0 mm)")
    if not np.all(np.isfinite(origin)):
        bad.append(f"origin {tuple(origin.tolist())} (must be finite)")
    if not np.all(np.isfinite(direction)):
        bad.append("direction matrix holds NaN or infinite values")
    if bad:
        raise ECFusionError(f"{what}: its header geometry cannot be right: {'; '.join(bad)}. Fix the header or "
                            "export the image again")
