"""What an image says it is: the DICOM Modality (0008,0060) code, and the fusion task it implies.

Used by ``ecfusion fuse``/``batch`` (detect the task; ``input_checks`` warns when the task and the labels
disagree) and
meant for any front end that detects the task from loaded images (e.g. the Slicer module).
"""
from __future__ import annotations

import SimpleITK as sitk

from .errors import ECFusionError
from .tasks import TASK_NAMES, check_task, detect_task

MODALITY_KEYS = ("0008|0060", "Modality")  # DICOM tag as SimpleITK names it; the key the phantom's NRRDs carry


def image_modality(image: sitk.Image) -> str | None:
    """The DICOM Modality code an image carries in its metadata (e.g. "PT"), or None."""
    for key in MODALITY_KEYS:
        if image.HasMetaDataKey(key):
            code = image.GetMetaData(key).strip().upper()
            if code.startswith("MET_MOD_"):  # MetaImage's own codes: MET_MOD_CT, ..., MET_MOD_UNKNOWN
                code = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_NM": "NM"}.get(code, "")
            return code or None
    return None


def resolve_task(task: str | None, functional_code: str | None) -> str:
    """The task to run: ``task`` checked when given, else detected from the functional input's DICOM Modality
    ``functional_code``; ECFusionError when neither says. (Labels that disagree with the task are warned about by
    ``input_checks.input_warnings``.)"""
    if task is None or not str(task).strip():
        detected = detect_task(dicom_modality=functional_code) if functional_code else None
        if detected is None:
            said = f"its Modality is {functional_code}" if functional_code else "it carries no Modality"
            raise ECFusionError(f"cannot tell the task from the functional input ({said}); give the task "
                                f"({', '.join(TASK_NAMES)})")
        return detected
    return check_task(task)
