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
from .tasks import TASK_SPECS, WINDOW_DEFAULT, TaskSpec, detect_task, task_spec

CT_AIR_HU = -500.0  # a head CT has air near -1000 HU: some voxels lie below this
COARSE_MM = 2.5  # PET/SPECT voxels are >= ~2.5 mm in every direction; MRI/CT in-plane voxels are finer
SWAP_RATIO = 2.0  # anatomical voxels this many times larger than the functional's: swapped inputs?
DEFAULT_CT_WINDOW, DEFAULT_CT_LEVEL = WINDOW_DEFAULT  # HU
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


def suggest_ct_window(values: np.ndarray) -> tuple[float, float]:
    """(window, level) for a CT not stored in Hounsfield units, from its histogram, shaped like the default HU
    window (level 40, width 150 HU: brain grey, bone white, air black): the level at the soft-tissue peak (the
    most common value of the head, i.e. above air), the width 150/1040 of the distance from air (the 1st
    percentile) to that peak. A CT stored as HU + 1024 gets about (150, 1060)."""
    v = np.asarray(values, np.float64).ravel()
    air, top = np.percentile(v, 1), np.percentile(v, 99.9)
    head = v[v > air + 0.2 * (top - air)]
    if head.size == 0 or top <= air:
        return float(max(top - air, 1.0)), float((top + air) / 2)
    counts, edges = np.histogram(head, bins=256)
    peak = int(np.argmax(counts))
    level = float((edges[peak] + edges[peak + 1]) / 2)
    return float(max((level - air) * DEFAULT_CT_WINDOW / (DEFAULT_CT_LEVEL + 1000.0), 1e-6)), level


def input_warnings(task: str | TaskSpec, anatomical: sitk.Image, functional: sitk.Image, *,
                   ct_window_given: bool = False) -> list[str]:
    """Warnings (each with its likely fix) about inputs that look wrong for ``task`` (a name or its ``TaskSpec``);
    [] when all is plausible.
    ``ct_window_given``: the user gave --ct-window/--ct-level, so a CT not in HU is not reported."""
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
            elif not ct_window_given:
                window, level = suggest_ct_window(vf)
                warnings.append(f"the CT image does not look like Hounsfield units (no voxel below {CT_AIR_HU:.0f}; "
                                f"values {vf.min():.0f} to {vf.max():.0f}): the default CT window (level "
                                f"{DEFAULT_CT_LEVEL:.0f}, width {DEFAULT_CT_WINDOW:.0f} HU) would turn it white; from "
                                f"its histogram try --ct-window {window:.4g} --ct-level {level:.4g}, or check that "
                                "it is a CT")
        elif modality in ("PET", "SPECT") and vf.min() < CT_AIR_HU:
            warnings.append(f"the {modality} image has values down to {vf.min():.0f}, like CT Hounsfield units "
                            f"(a {modality} has no negative values); did you mean {_suggest('window')}?")
    if anatomical.GetDimension() == 3 and functional.GetDimension() == 3:
        ra, rf = _voxel_mm(anatomical), _voxel_mm(functional)
        if ra >= SWAP_RATIO * rf and min(anatomical.GetSpacing()) >= COARSE_MM:
            warnings.append(f"the anatomical image's voxels ({ra:.1f} mm) are much coarser than the functional "
                            f"image's ({rf:.1f} mm) and the output is on the anatomical grid: are --anatomical "
                            "and --functional swapped?")
    if va is not None and vf is not None and not any("swapped" in w or "--task" in w for w in warnings):
        warnings += _content_warnings(modality, anatomical, functional)
    return warnings


def check_numbers(**values) -> None:
    """ECFusionError for numeric settings that cannot be right, by the bounds their ``fuse`` option declares
    (``options.FUSE_OPTIONS``: a batch size below 1 or not whole, a window not > 0, anything not finite).
    ``values``: {option name: value} of ``options.NUMBER_OPTIONS``; None means "default"."""
    for name, value in values.items():
        if value is not None:
            check_number(name, value)


SMOOTHER = 0.67  # anatomical edge content below this fraction of the functional's: swapped inputs?
SHARPER = 0.9  # a PET/SPECT with this fraction of the MRI's edge content or more: a CT (or an MRI) given as one?


def _content_warnings(modality: str, anatomical: sitk.Image, functional: sitk.Image) -> list[str]:
    """Swapped inputs and a CT given as PET/SPECT, from the images' edge content (``sharpness``), whatever their
    grids. Edge content measured: Colin27 T1 8.4, ICBM152 average T1 (8 mm smoothed) 2.8, real H2-15O PET 2.3 and
    HMPAO SPECT 2.4; phantom (4.5 mm) MRI 3.5, CT 3.3, PET 2.0, SPECT 1.4. So PET/SPECT / MRI is 0.27-0.82 (0.82:
    the smoothed template) and phantom CT / MRI 0.96; swapped PET and MRI give 1.2-3.7. Heuristic: a warning with
    the fix, never an error; a swap of the smoothed template and a PET (0.82) is not caught."""
    sa, sf = sharpness(anatomical), sharpness(functional)
    if sf <= 0:
        return []
    if modality in ("PET", "SPECT") and sa < SMOOTHER * sf:
        return [f"the anatomical image is much smoother than the {modality} image (edge content {sa:.1f} vs "
                f"{sf:.1f}), like a {modality} given as the MRI: are --anatomical and --functional swapped?"]
    if modality in ("PET", "SPECT") and sf >= SHARPER * sa:
        return [f"the {modality} image has edges as sharp as the MRI's (edge content {sf:.1f} vs {sa:.1f}), like a "
                f"CT (or an MRI), not a {modality}: did you mean {_suggest('window')}, or are the inputs swapped?"]
    return []


def sharpness(img: sitk.Image) -> float:
    """Edge content of a scalar image: mean gradient magnitude (per mm) over its head (above 10 % of its 1st-99th
    percentile range) divided by that range, x 100 (so an offset, e.g. a CT stored as HU + 1024, changes nothing). Sharp anatomy (MRI, CT) scores several times a PET/SPECT's."""
    f = sitk.Cast(img, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(f)
    sample = arr.ravel()[:: max(1, arr.size // SAMPLE)]
    low, top = (float(v) for v in np.percentile(sample, (1, 99)))
    if top <= low:
        return 0.0
    grad = sitk.GetArrayFromImage(sitk.GradientMagnitude(f))
    head = arr > low + 0.1 * (top - low)
    return float(100.0 * grad[head].mean() / (top - low)) if head.any() else 0.0
