"""Plausibility of the inputs for the task: warn with the likely fix, refuse only what is certainly wrong.

What a file can tell (``input_warnings``):
- a DICOM modality (``0008|0060``, or ``Modality`` in NRRD/MHA headers): MR for the anatomical image; CT, PT
  or NM for the functional one, matching the task;
- values: a CT in Hounsfield units has air near -1000 (some voxels below ``CT_AIR_HU``); a PET or SPECT has no
  negative values and a coarse grid (``COARSE_MM``); an MRI has no Hounsfield air;
- grids: the output is on the anatomical grid, so an anatomical image much coarser than the functional one
  suggests swapped inputs.
These are heuristics: each gives a warning naming the likely fix (``--task``, swapping the inputs, a CT
window), never an error. Certainly wrong (``refuse_same_input``): one file given as both inputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ECFusionError
from .safe_files import same_file
from .options import check_number
from .modality import image_modality
from .tasks import TASK_SPECS, TaskSpec, detect_task, task_spec

CT_AIR_HU = -500.0  # a head CT has air near -1000 HU: some voxels lie below this
COARSE_MM = 2.5  # PET/SPECT voxels are >= ~2.5 mm in every direction; MRI/CT in-plane voxels are finer
SWAP_RATIO = 2.0  # anatomical voxels this many times larger than the functional's: swapped inputs?
SAMPLE = 2_000_000  # voxels looked at (a regular subsample of larger images)


def refuse_same_input(anatomical_path, functional_path) -> None:
    """One file given as both inputs. One DICOM folder is not refused here: it may hold both series (the README's
    ``--anatomical study/ --functional study/`` with ``--*-series``); ``refuse_same_series`` checks those once the
    series are chosen (and a folder of several series without the UIDs gets the series list)."""
    if anatomical_path and functional_path and same_file(anatomical_path, functional_path):
        if Path(anatomical_path).is_dir():
            return
        raise ECFusionError(f"--anatomical and --functional are the same file ({anatomical_path}); give the MRI "
                            "and the CT/PET/SPECT image")


def refuse_same_series(anatomical, functional) -> None:
    """ECFusionError when both inputs read the same DICOM series (``dicom.SeriesInfo`` or None each)."""
    if anatomical is not None and functional is not None and anatomical.files == functional.files:
        raise ECFusionError(f"--anatomical and --functional are the same DICOM series ({anatomical.uid}, "
                            f"{anatomical.modality or 'modality unknown'}); choose the MRI series with "
                            "--anatomical-series UID and the CT/PET/SPECT series with --functional-series UID")


def _values(img: sitk.Image) -> np.ndarray | None:
    if img.GetNumberOfComponentsPerPixel() != 1:
        return None  # RGB pseudocolour: no physical values
    arr = sitk.GetArrayViewFromImage(img).ravel()
    step = max(1, arr.size // SAMPLE)
    return np.asarray(arr[::step], dtype=np.float64)


def _voxel_mm(img: sitk.Image) -> float:
    return float(np.cbrt(np.prod(img.GetSpacing()))) if img.GetDimension() == 3 else float(np.mean(img.GetSpacing()))


def _suggest(mapping: str) -> str:
    """'--task A or --task B': the tasks whose second image has ``mapping`` ("window": HU, "colormap": PET/SPECT)."""
    return " or ".join(f"--task {s.name}" for s in TASK_SPECS.values() if s.second_mapping == mapping)


def input_warnings(task: str | TaskSpec, anatomical: sitk.Image, functional: sitk.Image) -> list[str]:
    """Warnings (each with its likely fix) about inputs that look wrong for ``task`` (a name or its ``TaskSpec``);
    [] when all is plausible."""
    spec = task_spec(task)
    task = spec.name
    modality, codes = spec.second_modality, spec.dicom_modalities  # codes: the DICOM Modality values it accepts
    expected, mr = "/".join(codes), spec.anatomical_dicom_modalities  # mr: the anatomical image's codes ("MR")
    warnings = []
    tag_a, tag_f = image_modality(anatomical), image_modality(functional)
    if tag_a and tag_f and tag_a in codes and tag_f in mr:
        warnings.append(f"the anatomical image is labelled {tag_a} and the functional one {tag_f}: the inputs look "
                        f"swapped; give the MRI as --anatomical and the {modality} as --functional")
        return warnings
    if tag_a and tag_a not in mr:
        warnings.append(f"the anatomical image is labelled modality {tag_a}, not {'/'.join(mr)}: --anatomical should "
                        f"be the {spec.anatomical_modality}")
    if tag_f and tag_f not in codes:
        likely = detect_task(dicom_modality=tag_f)
        fix = f"; did you mean --task {likely}?" if likely else ""
        warnings.append(f"the functional image is labelled modality {tag_f} but --task {task} expects {expected}{fix}")

    va, vf = _values(anatomical), _values(functional)
    if va is not None and va.min() < CT_AIR_HU:
        warnings.append(f"the anatomical image has values down to {va.min():.0f}, like CT Hounsfield units; "
                        f"--anatomical should be the MRI (a CT goes to --functional with {_suggest('window')})")
    coarse = functional.GetDimension() == 3 and min(functional.GetSpacing()) >= COARSE_MM
    if vf is not None and not (tag_f and tag_f not in codes):
        if modality == "CT" and vf.min() >= CT_AIR_HU:
            if vf.min() >= 0 and coarse:
                warnings.append(f"the CT image has no negative values and a coarse {min(functional.GetSpacing()):.1f} mm "
                                f"grid, like a PET or SPECT; did you mean {_suggest('colormap')}?")
            else:
                warnings.append(f"the CT image does not look like Hounsfield units (no voxel below {CT_AIR_HU:.0f}; "
                                f"values {vf.min():.0f} to {vf.max():.0f}): the default CT window (level 40, width "
                                "150 HU) would turn it white; pass --ct-level/--ct-window suited to its values, or "
                                "check that it is a CT")
        elif modality in ("PET", "SPECT") and vf.min() < CT_AIR_HU:
            warnings.append(f"the {modality} image has values down to {vf.min():.0f}, like CT Hounsfield units "
                            f"(a {modality} has no negative values); did you mean {_suggest('window')}?")
    if anatomical.GetDimension() == 3 and functional.GetDimension() == 3:
        ra, rf = _voxel_mm(anatomical), _voxel_mm(functional)
        if ra >= SWAP_RATIO * rf and min(anatomical.GetSpacing()) >= COARSE_MM:
            warnings.append(f"the anatomical image's voxels ({ra:.1f} mm) are much coarser than the functional "
                            f"image's ({rf:.1f} mm) and the output is on the anatomical grid: are --anatomical "
                            "and --functional swapped?")
    return warnings


def check_numbers(**values) -> None:
    """ECFusionError for numeric settings that cannot be right, by the bounds their ``fuse`` option declares
    (``options.FUSE_OPTIONS``: a batch size below 1 or not whole, a window not > 0, anything not finite).
    ``values``: {option name: value} of ``options.NUMBER_OPTIONS``; None means "default"."""
    for name, value in values.items():
        if value is not None:
            check_number(name, value)
