"""The ``fuse`` options, declared once: name, type, default, choices (from the task registry and the option
vocabularies), help. From this one table come the ``ecfusion fuse`` options (``add_fuse_options``), the batch
manifest's columns and its per-row value parsing (``manifest.py``), and ``fuse_files.FuseRequest``'s fields
(the option names are its field names).

    parser = argparse.ArgumentParser()
    add_fuse_options(parser)           # --anatomical ... --quiet, as `ecfusion fuse` has them
    columns = manifest_columns()       # {"window": "--window", ...}: the settings a manifest row may give

Also the argparse number types (finite, >= a bound) shared by every command. No torch, no SimpleITK at import.
"""
from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

from .colour import COLORMAPS
from .errors import ECFusionError
from .intensity import DEFAULT_CT_LEVEL, DEFAULT_CT_WINDOW
from .suv import PET_UNITS
from .tasks import AXES, BACKENDS, DEVICES, PRECISIONS, REGISTRATION_MODES, TASK_NAMES


def number(kind, low=None, strict=False):
    """An argparse type: ``kind`` (int/float), finite, and >= ``low`` (> ``low`` when ``strict``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole ' if kind is int else ''}number") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
        if low is not None and (value < low or (strict and value == low)):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {low:g}")
        return value
    parse.__name__ = f"{'positive ' if strict else ''}{kind.__name__}"
    return parse


POSITIVE_INT = number(int, 1)
COUNT = number(int, 0)
FINITE = number(float)
POSITIVE = number(float, 0, strict=True)
NONNEGATIVE = number(float, 0)
TASK_HELP = ", ".join(TASK_NAMES)


@dataclass(frozen=True)
class Option:
    """One ``fuse`` option.

    Attributes:
        name: its name: the argparse ``dest``, the ``FuseRequest`` field and the manifest column.
        help: the help text.
        type, default, choices, metavar, required: as for ``argparse.add_argument``.
        aliases: further option strings (the first string is ``--name`` with '-' for '_').
        switch_off: a flag that stores False (``--no-keep-salient``); ``flag`` is then its option string.
        flag: the option string when it is not ``--name``.
        column: may be set per row of a batch manifest (False: set once for the batch, or meaningless there).
        kind: int or float for a number option, else None.
        minimum, strict_minimum: a number option's lower bound (> instead of >= when strict), checked by its
            argparse type and by ``input_checks.check_numbers`` (``numeric`` builds both from these fields).
        panel_range: (low, high) a user interface's spin box offers and accepts (the Slicer panel; for
            batch_size 0 there means "automatic").
    """

    name: str
    help: str
    type: Callable | None = None
    default: Any = None
    choices: tuple | None = None
    metavar: str | None = None
    required: bool = False
    aliases: tuple[str, ...] = ()
    switch_off: bool = False
    flag: str | None = None
    column: bool = True
    kind: type | None = None
    minimum: float | None = None
    strict_minimum: bool = False
    panel_range: tuple[float, float] | None = None

    @property
    def option_string(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def numeric(name: str, help: str, kind: type, minimum: float | None = None, strict: bool = False,
            panel_range: tuple[float, float] | None = None) -> Option:
    """A number option whose argparse type checks the same bound that ``check_numbers`` and the Slicer panel read."""
    return Option(name, help, type=number(kind, minimum, strict), kind=kind, minimum=minimum, strict_minimum=strict,
                  panel_range=panel_range)


FUSE_OPTIONS: tuple[Option, ...] = (
    Option("anatomical", "MRI volume (NRRD, NIfTI, MHA, or DICOM: a folder or one file of the series); the output is "
                         "on its grid"),
    Option("functional", "CT, PET or SPECT volume (scalar, or RGB pseudocolour; or DICOM)"),
    Option("task", f"{TASK_HELP} (default for DICOM: from the functional series' Modality; 2D mode: taken from the "
                   "folder names)"),
    Option("anatomical_series", "the DICOM series to read when the folder holds several", metavar="UID"),
    Option("functional_series", "the DICOM series to read when the folder holds several", metavar="UID"),
    Option("pet_units", "suv: convert DICOM PET to body-weight SUV first (window/level then in SUV); default: as stored",
           default=PET_UNITS[0], choices=PET_UNITS),
    Option("input_dir", "2D mode: ROOT/<task>/{CT|PET|SPECT,MRI}/<name>.png", column=False),
    Option("output", "output volume (.nrrd, .nii.gz, .mha) or, in 2D mode, a folder", required=True, column=False),
    Option("device", "default: CUDA when available", default=DEVICES[0], choices=DEVICES, column=False),
    Option("precision", "auto (default): bf16 on GPUs and on CPUs with native bf16 (~1.7x faster, ~0.15 grey levels "
                        "from fp32 on average), else fp32", default=PRECISIONS[0], choices=PRECISIONS),
    numeric("batch_size", "slices per batch (default: about 256k pixels per batch on CPU, fitted to free memory on "
                          "CUDA)", int, 1, panel_range=(0, 256)),
    Option("axis", "slice direction (default: auto, the axis closest to superior-inferior)", default=AXES[0],
           choices=AXES),
    Option("colormap", f"PET/SPECT colour map: {', '.join(COLORMAPS)}, or a 256x3 table file (default: PET-Heat for "
                       "PET, PET-Rainbow2 for SPECT)"),
    numeric("window", "PET/SPECT display window, > 0 (default: the normal tissue at the colour map's luminance knee)", float, 0, strict=True),
    numeric("level", "PET/SPECT display level", float),
    numeric("ct_window", f"CT window in HU, > 0 (default {DEFAULT_CT_WINDOW:g})", float, 0, strict=True,
            panel_range=(1.0, 10000.0)),
    numeric("ct_level", f"CT level in HU (default {DEFAULT_CT_LEVEL:g})", float, panel_range=(-2000.0, 5000.0)),
    Option("weights", "weights file, .npz (or .pt with torch >= 2.6) (default: the task's bundled model)"),
    Option("model", "a bundled model by name, e.g. ecfusion-v1.pet-mri (see 'ecfusion models'; default: the task's "
                    "default model); sets the task when --task is not given"),
    Option("backend", "inference backend (default auto: onnxruntime on the CPU, torch for a GPU or --precision bf16; "
                      "whichever is installed)",
           default=BACKENDS[0], choices=BACKENDS, column=False),
    Option("register", "register the functional volume onto the MRI first (mutual information; default none)",
           default=REGISTRATION_MODES[0], choices=REGISTRATION_MODES),
    Option("transform", "an ITK transform file (MRI space -> functional space, e.g. from 'ecfusion register') "
                        "applied before fusion"),
    Option("keep_salient", "do not apply the rule that keeps the CT bone / the hottest PET-SPECT uptake at least as "
                           "bright as in the source (salient.py; on by default)", default=True, switch_off=True,
           flag="--no-keep-salient", column=False),
    Option("quiet", "no progress bar", default=False, column=False),
)
OPTIONS_BY_NAME = {o.name: o for o in FUSE_OPTIONS}
NUMBER_OPTIONS = tuple(o.name for o in FUSE_OPTIONS if o.kind is not None)  # batch_size, window, level, ct_*


def check_number(name: str, value, *, panel: bool = False, label: str | None = None):
    """``value`` checked against the ``fuse`` option ``name``: a finite number, whole for an int option, and
    within the option's bound (``panel``: within its ``panel_range``, what a user interface offers).

    Args:
        name: an option name of ``NUMBER_OPTIONS``, e.g. "ct_window".
        value: a number, or its text (a Slicer parameter node stores text).
        label: the name in the message (default: the option name with spaces, "CT" upper-case).
    Returns:
        The value as int or float.
    Raises:
        ECFusionError naming ``label``.
    """
    option = OPTIONS_BY_NAME[name]
    label = label or option.name.replace("_", " ").replace("ct ", "CT ")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ECFusionError(f"{label} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ECFusionError(f"{label} must be a finite number, got {value!r}")
    if option.kind is int and (x != int(x) or not (panel or isinstance(value, numbers.Integral))):
        raise ECFusionError(f"{label} must be a whole number, got {value!r}")
    if panel and option.panel_range is not None:
        low, high = option.panel_range
        if not low <= x <= high:
            raise ECFusionError(f"{label} must be between {low:g} and {high:g}, got {x:g}")
    elif option.minimum is not None and (x < option.minimum or (option.strict_minimum and x == option.minimum)):
        raise ECFusionError(f"{label} must be {'>' if option.strict_minimum else '>='} {option.minimum:g}, got {x:g}")
    return int(x) if option.kind is int else x


def add_fuse_options(parser: argparse.ArgumentParser) -> None:
    """Add every ``FUSE_OPTIONS`` entry to ``parser`` (``ecfusion fuse``, or a manifest row's parser)."""
    for o in FUSE_OPTIONS:
        add_option(parser, o)


def add_option(parser: argparse.ArgumentParser, o: Option) -> None:
    """Add one option to ``parser`` as its entry declares it (also for a script offering some of them)."""
    strings = [o.option_string, *o.aliases]
    if o.switch_off or o.default is False:
        parser.add_argument(*strings, dest=o.name, action="store_false" if o.switch_off else "store_true", help=o.help)
        return
    kwargs = {k: v for k, v in dict(type=o.type, choices=o.choices, metavar=o.metavar).items() if v is not None}
    parser.add_argument(*strings, dest=o.name, default=o.default, required=o.required, help=o.help, **kwargs)


def manifest_columns() -> dict[str, str]:
    """{column name: option string} of the settings a batch manifest row may give (valued options only)."""
    return {o.name: o.option_string for o in FUSE_OPTIONS if o.column}
