"""Fusing two images with geometry: resample, map intensities, run the engine, put the colour back.

    result = fuse_images(mri_image, pet_image, FusionSettings(task="PET-MRI"))
    result.image      # sitk.Image on the anatomical grid: RGB uint8 (PET/SPECT) or grey uint8 (CT-MRI)
    result.metadata   # provenance: task, weights checksum, intensity mappings, engine settings
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import __version__
from .colour import recolour
from .engine import CancelCheck, ProgressCallback, fuse_volume
from .errors import ECFusionError
from .geometry import resample_onto, slice_axis
from .input_checks import check_numbers
from .intensity import default_window_level, map_ct, map_functional, map_mri, map_rgb
from .registration import alignment_check, transform_provenance
from .salient import keep_salient
from .tasks import task_spec
from .volume_io import check_image
from .weights import load_model

METADATA_PREFIX = "ECFusion_"
log = logging.getLogger(__name__)


@dataclass
class FusionSettings:
    task: str
    device: str = "auto"
    batch_size: int | None = None
    axis: str = "auto"
    colormap: str | None = None  # PET/SPECT scalar volumes: colour map name or table file
    colormap_table: np.ndarray | None = None  # or a 256 x 3 table (0-1), e.g. from a Slicer colour node
    window: float | None = None  # PET/SPECT window/level (default: robust range)
    level: float | None = None
    ct_window: float | None = None
    ct_level: float | None = None
    weights: str | None = None  # None: the bundled weights of the task
    precision: str = "auto"  # bf16 where the hardware has it, else fp32; or force "fp32" / "bf16" (engine.py)
    as_is: bool = False  # 8-bit images (PNG pairs) already in display grey levels: no intensity mapping
    keep_salient: bool = True  # salient.py: keep the CT bone / the hottest uptake after the network


@dataclass
class FusionResult:
    image: sitk.Image
    metadata: dict = field(default_factory=dict)


__all__ = ["FusionSettings", "FusionResult", "fuse_images", "default_window_level", "METADATA_PREFIX"]


def fuse_images(anatomical: sitk.Image, second: sitk.Image, settings: FusionSettings, *,
                model=None, weights_info: dict | None = None,
                progress: ProgressCallback | None = None, cancel: CancelCheck | None = None,
                transform: sitk.Transform | None = None, registered: bool = False, label: str = "") -> FusionResult:
    """Fuse the anatomical image (MRI) with the second image (CT, PET or SPECT; scalar or RGB) on the anatomical grid.

    What is done with each image follows the task's ``tasks.TaskSpec`` (intensity mapping, colour kept or not).

    Args:
        anatomical: 2D or 3D scalar image; the output is on its grid.
        second: 2D or 3D image, scalar or RGB, anywhere in physical space overlapping ``anatomical``.
        settings: task, device, precision, display settings, weights (``FusionSettings``).
        model: a network (``torch.nn.Module``, not modified) to use instead of loading ``settings.weights`` or the
            task's bundled weights; pass ``weights_info`` with it for the metadata.
        progress, cancel: see ``engine.fuse_volume``.
        transform: maps anatomical physical points to the second image's space (optional).
        registered: ``transform`` comes from a registration that just succeeded: no misalignment warning.
        label: names the pair in the misalignment warning (2D pairs).
    Returns:
        FusionResult: the image (RGB uint8 when the task keeps colour and the second image has it, else grey
        uint8) and its provenance metadata. The inputs are not modified.
    """
    spec = task_spec(settings.task)
    task, modality = spec.name, spec.second_modality
    check_numbers(batch_size=settings.batch_size, window=settings.window, level=settings.level,
                  ct_window=settings.ct_window, ct_level=settings.ct_level)
    check_image(anatomical, f"anatomical ({spec.anatomical_modality}) image")
    check_image(second, f"{modality} image", allow_rgb=True)
    if anatomical.GetDimension() != second.GetDimension():
        raise ECFusionError(f"the {spec.anatomical_modality} is {anatomical.GetDimension()}D but the {modality} image is {second.GetDimension()}D")
    if model is None:
        model, weights_info = load_model(task, settings.weights)
    axis = slice_axis(anatomical, settings.axis)

    moved = resample_onto(second, anatomical, transform)
    alignment = alignment_check(anatomical, moved, label=label)
    if alignment.misaligned and not registered:
        log.warning(alignment.message())
    sec = sitk.GetArrayFromImage(moved)
    rgb = values = None
    if settings.as_is:  # 2D 8-bit pairs, as in training: grey levels used as they are
        mri_u8, mri_map = np.asarray(sitk.GetArrayViewFromImage(anatomical), np.uint8), {"modality": "MRI", "method": "as-is (8-bit)"}
        if moved.GetNumberOfComponentsPerPixel() == 3:
            rgb, sec_u8, sec_map = map_rgb(sec, modality)
        else:
            sec_u8, sec_map = np.asarray(sec, np.uint8), {"modality": modality, "method": "as-is (8-bit)"}
    elif moved.GetNumberOfComponentsPerPixel() == 3:  # RGB second image: its luminance
        rgb, sec_u8, sec_map = map_rgb(sec, modality)
    elif spec.second_mapping == "colormap":  # scalar PET/SPECT: coloured as displayed, then its luminance
        window, level = default_window_level(sitk.GetArrayViewFromImage(second), settings.window, settings.level)
        colormap = settings.colormap or spec.default_colormap
        rgb, sec_u8, sec_map = map_functional(sec, modality, colormap, window, level, settings.colormap_table)
        values = sec  # the keep-salient rule's focal uptake is relative to these (salient.focal_weight)
    else:  # "window": CT in HU
        window, level = spec.default_window
        sec_u8, sec_map = map_ct(sec, window if settings.ct_window is None else settings.ct_window,
                                 level if settings.ct_level is None else settings.ct_level)
    rgb = rgb if spec.keep_colour else None
    if not settings.as_is:
        mri_u8, mri_map = map_mri(sitk.GetArrayViewFromImage(anatomical))
    del sec  # ``values`` keeps it only where the focal rule needs it

    fused_y, info = fuse_volume(model, sec_u8, mri_u8, axis=axis, device=settings.device,
                                batch_size=settings.batch_size, progress=progress, cancel=cancel,
                                precision=settings.precision)
    fused_y = keep_salient(fused_y, sec_u8, task, settings.keep_salient, anatomical=mri_u8,  # salient.py
                           values=values, spacing=anatomical.GetSpacing()[::-1])
    if rgb is not None:
        out = sitk.GetImageFromArray(recolour(fused_y, rgb), isVector=True)
    else:
        out = sitk.GetImageFromArray(fused_y)
    out.CopyInformation(anatomical)
    metadata = {
        "version": __version__, "architecture": getattr(model, "architecture", type(model).__name__), "task": task,
        "weights": (weights_info or {}).get("weights", "in-memory model"),
        "weights_sha256": (weights_info or {}).get("sha256", ""),
        "anatomical_intensity": mri_map, "second_intensity": sec_map,
        "slice_axis": int(axis), "device": info.device, "precision": info.precision, "batch_size": info.batch_size,
        "output": "RGB uint8 (fused Y + functional CbCr)" if rgb is not None else "grey uint8",
        "alignment": {"containment": round(alignment.containment, 4), "dice": round(alignment.dice, 4),
                      "nmi": round(alignment.nmi, 4), "residual_mm": round(alignment.residual_mm, 2),
                      "misaligned": alignment.misaligned},
        "registration": transform_provenance(transform, "given transform"),
        "keep_salient": bool(settings.keep_salient),
    }
    for key, value in metadata.items():
        out.SetMetaData(METADATA_PREFIX + key, value if isinstance(value, str) else json.dumps(value))
    return FusionResult(out, metadata)
