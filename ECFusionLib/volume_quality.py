"""Quality of a 3D fusion against what a viewer shows without it: a 50/50 blend of the same displayed images.

    report = evaluate_volumes(mri_image, pet_image, FusionSettings(task="PET-MRI"), lesions=DEFAULT_LESIONS)

- anatomy kept (``metrics.anatomy_vs_blend``): SSIM's contrast-structure term between the fused luminance and
  the MRI, for the whole head and where the second image is bright, next to the same for the blend;
- focal uptake kept (PET/SPECT): spherical lesions written into the functional volume (``insert_lesions``),
  each lesion's colour distance to its surrounding shell in the fused RGB, the blend and the functional image
  alone (``metrics.lesion_contrast``);
- bone kept (CT-MRI, ``metrics.bone_kept``); for CT-MRI anatomy is measured outside the bone (``metrics.bone_zone``),
  where the fused image is meant to show the CT.
The blend is of the images as displayed: the MRI grey (as mapped for the network) and the second image through
the colour map and window the fusion used (recorded in its metadata), or the CT through its window.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from . import metrics as M
from .colour import apply_colormap, colormap_table, luminance
from .fusion import FusionSettings, fuse_images
from .geometry import resample_onto, slice_axis
from .intensity import map_ct, map_mri


@dataclass(frozen=True)
class Lesion:
    """A sphere of uptake ``factor`` x the mean of its shell (``shell_mask``), centred at ``centre`` (LPS mm)."""
    centre: tuple[float, float, float]
    radius: float  # mm
    factor: float


def _ras(x, y, z):
    return (-float(x), -float(y), float(z))  # MNI/RAS mm -> LPS mm


# Eight places in MNI space (cortex of four lobes, thalamus, temporal and cerebellar grey matter, frontal white
# matter, the vertex) and eight lesions, radius 3-10 mm, 1.3-3x their surroundings: the faintest (1.3x) at each size.
LESION_PLACES = ((-30, 40, 30), (35, -55, 45), (-20, -85, 10), (12, -18, 6), (-50, -20, -10), (25, -65, -35),
                 (25, 20, 25), (5, -30, 60))
LESION_SIZES = ((3, 1.3), (3, 3.0), (5, 2.0), (5, 1.3), (7, 1.5), (8, 3.0), (10, 1.3), (10, 2.0))  # (radius mm, factor)


def lesion_placement(shift: int = 0) -> tuple[Lesion, ...]:
    """The eight lesions at ``LESION_PLACES``, place i getting size ``(i + shift) % 8``: shift 0 is
    ``DEFAULT_LESIONS``; shift 4 (``SECOND_LESIONS``) puts, e.g., the 10 mm 1.3x lesion in the occipital cortex."""
    return tuple(Lesion(_ras(*c), *LESION_SIZES[(i + shift) % len(LESION_SIZES)]) for i, c in enumerate(LESION_PLACES))


DEFAULT_LESIONS = lesion_placement(0)
SECOND_LESIONS = lesion_placement(4)


def _distance(image: sitk.Image, centre, reach: float) -> np.ndarray:
    """Distance (mm) of each voxel of ``image`` (3D) to ``centre`` (LPS mm) within +-``reach`` mm; inf beyond.
    Array in numpy (z, y, x) order."""
    size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
    c_idx = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in centre]))
    half = reach / spacing
    lo = np.clip(np.floor(c_idx - half).astype(int), 0, size)
    hi = np.clip(np.ceil(c_idx + half).astype(int) + 1, 0, size)
    out = np.full(size[::-1], np.inf, np.float32)
    if np.any(hi <= lo):
        return out
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo[::-1], hi[::-1])], indexing="ij"), -1)[..., ::-1]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.array(image.GetOrigin()) + (idx * spacing) @ direction.T
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = np.linalg.norm(points - np.array(centre), axis=-1)
    return out


def _shell(distance: np.ndarray, radius: float) -> np.ndarray:
    """The lesion's surroundings: from 2 mm outside it to 2 mm beyond its diameter."""
    return (distance >= radius + 2.0) & (distance <= 2.0 * radius + 2.0)


def insert_lesions(image: sitk.Image, lesions=DEFAULT_LESIONS) -> sitk.Image:
    """A copy of the scalar 3D ``image`` (PET/SPECT) with each lesion's sphere set to ``factor`` x the mean of its
    shell in the original (the local mean). The input is not modified."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    original = arr.copy()
    for lesion in lesions:
        d = _distance(image, lesion.centre, 2 * lesion.radius + 3)
        arr[d <= lesion.radius] = lesion.factor * float(original[_shell(d, lesion.radius)].mean())
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def lesion_masks(reference: sitk.Image, lesions=DEFAULT_LESIONS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lesion, shell) boolean masks of each lesion on ``reference``'s grid."""
    out = []
    for lesion in lesions:
        d = _distance(reference, lesion.centre, 2 * lesion.radius + 3)
        out.append((d <= lesion.radius, _shell(d, lesion.radius)))
    return out


def displayed_second(anatomical: sitk.Image, second: sitk.Image, metadata: dict):
    """The second image on the anatomical grid as the fusion displayed it: (RGB ... x 3 uint8 or None, Y 0-255),
    using the colour map / window recorded in the fusion's ``metadata["second_intensity"]``."""
    mapping = metadata["second_intensity"]
    on_grid = sitk.GetArrayFromImage(resample_onto(second, anatomical))
    if mapping.get("method") == "colormap":
        rgb = apply_colormap(on_grid, colormap_table(mapping["colormap"]), mapping["window"], mapping["level"])
        return rgb, luminance(rgb)
    if mapping.get("method") == "window":
        return None, map_ct(on_grid, mapping["window"], mapping["level"])[0].astype(np.float32)
    raise ValueError(f"cannot redisplay a second image mapped by {mapping.get('method')!r}")


def _fused_and_display(anatomical, second, settings):
    result = fuse_images(anatomical, second, settings)
    fused = sitk.GetArrayFromImage(result.image)
    rgb, sec_y = displayed_second(anatomical, second, result.metadata)
    mri = map_mri(sitk.GetArrayViewFromImage(anatomical))[0].astype(np.float32)
    return fused, rgb, sec_y, mri


def evaluate_volumes(anatomical: sitk.Image, second: sitk.Image, settings: FusionSettings,
                     lesions=None) -> dict:
    """Fuse (``fusion.fuse_images``) and measure: see the module docstring. 3D scalar inputs.

    Returns a dict: ``anatomy`` (``metrics.anatomy_vs_blend``), for CT-MRI ``bone_kept`` (fused and blend), and
    with ``lesions`` (PET/SPECT) ``lesions``: one dict per lesion (radius, factor, fused, blend, functional colour
    distances and fused / blend) from a second fusion of the functional volume with the lesions written in.
    """
    axis = slice_axis(anatomical, settings.axis)
    fused, rgb, sec_y, mri = _fused_and_display(anatomical, second, settings)
    fused_y = luminance(fused) if fused.ndim == 4 else fused.astype(np.float32)
    head = M.anatomy_head(mri, sec_y, axis) if rgb is None else None  # CT-MRI: the MRI's anatomy outside bone
    report = {"task": settings.task, "keep_salient": settings.keep_salient,
              "anatomy": M.anatomy_vs_blend(mri, fused_y, sec_y, axis, head)}
    if rgb is None:  # CT-MRI
        report["bone_kept"] = {"fused": M.bone_kept(sec_y, mri, fused_y),
                               "blend": M.bone_kept(sec_y, mri, M.blend_y(mri, sec_y))}
    if lesions and rgb is not None:
        report["lesions"] = lesion_visibility(anatomical, second, settings, lesions)
    return report


def lesion_visibility(anatomical, second, settings: FusionSettings, lesions=DEFAULT_LESIONS) -> list[dict]:
    """Per lesion: colour distance lesion-shell in the fused RGB, the 50/50 blend and the functional alone."""
    lesioned = insert_lesions(second, lesions)
    fused, rgb, _, mri = _fused_and_display(anatomical, lesioned, replace(settings))
    blend = M.blend_rgb(mri, rgb)
    rows = []
    for lesion, (inside, shell) in zip(lesions, lesion_masks(anatomical, lesions)):
        f, b, s = (M.lesion_contrast(x, inside, shell) for x in (fused, blend, rgb))
        rows.append({"radius": lesion.radius, "factor": lesion.factor, "fused": f, "blend": b, "functional": s,
                     "ratio": f / b if b > 0 else float("nan")})
    return rows


def evaluate_files(anatomical, functional, task: str, *, keep_salient: bool = True, lesions: bool = False) -> dict:
    """``evaluate_volumes`` of two volume files at the default settings of ``task`` (``ecfusion evaluate
    --anatomical --functional``); ``lesions``: also write ``DEFAULT_LESIONS`` into the PET/SPECT and measure them."""
    from .errors import ECFusionError
    from .tasks import check_task
    from .volume_io import read_image

    mri = read_image(anatomical, what="anatomical image")
    second = read_image(functional, what="functional image")
    if mri.GetDimension() != 3 or second.GetDimension() != 3:
        raise ECFusionError("3D evaluation needs 3D volumes; for 2D pairs use --input-dir and --fused")
    settings = FusionSettings(task=check_task(task), keep_salient=keep_salient)
    return evaluate_volumes(mri, second, settings, lesions=DEFAULT_LESIONS if lesions else None)


def report_table(report: dict) -> str:
    """``evaluate_volumes``' report as a plain table: each measure, fused, 50/50 blend and their ratio."""
    a = report["anatomy"]
    lines = [f"{'measure':24s} {'fused':>8s} {'blend':>8s} {'ratio':>8s}"]
    for key in ("head", "bright"):
        lines.append(f"{'anatomy_kept_' + key:24s} {a[key]:8.4f} {a['blend_' + key]:8.4f} {a['ratio_' + key]:8.4f}")
    if "bone_kept" in report:
        b = report["bone_kept"]
        lines.append(f"{'bone_kept':24s} {b['fused']:8.4f} {b['blend']:8.4f} {b['fused'] / b['blend']:8.4f}")
    for row in report.get("lesions", []):
        name = f"lesion_r{row['radius']:g}mm_x{row['factor']:g}"
        lines.append(f"{name:24s} {row['fused']:8.2f} {row['blend']:8.2f} {row['ratio']:8.4f}")
    return "\n".join(lines)
