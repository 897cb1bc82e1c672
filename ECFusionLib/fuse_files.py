"""One fusion from files to a file: read and validate the inputs (volume files or DICOM series), settle the
task (given, or from the DICOM Modality), convert PET units, register, fuse, write the output with its
provenance. ``ecfusion fuse`` and every row of ``ecfusion batch`` run ``fuse_files`` (one path).

    outcome = fuse_files(FuseRequest(anatomical="MRI/", functional="PET/", output="fused.nrrd"))
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from . import __version__
from .dicom import SeriesInfo, find_series, is_dicom, read_series
from .errors import ECFusionError
from .file_kind import not_a_regular_file
from .input_checks import check_numbers, input_warnings, refuse_same_input, refuse_same_series
from .modality import image_modality, resolve_task
from .safe_files import refuse_overwriting_inputs, sha256_files
from .suv import PET_UNITS, suv_factor
from .tasks import TaskSpec, check_task, task_spec
from .volume_io import (check_image, check_output_dimension, check_writable, full_suffix, read_image, sidecar_path,
                        write_image_atomic)

Notify = Callable[[str], None]
log = logging.getLogger(__name__)
# request fields that do not change the output: where the data lie and how fast it runs (the weights are
# compared by their SHA-256 instead of their path or model name; the backends agree within a grey level)
NOT_SETTINGS = ("anatomical", "functional", "output", "device", "batch_size", "weights", "model", "backend")


@dataclass
class FuseRequest:
    """What to fuse and how: the options of ``ecfusion fuse``, which are also the batch manifest's columns.

    Inputs are volume files (NRRD, NIfTI, MHA) or DICOM (a folder, or one file of a series); ``task`` None:
    from the functional input's DICOM Modality. Windows/levels are in the image's units (HU for CT; the
    PET's units, or SUV with ``pet_units="suv"``).
    """

    anatomical: str
    functional: str
    output: str
    task: str | None = None
    anatomical_series: str | None = None
    functional_series: str | None = None
    pet_units: str = "native"
    register: str = "none"
    transform: str | None = None
    colormap: str | None = None
    window: float | None = None
    level: float | None = None
    ct_window: float | None = None
    ct_level: float | None = None
    axis: str = "auto"
    precision: str = "auto"
    keep_salient: bool = True  # salient.py: keep the CT bone / the hottest uptake after the network
    weights: str | None = None
    model: str | None = None  # a bundled model by name (``weights.models``); sets the task when none is given
    backend: str = "auto"  # backends.BACKENDS
    device: str = "auto"
    batch_size: int | None = None

    @classmethod
    def from_args(cls, args) -> "FuseRequest":
        """From an ``argparse`` namespace of the ``fuse`` options."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


@dataclass
class InputVolume:
    """A read and validated input: the image and where it came from (path, files' SHA-256, DICOM series)."""

    image: sitk.Image
    provenance: dict
    series: SeriesInfo | None = None

    @property
    def modality(self) -> str | None:
        return (self.series.modality if self.series else None) or image_modality(self.image)


@dataclass
class FuseOutcome:
    output: Path
    task: str
    metadata: dict
    image: sitk.Image
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0  # reading to writing, registration included


def _volume_files(path: Path) -> list[Path]:
    """A volume file, plus the data file a detached header (.nhdr, .mhd) names."""
    suffix = full_suffix(path)
    if suffix in (".nhdr", ".mhd"):
        sep = ":" if suffix == ".nhdr" else "="
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(sep)
            data = path.parent / value.strip()
            if key.strip().lower() in ("data file", "datafile", "elementdatafile") and value.strip() and data.is_file():
                return [path, data]
    return [path]


def _series_option(what: str) -> str:
    return f"--{what.split()[0]}-series"


def input_files(path: str | Path, series_uid: str | None, what: str) -> tuple[list, SeriesInfo | None, str | None]:
    """The files an input is read from: (files, DICOM series or None, note for the user or None)."""
    path = Path(path)
    if is_dicom(path):
        series, note = find_series(path, series_uid, what=what, choose_with=_series_option(what))
        return series.files, series, note
    if series_uid:
        raise ECFusionError(f"{_series_option(what)} chooses a DICOM series, but the {what} {path} is not DICOM")
    if not path.is_file():
        raise not_a_regular_file(path, what) or ECFusionError(f"{what} file not found: {path}")
    return _volume_files(path), None, None


def read_input(path: str | Path, series_uid: str | None = None, *, what: str, allow_rgb: bool = False,
               notify: Notify | None = None) -> InputVolume:
    """Read and validate one input (``volume_io.check_image``'s checks; DICOM geometry checks)."""
    files, series, note = input_files(path, series_uid, what)
    if note and notify:
        notify(note)
    if series is not None:
        image = read_series(series, what)
        check_image(image, f"{what} {path}", allow_rgb=allow_rgb)
    else:
        image = read_image(path, allow_rgb=allow_rgb, what=what)
    prov = {"path": str(path), "sha256": sha256_files(files)}
    if series is not None:
        prov["dicom"] = series.provenance()
    return InputVolume(image, prov, series)


def output_settings(request: FuseRequest) -> dict:
    """The settings the output depends on (besides inputs and weights), as recorded in its provenance."""
    settings = {k: v for k, v in asdict(request).items() if k not in NOT_SETTINGS}
    if request.transform:
        settings["transform"] = sha256_files([request.transform]) if Path(request.transform).is_file() else request.transform
    settings["version"] = __version__
    return settings


def job_record(request: FuseRequest, anatomical_sha256: str, functional_sha256: str) -> dict:
    """What an output was made from: inputs' and settings' SHA-256 (re-runs of a batch compare it)."""
    settings = output_settings(request)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"anatomical_sha256": anatomical_sha256, "functional_sha256": functional_sha256,
            "settings_sha256": digest, "settings": settings}


def current_job(request: FuseRequest) -> dict:
    """``job_record`` of the inputs as they are now on disk (without reading the images)."""
    shas = [sha256_files(input_files(p, uid, what)[0]) for p, uid, what in (
        (request.anatomical, request.anatomical_series, "anatomical image"),
        (request.functional, request.functional_series, "functional image"))]
    return job_record(request, *shas)


def recorded_metadata(output: str | Path) -> dict | None:
    """The provenance an ECFusion output carries (NRRD/MHA header keys, or the .json beside a NIfTI), or None."""
    from .fusion import METADATA_PREFIX

    output = Path(output)
    side = sidecar_path(output)
    if side is not None:
        try:
            return json.loads(side.read_text()) if output.is_file() and side.is_file() else None
        except (OSError, ValueError):
            return None
    if not output.is_file():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(output))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    meta = {}
    for key in reader.GetMetaDataKeys():
        if key.startswith(METADATA_PREFIX):
            value = reader.GetMetaData(key)
            try:
                meta[key[len(METADATA_PREFIX):]] = json.loads(value)
            except ValueError:
                meta[key[len(METADATA_PREFIX):]] = value
    return meta or None


def _pet_units(request: FuseRequest, spec: TaskSpec, second: InputVolume) -> dict:
    """Convert the functional image to the requested units (in place); returns the units record."""
    if request.pet_units not in PET_UNITS:
        raise ECFusionError(f"unknown PET units '{request.pet_units}': use one of {', '.join(PET_UNITS)}")
    native = {"units": (second.series.units if second.series else "") or "as stored"}
    if request.pet_units == "native":
        return native
    if spec.second_modality != "PET":
        raise ECFusionError(f"--pet-units suv is for PET, not the {spec.second_modality} of {spec.name}")
    if second.series is None:
        raise ECFusionError(f"--pet-units suv needs the PET as DICOM (its dose, weight and time tags); "
                            f"{second.provenance['path']} is not DICOM")
    units = suv_factor(second.series.files[0])
    if second.image.GetNumberOfComponentsPerPixel() != 1:
        raise ECFusionError("--pet-units suv needs a scalar PET image, not an RGB one")
    scaled = sitk.Cast(second.image, sitk.sitkFloat32) * units["factor"]
    for key in second.image.GetMetaDataKeys():
        scaled.SetMetaData(key, second.image.GetMetaData(key))
    second.image = scaled
    return units


def registration_transform(request: FuseRequest, anatomical: sitk.Image, second: sitk.Image,
                           status: Notify | None = None):
    """The transform given by ``request.transform``, or computed by ``request.register``, or None."""
    if request.transform and request.register != "none":
        raise ECFusionError("use either --transform FILE or --register, not both")
    if request.transform:
        try:
            return sitk.ReadTransform(str(request.transform))
        except RuntimeError as exc:
            raise ECFusionError(f"cannot read transform {request.transform}: use an ITK transform file (.tfm, .txt, .h5)") from exc
    if request.register == "none":
        return None
    from .registration import register

    report = (lambda m: status(f"registering ({request.register}): {m}")) if status else (lambda m: None)
    report("started")
    return register(anatomical, second, request.register, progress=report)


@contextmanager
def _collect_warnings(into: list[str]):
    """Every warning the library logs meanwhile (this module's, fusion's misalignment, ...) also goes ``into``."""
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            into.append(record.getMessage())

    lib, handler = logging.getLogger("ECFusionLib"), Collect(logging.WARNING)
    lib.addHandler(handler)
    try:
        yield
    finally:
        lib.removeHandler(handler)


def fuse_files(request: FuseRequest, *, load_model: Callable | None = None, progress=None, cancel=None,
               status: Notify | None = None) -> FuseOutcome:
    """Read, check, fuse and write one pair (see the module docstring); the inputs are never modified.

    load_model(task, weights, model, backend, device) -> (network, info): default ``backends.load_network``
    (a batch worker passes its cache). Warnings and notes for the user go to the "ECFusionLib" logger (the command line prints them) and
    into the outcome's ``warnings``; status: called with progress messages.
    """
    warnings: list[str] = []
    with _collect_warnings(warnings):
        outcome = _fuse_files(request, load_model, progress, cancel, status)
    outcome.warnings = warnings
    return outcome


def _fuse_files(request, load_model, progress, cancel, status) -> FuseOutcome:
    from .fusion import METADATA_PREFIX, PHASES, FusionSettings, fuse_images
    from .registration import transform_provenance
    from .backends import load_network, resolve_backend
    from .weights import task_of_model

    load_model = load_model or load_network
    t0 = time.perf_counter()
    check_numbers(batch_size=request.batch_size, window=request.window, level=request.level,
                  ct_window=request.ct_window, ct_level=request.ct_level)
    inputs = [request.anatomical, request.functional, request.transform, request.weights]
    refuse_same_input(request.anatomical, request.functional)
    refuse_overwriting_inputs(request.output, inputs)
    if sidecar_path(request.output) is not None:
        refuse_overwriting_inputs(sidecar_path(request.output), inputs, what="metadata file (sidecar)")
    output = check_writable(request.output)
    model = info = None
    backend = resolve_backend(request.backend, request.device, request.precision)
    given_task = request.task or (task_of_model(request.model) if request.model else None)
    if given_task:  # fail early on an unknown task or bad weights, before reading anything
        model, info = load_model(check_task(given_task), request.weights, request.model, backend, request.device)
    anatomical = read_input(request.anatomical, request.anatomical_series, what="anatomical image", notify=log.warning)
    check_output_dimension(anatomical.image, output)
    second = read_input(request.functional, request.functional_series, what="functional image", allow_rgb=True,
                        notify=log.warning)
    refuse_same_series(anatomical.series, second.series)
    spec = task_spec(resolve_task(given_task, second.modality))  # resolved once; input_warnings checks the labels
    task = spec.name
    if model is None:
        model, info = load_model(task, request.weights, request.model, backend, request.device)
    units = _pet_units(request, spec, second)
    given = request.ct_window is not None or request.ct_level is not None
    for warning in input_warnings(spec, anatomical.image, second.image, ct_window_given=given):
        log.warning(warning)
    transform = registration_transform(request, anatomical.image, second.image, status)
    PHASES.debug("read")
    settings = FusionSettings(task=task, device=request.device, batch_size=request.batch_size, axis=request.axis,
                              precision=request.precision, colormap=request.colormap, window=request.window,
                              level=request.level, ct_window=request.ct_window, ct_level=request.ct_level,
                              weights=request.weights, model=request.model, backend=request.backend,
                              keep_salient=request.keep_salient)
    result = fuse_images(anatomical.image, second.image, settings, model=model, weights_info=info,
                         progress=progress, cancel=cancel, transform=transform,
                         registered=transform is not None and request.register != "none")
    mode = request.register if request.register != "none" else (f"file {request.transform}" if request.transform else "none")
    extra = {"registration": transform_provenance(transform, mode),
             "inputs": {"anatomical": anatomical.provenance, "functional": second.provenance},
             "functional_units": units,
             "job": job_record(request, anatomical.provenance["sha256"], second.provenance["sha256"])}
    for key, value in extra.items():
        result.image.SetMetaData(METADATA_PREFIX + key, json.dumps(value))
    result.metadata.update(extra)
    write_image_atomic(result.image, output, sidecar=result.metadata)
    PHASES.debug("write")
    return FuseOutcome(output, task, result.metadata, result.image, seconds=time.perf_counter() - t0)
