"""The task registry and the option vocabularies: the one place that says what each fusion task is.

A task fuses an anatomical image (MRI) with a second image (CT, PET or SPECT). Everything that differs
between tasks is a field of its ``TaskSpec``; the command line's ``choices=``, the Slicer module's lists,
task detection, the intensity and colour defaults and ``fusion.fuse_images`` all read it from here.
Adding a task = one ``TaskSpec`` entry in ``TASK_SPECS`` plus its weights in ``weights/catalogue.json``.

No torch, no Qt: importable by the command-line parser and the Slicer widget at no cost.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ECFusionError

# ---------------------------------------------------------------- option vocabularies (first = default)
DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA when available
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 on GPUs and CPUs with native bf16, else fp32 (engine.make_runner)
BACKENDS = ("auto", "torch", "onnxruntime")  # auto: ONNX Runtime on CPUs, torch on GPUs/bf16 (backends.resolve_backend)
REGISTRATION_MODES = ("none", "rigid", "affine")  # registration of the second image onto the anatomical one
REGISTRATION_INITS = ("geometry", "moments")
AXES = ("auto", "axial", "coronal", "sagittal", "i", "j", "k")  # slice direction (geometry.slice_axis)
AXES_ANATOMICAL = AXES[:4]  # the ones offered in a user interface


SECOND_MAPPINGS = ("window", "colormap")  # implemented in intensity.py (map_ct, map_functional)
ANATOMICAL_MAPPINGS = ("percentiles",)  # intensity.ANATOMICAL_MAPPERS (map_mri)
IMAGE_CHECKS = ("bone_kept", "hot_kept")  # evaluation.check_value


@dataclass(frozen=True)
class TaskSpec:
    """What one fusion task is.

    Attributes:
        name: the task's name, e.g. "PET-MRI" (also its folder name in the 2D layout ROOT/<task>/).
        second_modality: modality of the second image ("CT", "PET", "SPECT"; also its 2D folder name).
        anatomical_modality: modality of the anatomical image (the output's grid).
        keep_colour: True: a pseudocolour second image keeps its colour (the network fuses its Y channel;
            the output is RGB with the second image's CbCr); False: the output is grey.
        anatomical_mapping: intensity mapping of the anatomical image to 0-255 ("percentiles", intensity.map_mri).
        second_mapping: of a scalar second image: "window" (fixed window/level, intensity.map_window) or
            "colormap" (window/level through a colour map, then Y; intensity.map_functional).
        default_colormap: colour map for "colormap" (a name in colour.COLORMAPS), else None.
        default_window: (window, level) for "window", in the modality's units (CT: HU), else None
            (PET/SPECT: ``intensity.default_window_level``).
        dicom_modalities: DICOM Modality (0008,0060) codes of the second image.
        name_patterns: regular expressions on a lower-case volume name that identify the second image.
        salient_threshold: the keep-salient rule's source grey level (0-255) above which the fused value is lifted
            toward the second image (salient.py), None = the rule is off for the task.
        salient_dark: the MRI grey level (0-255) below which the rule applies (CT bone under dark T1), None =
            anywhere. Both chosen by cross-validation (model card).
        image_check: what evaluation checks a fused image keeps: "bone_kept" (metrics.bone_kept: bright bone of a
            grey second image) or "hot_kept" (metrics.hot_spots_kept: the hottest uptake).
        anatomical_dicom_modalities: DICOM Modality codes of the anatomical image (input_checks' label check).
        salient_focal: True: the rule lifts the fused value where the second image has focal uptake above its
            local background (``salient.focal_weight``, relative, scale-free) instead of above a fixed grey level:
            PET/SPECT, where a fixed level marks most of a normal brain under PET-Heat (issue 18).
    """

    name: str
    second_modality: str
    keep_colour: bool
    second_mapping: str
    default_colormap: str | None = None
    default_window: tuple[float, float] | None = None
    dicom_modalities: tuple[str, ...] = ()
    name_patterns: tuple[str, ...] = ()
    salient_threshold: float | None = None
    salient_dark: float | None = None
    salient_focal: bool = False
    anatomical_modality: str = "MRI"
    anatomical_mapping: str = "percentiles"
    image_check: str = "hot_kept"
    anatomical_dicom_modalities: tuple[str, ...] = ("MR",)

    def __post_init__(self):
        if self.second_mapping not in SECOND_MAPPINGS or self.anatomical_mapping not in ANATOMICAL_MAPPINGS:
            raise ValueError(f"task {self.name}: mappings must be one of {SECOND_MAPPINGS} (second image) and "
                             f"{ANATOMICAL_MAPPINGS} (anatomical image)")
        if self.image_check not in IMAGE_CHECKS:
            raise ValueError(f"task {self.name}: image_check must be one of {IMAGE_CHECKS}")
        if (self.second_mapping == "colormap") != (self.default_colormap is not None) or \
                (self.second_mapping == "window") != (self.default_window is not None):
            raise ValueError(f"task {self.name}: a 'colormap' mapping needs default_colormap, a 'window' mapping "
                             "default_window (and only they)")


def _word(*alternatives: str) -> str:
    """A pattern matching any of ``alternatives`` as a whole word (not inside a longer name)."""
    return rf"(^|[^a-z])({'|'.join(alternatives)})([^a-z]|$)"


# Order matters for name detection: the first task whose pattern matches wins.
TASK_SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("PET-MRI", "PET", keep_colour=True, second_mapping="colormap", default_colormap="PET-Heat",
             dicom_modalities=("PT",), name_patterns=(_word("pet", "pt", "fdg", "suv", "amyloid", "tau"),),
             salient_focal=True),  # focal uptake above its local background (a fixed level lifted 55 % of a head)
    TaskSpec("SPECT-MRI", "SPECT", keep_colour=True, second_mapping="colormap", default_colormap="PET-Rainbow2",
             dicom_modalities=("NM", "ST"),
             name_patterns=(_word("spect", "nm", "hmpao", "ecd", "datscan", "perfusion"),),
             salient_focal=True),
    # [-35, 115] HU: brain grey, bone saturated white, air black, like the AANLIB training CTs
    TaskSpec("CT-MRI", "CT", keep_colour=False, second_mapping="window", default_window=(150.0, 40.0),
             dicom_modalities=("CT",), name_patterns=(_word("ct", "cta", "hu"),),
             salient_threshold=128.0, salient_dark=30.0, image_check="bone_kept"),
)}
# (window, level) of the window-mapped second image (CT, in HU): the default of a CT window setting (Slicer panel).
WINDOW_DEFAULT = next(spec.default_window for spec in TASK_SPECS.values() if spec.second_mapping == "window")
DEFAULT_TASK = "PET-MRI"  # the demo's, the Slicer self-test's and the benchmarks' task (the phantom's PET)
TASK_NAMES = tuple(sorted(TASK_SPECS))  # "CT-MRI", "PET-MRI", "SPECT-MRI": the order shown to users
# Derived views, kept for the callers that only need one fact.
TASKS = {name: TASK_SPECS[name].second_modality for name in TASK_NAMES}  # task -> second modality (2D folder name)
FUNCTIONAL_TASKS = frozenset(name for name, spec in TASK_SPECS.items() if spec.keep_colour)


def check_task(task: str) -> str:
    """The canonical name of ``task`` (case-insensitive).

    Raises:
        ECFusionError: unknown task, naming the known ones.
    """
    for name in TASK_NAMES:
        if str(task).upper() == name.upper():
            return name
    raise ECFusionError(f"unknown task '{task}': use one of {', '.join(TASK_NAMES)}")


def task_spec(task: str | TaskSpec) -> TaskSpec:
    """The ``TaskSpec`` of ``task`` (a name, any case; a ``TaskSpec`` is returned as it is); ECFusionError if
    unknown. Front ends resolve the task once and pass the spec on."""
    return task if isinstance(task, TaskSpec) else TASK_SPECS[check_task(task)]


def second_modality(task: str) -> str:
    """The second image's modality of ``task``, e.g. "PET" for "PET-MRI"."""
    return task_spec(task).second_modality


def task_of_modality(modality: str) -> str:
    """The task whose second image has ``modality`` (e.g. "PET" -> the PET task); ECFusionError if none."""
    for spec in TASK_SPECS.values():
        if spec.second_modality.upper() == str(modality).upper():
            return spec.name
    raise ECFusionError(f"no task fuses a {modality} image: the second images are "
                        f"{', '.join(s.second_modality for s in TASK_SPECS.values())}")


def detect_task(dicom_modality: str | None = None, name: str | None = None) -> str | None:
    """The task whose second image this is, from its DICOM modality code, else from its name.

    Args:
        dicom_modality: DICOM Modality (0008,0060) of the second image, e.g. "PT"; None or "" if unknown.
        name: the image's name (node name, file name); matched case-insensitively against each task's
            ``name_patterns``, in ``TASK_SPECS`` order.
    Returns:
        The task name, or None when neither tells.
    """
    code = (dicom_modality or "").strip().upper()
    for spec in TASK_SPECS.values():
        if code and code in spec.dicom_modalities:
            return spec.name
    lowered = (name or "").lower()
    for spec in TASK_SPECS.values():
        if any(re.search(pattern, lowered) for pattern in spec.name_patterns):
            return spec.name
    return None


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``choices``, else ECFusionError naming them (``what``: e.g. "precision")."""
    if value not in choices:
        raise ECFusionError(f"unknown {what} '{value}': use one of {', '.join(choices)}")
    return value
