#!/usr/bin/env python3
"""Fuse two volume files through the ECFusionSlicer logic, headless.

Inside Slicer:   Slicer --no-splash --no-main-window --python-script scripts/slicer_batch_fuse.py \\
                     --anatomical A.nrrd --functional B.nrrd --output fused.nrrd [--task PET-MRI]
Plain Python:    python scripts/slicer_batch_fuse.py --anatomical A.nrrd --functional B.nrrd --output fused.nrrd
                 (needs `pip install slicer-core`; the same MRML logic runs without the application)

Scalar PET/SPECT volumes are coloured with --colormap (default PET-Heat for PET, PET-Rainbow2 for SPECT)
and --window/--level (default: the robust range ECFusionLib uses), like `ecfusion fuse`.
Exit codes: 0 success, 2 bad input, 3 weights problem, 130 cancelled, 1 unexpected error.
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "ECFusionSlicer"):  # a source checkout: find ECFusionLib and ECFusionSlicerLib
    if (extra / ("ECFusionLib" if extra == ROOT else "ECFusionSlicerLib")).is_dir() and str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anatomical", required=True, help="MRI volume file")
    p.add_argument("--functional", required=True, help="CT, PET or SPECT volume file")
    p.add_argument("--output", required=True, help="fused volume file (.nrrd, .nii.gz, .mha)")
    p.add_argument("--task", help="CT-MRI, PET-MRI or SPECT-MRI (default: detected from the file name)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--colormap", help="PET colour node name, e.g. PET-Heat, PET-Rainbow2, Grey")
    p.add_argument("--window", type=float)
    p.add_argument("--level", type=float)
    p.add_argument("--weights", help="weights file (default: bundled)")
    return p.parse_args(argv)


def in_slicer_app() -> bool:
    import slicer

    return hasattr(slicer, "app") and hasattr(slicer, "mrmlScene")


def run(args) -> int:
    import slicer

    from ECFusionLib.colour import DEFAULT_COLORMAP
    from ECFusionLib.fusion import default_window_level
    from ECFusionLib.tasks import check_task, second_modality
    from ECFusionLib.volume_io import check_writable, read_image
    from ECFusionSlicerLib import mrml_volumes as mv
    from ECFusionSlicerLib.logic import ECFusionSlicerLogic

    check_writable(args.output)
    read_image(args.anatomical, what="anatomical image")  # the same checks and messages as `ecfusion fuse`
    read_image(args.functional, allow_rgb=True, what="functional image")
    scene = slicer.mrmlScene if in_slicer_app() else mv.new_scene()
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    anatomical = volumes.AddArchetypeVolume(args.anatomical, Path(args.anatomical).name.split(".")[0])
    functional = volumes.AddArchetypeVolume(args.functional, Path(args.functional).name.split(".")[0])
    logic = ECFusionSlicerLogic(scene)
    task = check_task(args.task) if args.task else logic.detectTask(functional)
    color_id, window, level = None, args.window, args.level
    if task != "CT-MRI" and functional.GetImageData().GetNumberOfScalarComponents() == 1:
        color_id = mv.pet_colour_node(scene, args.colormap or DEFAULT_COLORMAP[second_modality(task)]).GetID() \
            if (args.colormap or "PET").startswith("PET") else scene.GetFirstNodeByName(args.colormap).GetID()
        window, level = default_window_level(mv.array_from_volume(functional), window, level)
    last = [-1]

    def progress(done, total):
        pct = int(100 * done / max(total, 1))
        if pct // 10 != last[0]:
            last[0] = pct // 10
            print(f"fusing {task}: slice {done}/{total}", flush=True)

    out = logic.process(anatomical, functional, task=task, device=args.device, colorNodeID=color_id, window=window,
                        level=level, weightsPath=args.weights, progressCallback=progress)
    save_atomic(out, args.output)
    print(f"wrote {args.output}")
    return 0


def save_atomic(node, path: str) -> None:
    """Write through Slicer's own storage node to a temporary name, then rename into place."""
    from ECFusionLib.volume_io import full_suffix

    target = Path(path)
    tmp = str(target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial{full_suffix(target)}"))
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(tmp)
    try:
        if not storage.WriteData(node):
            raise OSError(f"Slicer could not write {path}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ECFusionLib.errors import ECFusionError

    try:
        return run(args)
    except ECFusionError as exc:
        print(f"slicer_batch_fuse: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    try:
        import slicer

        if in_slicer_app():
            slicer.util.exit(code)
    except ImportError:
        pass
    sys.exit(code)
