"""The public Python API (``import ECFusionLib``): one call per job, the same pipeline as the command line.

    import ECFusionLib

    fused = ECFusionLib.fuse("mri.nii.gz", "pet.nii.gz", task="PET-MRI")            # a SimpleITK image
    fused = ECFusionLib.fuse(mri_image, ct_image, task="CT-MRI", ct_window=1800, ct_level=400, device="cpu")
    done = ECFusionLib.fuse_file("mri/", "pet/", "fused.nrrd")                       # DICOM: task from the Modality
    written = ECFusionLib.fuse_pair_folder("pairs/", "fused_pngs/")                  # 2D PNG pairs

``fuse`` works in memory (paths or SimpleITK images in, a SimpleITK image out, nothing written);
``fuse_file`` is ``ecfusion fuse`` for one pair of files (checks, PET units, registration, provenance, an atomic
write) and returns a ``fuse_files.FuseOutcome``. Settings are the ``ecfusion fuse`` options by their Python names
(``options.FUSE_OPTIONS``: window, level, ct_window, ct_level, colormap, device, precision, batch_size, axis,
keep_salient, weights, ...).
"""
from __future__ import annotations

import logging
from pathlib import Path

import SimpleITK as sitk

from .fuse_files import FuseOutcome, FuseRequest, fuse_files, read_input
from .fusion import FusionSettings, fuse_images
from .input_checks import input_warnings
from .modality import image_modality, resolve_task

__all__ = ["fuse", "fuse_file"]
log = logging.getLogger(__name__)


def _image(value, what: str, allow_rgb: bool) -> tuple[sitk.Image, str | None]:
    """(image, its DICOM Modality code or None) from a SimpleITK image or a path (a volume file or DICOM)."""
    if isinstance(value, sitk.Image):
        return value, image_modality(value)
    volume = read_input(Path(value), what=what, allow_rgb=allow_rgb)
    return volume.image, volume.modality


def fuse(anatomical, second, task: str | None = None, *, transform: sitk.Transform | None = None, model=None,
         progress=None, cancel=None, **settings) -> sitk.Image:
    """Fuse an MRI with a CT, PET or SPECT image, in memory.

    Args:
        anatomical: the MRI: a ``SimpleITK.Image`` or a path (NRRD, NIfTI, MHA, a DICOM folder or file); the
            output is on its grid.
        second: the CT / PET / SPECT image (scalar or RGB pseudocolour), the same kinds.
        task: "CT-MRI", "PET-MRI" or "SPECT-MRI" (any case); None: from the second image's DICOM Modality.
        transform: anatomical physical space -> second image space (e.g. ``sitk.ReadTransform`` of
            ``ecfusion register``'s output), applied before fusion.
        model: a loaded network to use instead of the task's bundled weights (``weights.load_model``).
        progress, cancel: ``progress(done, total)`` per slice batch; ``cancel()`` -> True stops (CancelledError).
        **settings: ``FusionSettings`` fields: window, level, ct_window, ct_level, colormap, device, precision,
            batch_size, axis, keep_salient, weights.
    Returns:
        The fused image (RGB uint8 for PET/SPECT, grey uint8 for CT) with its provenance in the metadata
        (``ECFusion_*`` keys). The inputs are not modified.
    Raises:
        ECFusionError: unreadable inputs, an unknown task, bad settings (the message says what to do);
        WeightsError: missing or corrupt weights; TypeError: a setting that does not exist.
    """
    anatomical_image, _ = _image(anatomical, "anatomical image", allow_rgb=False)
    second_image, code = _image(second, "second image", allow_rgb=True)
    task = resolve_task(task, code)
    for warning in input_warnings(task, anatomical_image, second_image):
        log.warning(warning)
    result = fuse_images(anatomical_image, second_image, FusionSettings(task=task, **settings), model=model,
                         progress=progress, cancel=cancel, transform=transform)
    return result.image


def fuse_file(anatomical, second, output, task: str | None = None, *, progress=None, cancel=None,
              status=None, **options) -> FuseOutcome:
    """``ecfusion fuse`` for one pair of files: read and check both inputs, settle the task, convert PET units,
    register, fuse, and write ``output`` atomically with its provenance (never over an input).

    Args:
        anatomical, second: paths (volume files, or DICOM folders / files).
        output: the file to write (.nrrd, .nii.gz, .mha, ...).
        task: as for ``fuse``.
        progress, cancel: as for ``fuse``; status: called with progress messages (registration).
        **options: the other ``ecfusion fuse`` options by their Python names (``FuseRequest`` fields:
            window, level, ct_window, ct_level, colormap, register, transform, pet_units, anatomical_series,
            functional_series, device, precision, batch_size, axis, keep_salient, weights).
    Returns:
        FuseOutcome: output path, task, metadata, the image, warnings, seconds.
    """
    request = FuseRequest(anatomical=str(anatomical), functional=str(second), output=str(output), task=task, **options)
    return fuse_files(request, progress=progress, cancel=cancel, status=status)
