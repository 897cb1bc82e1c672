"""What a file is, from its first bytes: for messages that say "this is a PNG image, not NIfTI" or "this file is
empty" instead of a reader's "may be damaged" or "cut off while copying".

    kind = sniff("scan.nii.gz")            # "png", "gzip", "nifti", "empty", ... or None (not recognised)
    check_kind("scan.nii.gz", "anatomical image")   # ECFusionError when the content contradicts the name
"""
from __future__ import annotations

import stat
import struct
from pathlib import Path

from .errors import ECFusionError
from .file_integrity import full_suffix

DESCRIPTIONS = {
    "empty": "empty (0 bytes)", "png": "a PNG image", "jpeg": "a JPEG image", "gif": "a GIF image",
    "tiff": "a TIFF image", "gzip": "gzip-compressed data", "zip": "a ZIP archive (PyTorch .pt files are ZIP archives)",
    "nrrd": "an NRRD image", "nifti": "an uncompressed NIfTI image", "dicom": "a DICOM file",
    "metaimage": "a MetaImage header", "safetensors": "a safetensors file", "hdf5": "an HDF5 file",
    "pdf": "a PDF document", "html": "an HTML page (a download that saved a web page instead of the file?)",
    "pickle": "a Python pickle (an old-style PyTorch file)",
}
# what an image's name promises: its suffix -> the kinds its content may have
EXPECTED = {".nii": {"nifti"}, ".nii.gz": {"gzip", "nifti"}, ".nrrd": {"nrrd"}, ".nhdr": {"nrrd"},
            ".mha": {"metaimage"}, ".mhd": {"metaimage"}, ".png": {"png"}}
SUFFIX_OF = {"png": ".png", "jpeg": ".jpg", "nrrd": ".nrrd", "nifti": ".nii", "gzip": ".gz", "dicom": ".dcm",
             "metaimage": ".mha"}


def sniff(path: str | Path) -> str | None:
    """The kind of a regular file from its first bytes (a key of ``DESCRIPTIONS``), or None."""
    with open(path, "rb") as fh:
        head = fh.read(352)
    if not head:
        return "empty"
    magic = (
        (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"II*\x00", "tiff"),
        (b"MM\x00*", "tiff"), (b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip"), (b"NRRD", "nrrd"),
        (b"\x89HDF\r\n\x1a\n", "hdf5"), (b"%PDF", "pdf"),
    )
    for prefix, kind in magic:
        if head.startswith(prefix):
            return kind
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "nifti"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith((b"\x80\x02", b"\x80\x03", b"\x80\x04")):
        return "pickle"
    text = head.lstrip().lower()
    if text.startswith((b"objecttype", b"ndims")):
        return "metaimage"
    if text.startswith((b"<!doctype html", b"<html")):
        return "html"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    return None


def describe(kind: str | None) -> str:
    return DESCRIPTIONS.get(kind or "", "a file of unknown type")


def not_a_regular_file(path: str | Path, what: str) -> ECFusionError | None:
    """An error for a path that exists but is no regular file: a pipe (``<(cat mri.nrrd)``), a device, a socket."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = "a pipe (e.g. from process substitution <(...))" if stat.S_ISFIFO(mode) else "a device or socket"
    return ECFusionError(f"{what} {path} is {kind}, not a regular file: ECFusion opens its files by name (and "
                         "reads images more than once). Save it to a file first and give that file")


def check_kind(path: str | Path, what: str) -> None:
    """ECFusionError when ``path`` is empty, or when its content is of a known kind its name does not promise
    (a PNG renamed ``.nii.gz``): says what it is and what to do."""
    path = Path(path)
    kind = sniff(path)
    if kind == "empty":
        raise ECFusionError(f"{what} {path} is empty (0 bytes): the copy or download did not finish, or this is "
                            "not the file you meant; copy it again")
    expected = EXPECTED.get(full_suffix(path))
    if kind is None or expected is None or kind in expected:
        return
    better = SUFFIX_OF.get(kind)
    rename = f"; if so, rename it to {path.name[: -len(full_suffix(path))] + better}" if better else ""
    raise ECFusionError(f"{what} {path} is {describe(kind)}, not the {full_suffix(path)} its name says: it was "
                        f"probably renamed or saved under the wrong name{rename}")
