"""Reading DICOM series with SimpleITK (GDCM): finding the series in a folder, reading the whole series of
one file, and checking the slice geometry (orientation, spacing, gantry tilt) before trusting it.

Pixel values come out as float32 with each file's Rescale Slope/Intercept applied (CT in HU, PET in the
series' Units). Physical units: mm, LPS, as DICOM and SimpleITK use them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ECFusionError

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
TAGS = {"modality": "0008|0060", "description": "0008|103e", "series_uid": "0020|000e",
        "position": "0020|0032", "orientation": "0020|0037", "units": "0054|1001"}
SPACING_TOLERANCE = (0.01, 0.01)  # slice spacings may differ by 0.01 mm + 1 % (rounded positions)
TILT_TOLERANCE_DEG = 0.1
CHARSET = "0008|0005"  # Specific Character Set: how the file's text is encoded
SOP_INSTANCE = "0008|0018"
RESCALE = ("0028|1052", "0028|1053")  # intercept, slope


@dataclass
class SeriesInfo:
    """One DICOM series: its files sorted by slice position (GDCM), and what its first file says."""

    uid: str
    modality: str
    description: str
    files: list[str] = field(default_factory=list)
    units: str = ""  # PET: Units (0054,1001), e.g. BQML

    def provenance(self) -> dict:
        return {"series_uid": self.uid, "modality": self.modality, "description": self.description,
                "images": len(self.files), **({"units": self.units} if self.units else {})}


def is_dicom(path: str | Path) -> bool:
    """A folder (read as DICOM series), a file with a DICOM suffix, or a file with the DICM preamble."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _header(file: str) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    reader.ReadImageInformation()
    charset = reader.GetMetaData(CHARSET) if reader.HasMetaDataKey(CHARSET) else ""
    return {name: dicom_text(reader.GetMetaData(tag), charset).strip() if reader.HasMetaDataKey(tag) else ""
            for name, tag in TAGS.items()}


def dicom_text(value: str, charset: str = "") -> str:
    """A DICOM string as SimpleITK returns it, decoded by its Specific Character Set (0008,0005).

    GDCM hands over the file's bytes: SimpleITK decodes them as UTF-8 with "surrogateescape", so Latin-1
    (ISO_IR 100, e.g. "M\\xfcller") arrives with lone surrogates that cannot be stored again, and ISO 2022 text
    keeps its escape sequences. The bytes are recovered and decoded as DICOM says (pydicom's rules, including ISO 2022
    code extensions); undecodable bytes become U+FFFD rather than an error.
    """
    raw = value.encode("utf-8", "surrogateescape")
    if raw.isascii() and b"\x1b" not in raw:
        return value
    import warnings

    try:
        from pydicom.charset import convert_encodings, decode_bytes
    except ImportError:  # Slicer 5.8's Python has no pydicom: Latin-1 is the common case in European archives
        return raw.decode("utf-8" if "192" in charset else "latin-1", "replace")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about unknown or mislabelled character sets
        try:
            encodings = convert_encodings([c.strip() for c in charset.split("\\")] if charset.strip() else ["ISO_IR 6"])
            return decode_bytes(raw, encodings, {0x5C, 0x5E, 0x3D})  # \ ^ = reset ISO 2022 code extensions
        except (LookupError, ValueError):
            return raw.decode("utf-8", "replace")


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """Every DICOM series directly in ``folder`` (not its subfolders)."""
    folder = str(folder)
    out = []
    for uid in _series_ids(folder):
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
        head = _header(files[0])
        out.append(SeriesInfo(uid=uid, modality=head["modality"], description=head["description"], files=files,
                              units=head["units"]))
    return out


def _series_ids(folder: str) -> tuple[str, ...]:
    """GDCM's series UIDs in ``folder`` (not recursive), without ITK's "No Series were found" warning on stderr:
    a folder without DICOM gets our own error message instead."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def series_table(series: list[SeriesInfo]) -> str:
    rows = [("series UID", "modality", "description", "images")]
    rows += [(s.uid, s.modality or "?", s.description or "-", str(len(s.files))) for s in series]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def find_series(path: str | Path, series_uid: str | None = None, *, what: str = "image",
                choose_with: str = "--series") -> tuple[SeriesInfo, str | None]:
    """The series to read for ``path`` (a folder or one file of a series) and a note for the user, or None.

    A folder with several series needs ``series_uid`` (else an error lists them); one file of a
    multi-file series gives its whole series, with a note saying so. A file of the chosen series that GDCM
    cannot read (cut off, damaged) is an error naming it, not a silently missing slice.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    series = list_series(folder)
    chosen, note = _choose_series(path, folder, series, series_uid, what, choose_with)
    unreadable = _left_out(folder, series, chosen.uid)
    if unreadable:
        names = ", ".join(Path(f).name for f in unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
        raise ECFusionError(f"{what} DICOM series {chosen.uid} in {folder}: {len(unreadable)} of its files cannot be "
                            f"read as images ({names}): cut off or damaged, e.g. by an interrupted copy. Copy them "
                            "again; without them the volume would miss slices")
    return chosen, note


def _left_out(folder: Path, series: list[SeriesInfo], uid: str) -> list[str]:
    """Files directly in ``folder`` that GDCM grouped into no series although their header names series ``uid``
    (GDCM drops a file whose pixel data is cut off without a word). [] without pydicom."""
    try:
        import pydicom
    except ImportError:
        return []

    grouped = {os.path.abspath(f) for s in series for f in s.files}
    left = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or os.path.abspath(entry) in grouped:
            continue
        try:
            ds = pydicom.dcmread(entry, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM at all (a README, a .txt): none of ours
            continue
        if str(ds.get("SeriesInstanceUID", "")).strip() == uid:
            left.append(str(entry))
    return left


def what_dicom_is(path: str | Path) -> str | None:
    """For a DICOM file that holds no image: what it is ("a DICOMDIR ...", "a DICOM RT Structure Set ..."); None
    when it is not DICOM or does hold an image (or pydicom is not installed)."""
    try:
        import pydicom
    except ImportError:
        return None

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM: the caller's message stands
        return None
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    name = getattr(sop, "name", "") or str(sop or "")
    if "DirectoryRecordSequence" in ds or name == "Media Storage Directory Storage":
        return ("a DICOMDIR: the index of the files on a DICOM disc or folder, which holds no image. Give the folder "
                "of the series (the files the DICOMDIR lists) instead")
    if "Rows" in ds and "Columns" in ds:
        return None
    modality = str(ds.get("Modality", "")).strip()
    kind = f"a DICOM {name}" if name else "a DICOM object"
    return (f"{kind}{f' (Modality {modality})' if modality else ''}, which holds no image (no rows, columns or "
            "pixel data). Give a file or folder of the image series instead")


def _choose_series(path: Path, folder: Path, series: list[SeriesInfo], series_uid: str | None, what: str,
                   choose_with: str) -> tuple[SeriesInfo, str | None]:
    if path.is_file():
        if path.stat().st_size == 0:
            raise ECFusionError(f"{what} {path} is empty (0 bytes): the copy or download did not finish, or this is "
                                "not the file you meant; copy it again")
        try:
            head = _header(str(path))
        except RuntimeError as exc:
            kind = what_dicom_is(path)
            if kind:
                raise ECFusionError(f"{what} {path} is {kind}") from exc
            raise ECFusionError(f"cannot read {what} {path}: not a readable DICOM file ({_last_line(exc)})") from exc
        own = head["series_uid"]
        if series_uid and series_uid != own:
            raise ECFusionError(f"{what} {path} belongs to series {own}, not {series_uid}")
        series_uid = own
        match = [s for s in series if s.uid == own and str(path.resolve()) in {str(Path(f).resolve()) for f in s.files}]
        if not match:  # GDCM could not group it (e.g. no series UID): the file alone
            return SeriesInfo(uid=own, modality=head["modality"], description="", files=[str(path)]), None
        chosen = match[0]
        note = None
        if len(chosen.files) > 1:
            note = (f"{what} {path} is one image of a {len(chosen.files)}-image series; reading the whole series "
                    f"from {folder}")
        return chosen, note
    if not series:
        sub = sorted(p.name for p in folder.iterdir() if p.is_dir() and _series_ids(str(p)))
        hint = f"; its subfolders {', '.join(sub[:5])}{' ...' if len(sub) > 5 else ''} do: pass one of them" if sub else ""
        raise ECFusionError(f"{what} {folder} is a folder with no DICOM series in it{hint}; give an image file "
                            "(NRRD, NIfTI, MHA) or a folder holding a DICOM series")
    if series_uid:
        match = [s for s in series if s.uid == series_uid]
        if not match:
            raise ECFusionError(f"{what} folder {folder} has no series {series_uid}; it holds:\n{series_table(series)}")
        return match[0], None
    if len(series) > 1:
        raise ECFusionError(f"{what} folder {folder} holds {len(series)} DICOM series; choose one with "
                            f"{choose_with} UID:\n{series_table(series)}")
    return series[0], None


def read_series(series: SeriesInfo, what: str = "image") -> sitk.Image:
    """The series as a float32 volume (rescale applied), after checking its slice geometry (``check_geometry``).

    Metadata: the first file's DICOM tags ("gggg|eeee" keys), including the Modality.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series.files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ECFusionError(f"cannot read {what} DICOM series {series.uid}: {_last_line(exc)}") from exc
    if len(series.files) > 1:
        check_copies_and_rescale(reader, series.files, f"{what} DICOM series {series.uid}")
        positions, orientations = [], []
        for i, file in enumerate(series.files):
            if reader.HasMetaDataKey(i, TAGS["position"]) and reader.HasMetaDataKey(i, TAGS["orientation"]):
                positions.append(_floats(reader.GetMetaData(i, TAGS["position"])))
                orientations.append(_floats(reader.GetMetaData(i, TAGS["orientation"])))
            else:  # enhanced (multi-frame) objects keep them in functional group sequences
                position, orientation = _functional_group_geometry(file)
                positions.append(position)
                orientations.append(orientation)
        check_geometry(positions, orientations, f"{what} DICOM series {series.uid}")
    charset = reader.GetMetaData(0, CHARSET) if reader.HasMetaDataKey(0, CHARSET) else ""
    for key in reader.GetMetaDataKeys(0):
        image.SetMetaData(key, dicom_text(reader.GetMetaData(0, key), charset))
    return image


def check_copies_and_rescale(reader: sitk.ImageSeriesReader, files: list[str], what: str) -> None:
    """ECFusionError for two files holding one image (the same SOP Instance UID: a copied file), and for a series
    where some files have Rescale Slope/Intercept and others not (those would be read unscaled: wrong values)."""
    seen: dict[str, str] = {}
    for i, file in enumerate(files):
        uid = reader.GetMetaData(i, SOP_INSTANCE).strip() if reader.HasMetaDataKey(i, SOP_INSTANCE) else ""
        if uid and uid in seen:
            raise ECFusionError(f"{what}: {Path(file).name} and {Path(seen[uid]).name} are copies of one image (the "
                                f"same SOP Instance UID {uid}); remove the copy and run again")
        seen.setdefault(uid, file)
    lacking = [Path(f).name for i, f in enumerate(files)
               if not all(reader.HasMetaDataKey(i, tag) for tag in RESCALE)]
    if lacking and len(lacking) < len(files):
        shown = ", ".join(lacking[:5]) + (" ..." if len(lacking) > 5 else "")
        raise ECFusionError(f"{what}: {len(lacking)} of its {len(files)} files lack Rescale Slope/Intercept "
                            f"(0028,1053/0028,1052) that the others have: {shown}. Their stored values would be read "
                            "without the scaling (wrong intensities); export the series again, or remove those files")


def check_geometry(positions: list, orientations: list, what: str) -> None:
    """ECFusionError unless the slices form a regular volume: one orientation, distinct positions along the
    slice normal, equal spacing, no in-plane shift from slice to slice (gantry tilt).

    positions: Image Position (Patient) of each slice, mm; orientations: Image Orientation (Patient), 6 cosines.
    """
    if any(p is None or len(p) != 3 for p in positions) or any(o is None or len(o) != 6 for o in orientations):
        raise ECFusionError(f"{what}: some images lack Image Position/Orientation (Patient); the volume's geometry "
                            "is unknown. Export the series again with its geometry tags.")
    o = np.array(orientations)
    if np.abs(o - o[0]).max() > 1e-4:
        raise ECFusionError(f"{what}: the slice orientation changes within the series (a localiser or several stacks "
                            "in one series?); split the series or choose another one")
    normal = np.cross(o[0, :3], o[0, 3:])
    p = np.array(positions)
    order = np.argsort(p @ normal)
    p = p[order]
    along = p @ normal
    steps = np.diff(along)
    if len(steps) == 0:
        return
    dup = int(np.sum(steps < 1e-3))
    if dup:
        raise ECFusionError(f"{what}: {dup + 1} images share a slice position: the series holds several volumes "
                            "(time frames, echoes or phases); export one volume per series")
    step = float(np.median(steps))
    abs_tol, rel_tol = SPACING_TOLERANCE
    if np.abs(steps - step).max() > abs_tol + rel_tol * step:
        raise ECFusionError(f"{what}: the slice spacing varies from {steps.min():.3g} to {steps.max():.3g} mm "
                            "(missing slices, or stacks of different spacing); check the series is complete, or "
                            "resample it to a regular grid first (e.g. 3D Slicer's DICOM import with acquisition "
                            "geometry regularization)")
    shift = (p - p[0]) - np.outer(along - along[0], normal)
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(shift[-1]), along[-1] - along[0])))
    if tilt > TILT_TOLERANCE_DEG and np.abs(shift).max() > abs_tol:
        raise ECFusionError(f"{what}: the slices are shifted in-plane from one to the next (gantry tilt of "
                            f"{tilt:.1f} degrees); this volume cannot be read as a regular grid. Resample it first "
                            "(e.g. 3D Slicer's DICOM import with acquisition geometry regularization), then pass the "
                            "resampled volume")


def read_dicom(path: str | Path, series_uid: str | None = None, *, what: str = "image",
               choose_with: str = "--series") -> tuple[sitk.Image, SeriesInfo, str | None]:
    """Find (``find_series``) and read (``read_series``) the series of ``path``: (image, series, note or None)."""
    series, note = find_series(path, series_uid, what=what, choose_with=choose_with)
    return read_series(series, what), series, note


def _functional_group_geometry(file: str) -> tuple[list | None, list | None]:
    """Image Position and Orientation (Patient) of a one-frame enhanced DICOM file, from its functional groups
    (SimpleITK's metadata has no sequences); (None, None) where absent."""
    import pydicom

    ds = pydicom.dcmread(file, stop_before_pixels=True)

    def find(name: str, sequence: str):
        if name in ds:
            return [float(v) for v in ds[name].value]
        for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            for item in ds.get(groups, [])[:1]:
                for inner in item.get(sequence, [])[:1]:
                    if name in inner:
                        return [float(v) for v in inner[name].value]
        return None

    return find("ImagePositionPatient", "PlanePositionSequence"), find("ImageOrientationPatient", "PlaneOrientationSequence")


def _floats(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.strip().split("\\")]
    except ValueError:
        return None


def _last_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else repr(exc)
