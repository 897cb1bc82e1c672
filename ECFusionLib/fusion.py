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
from .geometry import check_overlap, same_grid, slice_axis
from .input_checks import check_numbers
from .intensity import ANATOMICAL_MAPPERS, default_window_level, map_rgb, mri_range, second_mapper
from .registration import alignment_check, transform_provenance
from .salient import focal_ratio, keep_salient, ratio_weight
from .slabs import coarse_grid, float_source, resample_region, slabs
from .tasks import task_spec
from .volume_io import check_image

METADATA_PREFIX = "ECFusion_"
log = logging.getLogger(__name__)
PHASES = logging.getLogger("ECFusionLib.phase")  # DEBUG records at the end of each phase (scripts/benchmark_memory.py)


@dataclass
class FusionSettings:
    task: str
    device: str = "auto"
    batch_size: int | None = None
    axis: str = "auto"
    colormap: str | None = None  # PET/SPECT scalar volumes: colour map name or table file
    colormap_table: np.ndarray | None = None  # or a 256 x 3 table (0-1), e.g. from a Slicer colour node
    window: float | None = None  # PET/SPECT window/level (default: intensity.default_window_level)
    level: float | None = None
    ct_window: float | None = None
    ct_level: float | None = None
    weights: str | None = None  # None: the bundled weights of ``model`` or of the task's default model
    model: str | None = None  # a bundled model by name (weights.models), e.g. "ecfusion-v1.pet-mri"
    backend: str = "auto"  # "torch", "onnxruntime", or auto: ONNX Runtime on CPUs, torch on GPUs (backends.py)
    precision: str = "auto"  # bf16 where the hardware has it, else fp32; or force "fp32" / "bf16" (engine.py)
    as_is: bool = False  # 8-bit images (PNG pairs) already in display grey levels: no intensity mapping
    keep_salient: bool = True  # salient.py: keep the CT bone / the hottest uptake after the network


@dataclass
class FusionResult:
    image: sitk.Image
    metadata: dict = field(default_factory=dict)


__all__ = ["FusionSettings", "FusionResult", "fuse_images", "default_window_level", "METADATA_PREFIX"]


def _alignment(anatomical: sitk.Image, second: sitk.Image, transform, label: str = ""):
    """``registration.alignment_check`` of the second image on the anatomical grid; above
    ``slabs.ALIGNMENT_VOXELS`` on a block-averaged copy of that grid (no whole float copy of a large volume).
    ``label`` names the pair in the message (2D pairs)."""
    grid = coarse_grid(anatomical)
    if transform is None and same_grid(second, grid):
        return alignment_check(grid, second, label=label)
    idx = tuple(slice(None) for _ in range(grid.GetDimension()))
    moved = sitk.GetImageFromArray(resample_region(float_source(second), grid, idx, transform, _outside(second)),
                                   isVector=second.GetNumberOfComponentsPerPixel() > 1)
    moved.CopyInformation(grid)
    return alignment_check(grid, moved, label=label)


def _outside(image: sitk.Image) -> float:
    """The value given to points outside the second image (its minimum, as ``geometry.resample_onto``)."""
    return float(sitk.GetArrayViewFromImage(image).min())


def _focal_weights(anatomical: sitk.Image, second: sitk.Image, spec, settings: FusionSettings, transform, sec_u8):
    """For a task whose keep-salient rule is the focal one (PET/SPECT, ``salient.focal_weight``): a function
    giving the rule's weight on a slab ``idx`` of the anatomical grid; None when the rule is off for the task.

    The uptake / local background (``salient.focal_ratio``) comes from a scalar PET/SPECT's values on its own grid
    (coarse: small), else (RGB, e.g. from the Slicer panel, or 8-bit 2D pairs) from the second image's Y
    (``sec_u8``) on the anatomical grid. Above ``slabs.ALIGNMENT_VOXELS`` that grid is block-averaged first
    (``coarse_grid``; the background is a 6 mm Gaussian, so little is lost), so no whole float copy of a large
    grid is made. The ratio is then interpolated onto the anatomical grid slab by slab (linear, 0 outside), where
    it becomes the weight; on the anatomical grid itself it is read as it is."""
    if not (settings.keep_salient and spec.salient_focal):
        return None
    if second.GetNumberOfComponentsPerPixel() == 1 and spec.second_mapping == "colormap" and not settings.as_is:
        source, tx = second, transform
    else:  # already on the anatomical grid
        source, tx = sitk.GetImageFromArray(sec_u8), None
        source.CopyInformation(anatomical)
    grid = coarse_grid(source)
    ratio = focal_ratio(sitk.GetArrayViewFromImage(grid), grid.GetSpacing()[::-1])
    if grid is source and source is not second:  # the anatomical grid itself: read as it is
        return lambda idx: ratio_weight(ratio[idx])
    ratio_image = sitk.GetImageFromArray(ratio)
    ratio_image.CopyInformation(grid)
    return lambda idx: ratio_weight(resample_region(ratio_image, anatomical, idx, tx, 0.0))


def _map_inputs(anatomical: sitk.Image, second: sitk.Image, spec, settings: FusionSettings, axis: int, transform):
    """Resample the second image onto the anatomical grid and map both to 8 bits, slab by slab along ``axis``
    (``slabs``): the only whole arrays are uint8. Returns (second Y, MRI, the second image's RGB or None when
    the task does not keep colour, second mapping, MRI mapping)."""
    modality = spec.second_modality
    anatomical_view = sitk.GetArrayViewFromImage(anatomical)
    value_range = None if settings.as_is else mri_range(anatomical_view)
    if second.GetNumberOfComponentsPerPixel() == 3:  # RGB second image: its luminance
        mapper = lambda part: map_rgb(part, modality)  # noqa: E731
    elif settings.as_is:  # 2D 8-bit pairs, as in training: grey levels used as they are
        mapper = lambda part: (None, np.asarray(part, np.uint8), {"modality": modality, "method": "as-is (8-bit)"})  # noqa: E731
    else:  # a scalar second image: its task's mapping (intensity.SECOND_MAPPERS)
        mapper = second_mapper(spec, sitk.GetArrayViewFromImage(second), settings)
    map_anatomical = ANATOMICAL_MAPPERS[spec.anatomical_mapping]
    shape = anatomical_view.shape
    colour = second.GetNumberOfComponentsPerPixel() == 3 or (spec.second_mapping == "colormap" and not settings.as_is)
    rgb = np.empty((*shape, 3), np.uint8) if colour and spec.keep_colour else None
    sec_u8, mri_u8 = np.empty(shape, np.uint8), np.empty(shape, np.uint8)
    on_grid = transform is None and same_grid(second, anatomical)
    if not on_grid and transform is None:
        check_overlap(second, anatomical)
    source, outside = (second, None) if on_grid else (float_source(second), _outside(second))
    for idx in slabs(shape, axis):
        part = sitk.GetArrayViewFromImage(source)[idx] if on_grid else resample_region(source, anatomical, idx, transform, outside)
        part_rgb, sec_u8[idx], sec_map = mapper(part)
        if rgb is not None:
            rgb[idx] = part_rgb
        if settings.as_is:
            mri_u8[idx], mri_map = anatomical_view[idx], {"modality": "MRI", "method": "as-is (8-bit)"}
        else:
            mri_u8[idx], mri_map = map_anatomical(anatomical_view[idx], value_range=value_range)
    return sec_u8, mri_u8, rgb, sec_map, mri_map


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
        model: a network (a ``torch.nn.Module`` or an ``onnx_backend.OnnxNetwork``; not modified) to use instead
            of loading ``settings.weights``, ``settings.model`` or the task's default model on
            ``settings.backend`` (``backends.load_network``); pass ``weights_info`` with it for the metadata.
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
        from .backends import load_network

        model, weights_info = load_network(task, settings.weights, settings.model, settings.backend, settings.device,
                                           settings.precision)
    axis = slice_axis(anatomical, settings.axis)
    alignment = _alignment(anatomical, second, transform, label)
    if alignment.misaligned and not registered:
        log.warning(alignment.message())
    sec_u8, mri_u8, rgb, sec_map, mri_map = _map_inputs(anatomical, second, spec, settings, axis, transform)
    PHASES.debug("resample")

    fused_y, info = fuse_volume(model, sec_u8, mri_u8, axis=axis, device=settings.device,
                                batch_size=settings.batch_size, progress=progress, cancel=cancel,
                                precision=settings.precision)
    PHASES.debug("engine")
    focal = _focal_weights(anatomical, second, spec, settings, transform, sec_u8)
    for idx in slabs(fused_y.shape, axis):  # salient.py, then the colour put back: slab by slab, in place
        fused_y[idx] = keep_salient(fused_y[idx], sec_u8[idx], task, settings.keep_salient, anatomical=mri_u8[idx],
                                    weight=None if focal is None else focal(idx))
        if rgb is not None:
            rgb[idx] = recolour(fused_y[idx], rgb[idx])
    del sec_u8, mri_u8
    is_rgb = rgb is not None
    out = sitk.GetImageFromArray(rgb if is_rgb else fused_y, isVector=is_rgb)
    del rgb, fused_y
    out.CopyInformation(anatomical)
    metadata = {
        "version": __version__, "architecture": getattr(model, "architecture", type(model).__name__), "task": task,
        "weights": (weights_info or {}).get("weights", "in-memory model"),
        "weights_sha256": (weights_info or {}).get("sha256", ""),
        "anatomical_intensity": mri_map, "second_intensity": sec_map,
        "model": (weights_info or {}).get("model") or "", "backend": info.backend,
        "slice_axis": int(axis), "device": info.device, "precision": info.precision, "batch_size": info.batch_size,
        "output": "RGB uint8 (fused Y + functional CbCr)" if is_rgb else "grey uint8",
        "alignment": {"containment": round(alignment.containment, 4), "dice": round(alignment.dice, 4),
                      "nmi": round(alignment.nmi, 4), "residual_mm": round(alignment.residual_mm, 2),
                      "misaligned": alignment.misaligned},
        "registration": transform_provenance(transform, "given transform"),
        "keep_salient": bool(settings.keep_salient),
    }
    for key, value in metadata.items():
        out.SetMetaData(METADATA_PREFIX + key, value if isinstance(value, str) else json.dumps(value))
    PHASES.debug("post")
    return FusionResult(out, metadata)
