#!/usr/bin/env python3
"""Fuse two volume files through the ECFusionSlicer logic, headless.

Inside Slicer:   Slicer --no-splash --no-main-window --python-script scripts/slicer_batch_fuse.py \\
                     --anatomical A.nrrd --functional B.nrrd --output fused.nrrd [--task PET-MRI]
Plain Python:    python scripts/slicer_batch_fuse.py --anatomical A.nrrd --functional B.nrrd --output fused.nrrd
                 (needs `pip install slicer-core`; the same MRML logic runs without the application)

Help: --usage (inside Slicer, -h/--help are Slicer's own options and print Slicer's help).
Scalar PET/SPECT volumes are coloured with --colormap (default PET-Heat for PET, PET-Rainbow2 for SPECT)
and --window/--level (default: the robust range ECFusionLib uses), like `ecfusion fuse`.
Exit codes: 0 success, 2 bad input, 3 weights problem, 130 cancelled (Ctrl-C), 1 unexpected error (with its
traceback). Inside Slicer the script always ends the application with that code (Slicer does not exit by itself
after --python-script), also after an unexpected error.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "ECFusionSlicer"):  # a source checkout: find ECFusionLib and ECFusionSlicerLib
    if (extra / ("ECFusionLib" if extra == ROOT else "ECFusionSlicerLib")).is_dir() and str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

PROG = "slicer_batch_fuse"


class UsageError(Exception):
    """Bad command-line arguments (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would sys.exit(2): inside Slicer that must go through slicer.util.exit
        raise UsageError(f"{message} (--usage for help)")


# The ``ecfusion fuse`` options this script offers (ECFusionLib.options declares their types, choices and defaults),
# with the help texts where the meaning differs here.
SCRIPT_OPTIONS = ("anatomical", "functional", "output", "task", "device", "precision", "backend", "colormap", "window",
                  "level", "weights", "keep_salient")
SCRIPT_HELP = {"anatomical": "MRI volume file", "functional": "CT, PET or SPECT volume file",
               "output": "fused volume file (.nrrd, .nii.gz, .mha); never one of the inputs",
               "colormap": "colour node for a scalar PET/SPECT: PET-Heat, PET-Rainbow2, ... or Grey (default: the "
                           "task's colour map)",
               "weights": "weights file (default: bundled)"}


def build_parser() -> argparse.ArgumentParser:
    import dataclasses

    from ECFusionLib.options import OPTIONS_BY_NAME, TASK_HELP, add_option  # here: main() reports a broken installation

    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    p.add_argument("--usage", action="store_true", help="print this help and exit")
    helps = {**SCRIPT_HELP, "task": f"{TASK_HELP} (default: detected from the DICOM modality or the file name)"}
    for name in SCRIPT_OPTIONS:  # required ones are checked by parse_args (--usage needs none)
        option = OPTIONS_BY_NAME[name]
        add_option(p, dataclasses.replace(option, required=False, help=helps.get(name, option.help)))
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if not args.usage:
        missing = [f"--{name}" for name in ("anatomical", "functional", "output") if not getattr(args, name)]
        if missing:
            raise UsageError(f"the following arguments are required: {', '.join(missing)} (--usage for help)")
    return args


def in_slicer_app() -> bool:
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "app") and hasattr(slicer, "mrmlScene")


def colour_node_id(scene, name: str | None, spec) -> str:
    """ID of the colour node for a scalar PET/SPECT: a PET colour node (created if missing) or any colour node of
    the scene by name (Grey, ...; default: the ``TaskSpec``'s colour map); an unknown name is an ECFusionError
    listing the choices."""
    from ECFusionLib.errors import ECFusionError
    from ECFusionSlicerLib import mrml_volumes as mv

    name = name or spec.default_colormap
    node = scene.GetFirstNodeByName(name)
    if node is not None and node.IsA("vtkMRMLColorNode"):
        return node.GetID()
    try:
        return mv.pet_colour_node(scene, name).GetID()
    except ValueError:
        pet = sorted(mv.PET_COLOUR_TYPES)
        raise ECFusionError(f"unknown --colormap '{name}': use one of {', '.join(pet)}, or the name of a Slicer "
                            "colour node such as Grey") from None


def run(args) -> int:
    import slicer

    from ECFusionLib.safe_files import refuse_overwriting_inputs
    from ECFusionLib.volume_io import check_writable, read_image
    from ECFusionSlicerLib import mrml_volumes as mv
    from ECFusionSlicerLib.logic import ECFusionSlicerLogic
    from ECFusionSlicerLib.parameters import ProcessSettings

    refuse_overwriting_inputs(args.output, [args.anatomical, args.functional], what="--output")
    check_writable(args.output)
    read_image(args.anatomical, what="anatomical image")  # the same checks and messages as `ecfusion fuse`
    read_image(args.functional, allow_rgb=True, what="functional image")
    scene = slicer.mrmlScene if in_slicer_app() else mv.new_scene()
    volumes = mv.volumes_logic(scene)  # the application's Volumes logic in Slicer: no "invalid Colors module logic"
    anatomical = volumes.AddArchetypeVolume(args.anatomical, Path(args.anatomical).name.split(".")[0])
    functional = volumes.AddArchetypeVolume(args.functional, Path(args.functional).name.split(".")[0])
    logic = ECFusionSlicerLogic(scene)
    spec = logic.taskSpec(functional, args.task)  # resolved once: the spec travels from here
    color_id, window, level = None, args.window, args.level
    if spec.keep_colour and functional.GetImageData().GetNumberOfScalarComponents() == 1:
        from ECFusionLib.fusion import default_window_level

        color_id = colour_node_id(scene, args.colormap, spec)
        table = mv.colour_table(scene.GetNodeByID(color_id))
        window, level = default_window_level(mv.array_from_volume(functional), window, level, table)
    last = [-1]

    def progress(done, total):
        pct = int(100 * done / max(total, 1))
        if pct // 10 != last[0]:
            last[0] = pct // 10
            print(f"fusing {spec.name}: slice {done}/{total}", flush=True)

    settings = ProcessSettings(task=spec.name, device=args.device, precision=args.precision, color_node_id=color_id,
                               window=window, level=level, weights=args.weights, keep_salient=args.keep_salient,
                               backend=args.backend)
    out = logic.process(anatomical, functional, settings=settings, progressCallback=progress)
    save_atomic(out, args.output)
    print(f"wrote {args.output}")
    return 0


def save_atomic(node, path: str) -> None:
    """Write through Slicer's own storage node to a temporary name beside ``path``, then rename it into place
    (ECFusionLib.safe_files.atomic_write: nothing half-written is ever left under ``path``)."""
    from ECFusionLib.safe_files import atomic_write

    def write(tmp: str) -> None:
        storage = node.CreateDefaultStorageNode()
        storage.SetFileName(tmp)
        if not storage.WriteData(node):
            raise OSError(f"Slicer could not write {path}")

    atomic_write(path, write)


def main(argv=None) -> int:
    """Run and return the exit code; never raises (the caller must end the process with the code)."""
    try:
        from ECFusionLib.errors import ECFusionError
    except BaseException:  # noqa: BLE001 - a broken installation is an unexpected error too
        traceback.print_exc()
        return 1
    try:
        args = parse_args(argv)
        if args.usage:
            build_parser().print_help()
            return 0
        return run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ECFusionError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: cancelled; nothing was written", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001 - report it, and still end with a code (never leave Slicer running)
        if isinstance(exc, ModuleNotFoundError) and exc.name in ("torch", "slicer", "vtk", "SimpleITK"):
            where = "the PyTorch extension (Extensions Manager)" if in_slicer_app() else f"pip install {exc.name}"
            print(f"{PROG}: error: the Python package '{exc.name}' is not installed: install it with {where}",
                  file=sys.stderr)
            return 2
        print(f"{PROG}: unexpected error (please report it with the traceback below):", file=sys.stderr)
        traceback.print_exc()
        return 1


def finish(code: int) -> None:
    """End the process with ``code``: through slicer.util.exit inside the Slicer application (which does not exit
    by itself after --python-script; Base/Python/slicer/util.py exit() sets runPythonAndExit off and calls
    app.exit, which takes effect when control returns to the event loop), else sys.exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    if in_slicer_app():
        import slicer

        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    exit_code = 1
    try:
        exit_code = main(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C between main's own handlers
        print(f"{PROG}: cancelled; nothing was written", file=sys.stderr)
        exit_code = 130
    finally:
        finish(exit_code)
