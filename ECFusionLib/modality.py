"""What an image says it is: the DICOM Modality (0008,0060) code, and the fusion task it implies.

Used by ``ecfusion fuse``/``batch`` (detect the task, or warn when ``--task`` disagrees with the data) and
meant for any front end that detects the task from loaded images (e.g. the Slicer module).
"""
from __future__ import annotations

import SimpleITK as sitk

from .tasks import TASK_NAMES, TASK_SPECS, check_task, detect_task

ANATOMICAL_DICOM_MODALITY = "MR"  # the second images' codes are in each TaskSpec's dicom_modalities
MODALITY_KEYS = ("0008|0060", "Modality")  # DICOM tag as SimpleITK names it; the key the phantom's NRRDs carry


def image_modality(image: sitk.Image) -> str | None:
    """The DICOM Modality code an image carries in its metadata (e.g. "PT"), or None."""
    for key in MODALITY_KEYS:
        if image.HasMetaDataKey(key):
            code = image.GetMetaData(key).strip().upper()
            return code or None
    return None


def modality_name(code: str | None) -> str | None:
    """ "PT" -> "PET", "MR" -> "MRI"; None for codes ECFusion does not fuse (e.g. "SR") or no code."""
    code = (code or "").strip().upper()
    if code == ANATOMICAL_DICOM_MODALITY:
        return "MRI"
    task = detect_task(dicom_modality=code) if code else None
    return TASK_SPECS[task].second_modality if task else None


def task_for_modality(code: str | None) -> str | None:
    """The task that fuses MRI with a functional image of DICOM Modality ``code`` ("PT" -> "PET-MRI"), or None."""
    return detect_task(dicom_modality=code) if code else None


def resolve_task(task: str | None, anatomical_code: str | None, functional_code: str | None) -> tuple[str, list[str]]:
    """The task to run and warnings about the inputs' modalities.

    ``task`` given: checked, and a warning for each input whose Modality disagrees. ``task`` None: detected
    from the functional input's Modality; ECFusionError when it does not say.
    """
    from .errors import ECFusionError

    warnings = []
    a_name, f_name = modality_name(anatomical_code), modality_name(functional_code)
    if a_name and a_name != "MRI":
        hint = " (are --anatomical and --functional swapped?)" if f_name == "MRI" else ""
        warnings.append(f"the anatomical input's DICOM Modality is {anatomical_code} ({a_name}), not "
                        f"{ANATOMICAL_DICOM_MODALITY}{hint}")
    detected = task_for_modality(functional_code)
    if task is None or not str(task).strip():
        if detected is None:
            said = f"its Modality is {functional_code}" if functional_code else "it carries no Modality"
            raise ECFusionError(f"cannot tell the task from the functional input ({said}); give the task "
                                f"({', '.join(TASK_NAMES)})")
        return detected, warnings
    task = check_task(task)
    if detected is not None and detected != task:
        warnings.append(f"the functional input's DICOM Modality is {functional_code} ({f_name}), but the task is "
                        f"{task}; check the inputs, or use the task {detected}")
    return task, warnings
