"""The fusion tasks: which second modality is fused with MRI, and how its folder is named."""
from __future__ import annotations

from .errors import ECFusionError

# task -> name of the second modality (also the folder name in the 2D layout ROOT/<task>/<modality>/)
TASKS = {"CT-MRI": "CT", "PET-MRI": "PET", "SPECT-MRI": "SPECT"}
FUNCTIONAL_TASKS = {"PET-MRI", "SPECT-MRI"}  # pseudocolour: fuse Y, keep CbCr


def check_task(task: str) -> str:
    """Return the canonical task name (case-insensitive) or raise a clear error."""
    for name in TASKS:
        if task.upper() == name.upper():
            return name
    raise ECFusionError(f"unknown task '{task}': use one of {', '.join(TASKS)}")


def second_modality(task: str) -> str:
    return TASKS[check_task(task)]
