"""Reading and writing images with SimpleITK: validation with clear errors, atomic writes (``safe_files``).

Supported: NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz), MetaImage (.mha/.mhd) volumes and PNG images.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom import is_dicom, read_dicom
from .errors import ECFusionError
from .file_integrity import check_complete, full_suffix
from .file_kind import check_kind, not_a_regular_file
from .header_geometry import check_header_geometry, check_image_geometry
from .nifti_rgb import write_rgb24_nifti
from .safe_files import atomic_write_group, disk_full_hint, write_text_verified

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
IMAGE_SUFFIXES = VOLUME_SUFFIXES + (".png",)
# single-file formats only: a header + data pair (.nhdr/.mhd) cannot be renamed into place atomically
OUTPUT_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".png")
SIDECAR_SUFFIXES = (".nii", ".nii.gz", ".png")  # formats without key-value metadata: OUTPUT.json beside them


def read_image(path: str | Path, *, allow_rgb: bool = False, what: str = "image") -> sitk.Image:
    """Read and validate one image.

    A folder or a DICOM file reads its whole DICOM series (``dicom.read_dicom``).
    Errors (ECFusionError) naming what is wrong with this file: missing, unreadable (permissions),
    cut off (``file_integrity.check_complete``), a singular direction matrix, not an image; then the checks of
    ``check_image``.
    """
    path = Path(path)
    if path.is_dir() or (full_suffix(path) not in IMAGE_SUFFIXES and is_dicom(path)):
        img = read_dicom(path, what=what)[0]
        check_image(img, f"{what} {path}", allow_rgb=allow_rgb)
        return img
    if not path.exists():
        broken = " (a symbolic link whose target is missing)" if path.is_symlink() else ""
        raise ECFusionError(f"{what} file not found: {path}{broken}")
    special = not_a_regular_file(path, what)
    if special:
        raise special
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ECFusionError(f"cannot open {what} {path}: {exc.strerror or exc}; check its permissions") from exc
    check_kind(path, what)
    check_complete(path, what)
    check_header_geometry(path, what)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ECFusionError(f"cannot read {what} {path}: {_read_error(exc, path)}") from exc
    check_image(img, f"{what} {path}", allow_rgb=allow_rgb)
    return img


def _read_error(exc: RuntimeError, path: Path) -> str:
    """What SimpleITK's exception says about this file, in a sentence (not ITK's source location)."""
    text = str(exc)
    if "determinant is 0" in text or "Bad direction" in text:
        return ("its direction matrix (the axes' orientation in the header) is singular, two axes point the same "
                "way; fix the header (NRRD 'space directions', MetaImage 'TransformMatrix', NIfTI qform/sform), "
                "e.g. by exporting it again")
    if "Unable to determine ImageIO reader" in text or "Could not create IO object" in text:
        known = full_suffix(path) in IMAGE_SUFFIXES
        return ("its content is not an image SimpleITK recognises" + (" (the file may be damaged)" if known else "")
                + ("" if known else ". Use an NRRD, NIfTI, MHA or PNG file"))
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    nrrd = [ln for ln in lines if ln.startswith("[nrrd]") and not ln.endswith(":")]
    if nrrd:  # teem's last line says what is wrong (e.g. "fread got only 11963 4-sized things, not 24000")
        return "NRRD reader: " + nrrd[-1].split(":", 1)[-1].strip()
    useful = [ln for ln in lines if not ln.startswith(("Exception thrown", "/"))]
    msg = useful[-1] if useful else (lines[-1] if lines else type(exc).__name__)
    if "ITK ERROR" in msg and "):" in msg:
        msg = msg.split("):", 1)[1].strip()
    suffix_hint = "" if full_suffix(path) in IMAGE_SUFFIXES else ". Use an NRRD, NIfTI, MHA or PNG file"
    return msg + suffix_hint


def check_image(img: sitk.Image, what: str, *, allow_rgb: bool = False) -> None:
    """Validate an in-memory image the same way as ``read_image``."""
    if img.GetDimension() > 3:
        raise ECFusionError(
            f"{what} is {img.GetDimension()}D; a 2D or 3D image is needed. Extract one time frame first "
            "(e.g. a static PET frame)."
        )
    if img.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise ECFusionError(f"{what} is complex-valued ({img.GetPixelIDTypeAsString()}); save its magnitude "
                            "(a real-valued image) first")
    ncomp = img.GetNumberOfComponentsPerPixel()
    if ncomp != 1 and not (allow_rgb and ncomp == 3):
        allowed = "a scalar image or an RGB (3-component) image" if allow_rgb else "a scalar (single-component) image"
        raise ECFusionError(f"{what} has {ncomp} components per voxel; expected {allowed}.")
    check_image_geometry(img, what)
    arr = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ECFusionError(f"{what} contains {bad} NaN or infinite values; replace them (e.g. with 0) before fusing.")
    if arr.size == 0 or arr.min() == arr.max():
        raise ECFusionError(f"{what} is constant (every voxel is {arr.flat[0] if arr.size else 'empty'}); there is nothing to fuse.")


def check_writable(path: str | Path) -> Path:
    """Fail early, before any work, if ``path`` cannot be written (type, folder, permissions, a folder there)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ECFusionError(f"output {path} is an existing folder; give a file name, e.g. {path / 'fused.nrrd'}")
    if full_suffix(path) not in OUTPUT_SUFFIXES:
        raise ECFusionError(f"output {path}: unsupported file type; use one of {', '.join(OUTPUT_SUFFIXES)}")
    if not folder.is_dir():
        raise ECFusionError(f"output folder {folder} does not exist; create it first")
    try:  # a real write test: permissions, read-only file systems and quotas all show up here
        fd, probe = tempfile.mkstemp(prefix=".ecfusion-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ECFusionError(f"output folder {folder} is not writable ({exc.strerror}); choose another output location") from exc
    return path


def check_output_dimension(img_or_size, path: str | Path) -> None:
    """PNG holds one 2D image: refuse a 3D result (more than one slice) there instead of keeping slice 0."""
    size = img_or_size.GetSize() if isinstance(img_or_size, sitk.Image) else tuple(img_or_size)
    if full_suffix(path) == ".png" and len(size) == 3 and size[2] > 1:
        raise ECFusionError(f"output {path}: a PNG holds one 2D image but the result is a 3D volume of "
                            f"{size[0]} x {size[1]} x {size[2]} voxels; write .nrrd, .nii.gz or .mha "
                            "(for 2D PNG pairs use --input-dir)")


def verify_written(tmp: str | Path, img: sitk.Image, target: str | Path) -> None:
    """ECFusionError unless the file just written to ``tmp`` (on its way to ``target``) holds all of ``img``.

    Writers can fail without a word: ITK's NIfTI writer leaves a cut-off gzip stream on a full disk and returns.
    Checked, before the file may replace anything: the voxel data are as long as the header says and every gzip
    or zlib stream ends with its trailer (CRC-32 and length verified; ``file_integrity.check_complete``, one chunk
    in memory at a time), and the header read back gives the image's size and components. A PNG (one 2D slice,
    small) is read back whole and compared voxel for voxel.
    """
    tmp = Path(tmp)

    def fail(detail: str) -> ECFusionError:
        hint = disk_full_hint(target) or " (is the disk full, or the file system failing?)"
        return ECFusionError(f"cannot write {target}: the file written {detail}{hint}; nothing was written and any "
                             f"previous {Path(target).name} is unchanged. Free some space or choose another output "
                             "location")

    try:
        check_complete(tmp, "output")
    except ECFusionError as exc:
        raise fail("is incomplete: " + str(exc).split(": ", 1)[-1].split(". It was")[0]) from exc
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    try:
        reader.ReadImageInformation()
        size, ncomp = tuple(reader.GetSize()), reader.GetNumberOfComponents()
        if full_suffix(target) == ".png":
            back = sitk.GetArrayFromImage(reader.Execute())  # a copy: a view would outlive its image
            if not np.array_equal(back.reshape(-1), sitk.GetArrayViewFromImage(img).reshape(-1)):
                raise fail("does not read back as the image written")
    except RuntimeError as exc:
        raise fail(f"cannot be read back ({_read_error(exc, tmp)})") from exc
    expected = _squeeze(img.GetSize())
    if _squeeze(size) != expected or ncomp != img.GetNumberOfComponentsPerPixel():
        raise fail(f"reads back as {'x'.join(map(str, size))} voxels of {ncomp} components instead of "
                   f"{'x'.join(map(str, expected))} of {img.GetNumberOfComponentsPerPixel()}")


def write_transform_verified(transform: sitk.Transform, tmp: str | Path) -> None:
    """``sitk.WriteTransform`` to ``tmp``, then read back: OSError (EIO) unless the same parameters return (ITK's
    transform writers, like its NIfTI writer, can leave a cut-off file on a full disk without an error)."""
    sitk.WriteTransform(transform, str(tmp))
    try:
        back = sitk.ReadTransform(str(tmp))
        same = np.allclose(back.GetParameters(), transform.GetParameters()) and \
            np.allclose(back.GetFixedParameters(), transform.GetFixedParameters())
    except RuntimeError:
        same = False
    if not same:
        raise OSError(errno.EIO, "the transform file does not read back as written (is the disk full?)")


def _squeeze(dims) -> tuple:
    """A size without trailing 1s beyond two axes: (x, y, 1) is one 2D slice, as PNG stores it."""
    dims = list(dims)
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def sidecar_path(output: str | Path) -> Path | None:
    """OUTPUT.json for formats that cannot carry key-value metadata (NIfTI, PNG); None for NRRD/MHA."""
    suffix = full_suffix(output)
    if suffix not in SIDECAR_SUFFIXES:
        return None
    return Path(str(output)[: -len(suffix)] + ".json")


def write_image_atomic(img: sitk.Image, path: str | Path, *, compress: bool = True,
                       sidecar: dict | None = None) -> Path:
    """Write ``img`` (and, for NIfTI/PNG, ``sidecar`` as OUTPUT.json) atomically: never a half-written file, never
    a volume without its sidecar (``safe_files.atomic_write_group``). RGB NIfTI is written as RGB24."""
    path = check_writable(path)
    check_output_dimension(img, path)

    def write_image(tmp: str) -> None:
        if full_suffix(path) in (".nii", ".nii.gz") and img.GetNumberOfComponentsPerPixel() == 3:
            write_rgb24_nifti(img, tmp, compress=full_suffix(path) == ".nii.gz")
        else:
            sitk.WriteImage(img, tmp, useCompression=compress)
        verify_written(tmp, img, path)

    writers = {}
    side = sidecar_path(path)
    if sidecar is not None and side is not None:
        text = json.dumps(sidecar, indent=2)
        writers[side] = lambda tmp: write_text_verified(tmp, text)
    writers[path] = write_image  # last: a volume never appears without its sidecar
    atomic_write_group(writers)
    return path
