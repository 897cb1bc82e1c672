"""Run a Slicer Python console snippet (the README's) in a Slicer-like Python; used as a subprocess by
Testing/test_readme_examples.py.

    python Testing/readme_slicer_console.py ../shared/slicer-source/<release> SNIPPET.py

Slicer's own ``slicer.util`` at that release with slicer-core's MRML (Testing/slicer_app_fakes.py), a scene with
Slicer's default colour nodes holding the small phantom as the volumes ``T1``, ``PET`` (shown with PET-Heat) and
``CT``, each on its own grid, as a user would have loaded them; then the snippet runs with ``slicer`` imported, as
in Slicer's console. Prints what the snippet prints, then ``RESULT {json}``: for each volume the snippet made (in
scene order) its class, dimensions and the colour node its fusion used ("" for CT-MRI).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "ECFusionSlicer"), str(HERE.parent)]

import slicer_app_fakes  # noqa: E402


def add_phantom(scene) -> None:
    """The small phantom (MRI 40 x 48 x 40 at 4.5 mm) as volumes T1, PET and CT, each on its own grid (LPS -> RAS)."""
    import SimpleITK as sitk
    from slicer_helpers import add_volume, ijk2ras

    from ECFusionLib.phantom import make_phantom

    head = make_phantom(size=(40, 48, 40), seed=3, spacing=4.5)
    for key, name in (("MRI", "T1"), ("PET", "PET"), ("CT", "CT")):
        img = head[key]
        (sx, sy, sz), (ox, oy, oz) = img.GetSpacing(), img.GetOrigin()
        node = add_volume(scene, sitk.GetArrayFromImage(img), ijk2ras([-sx, -sy, sz], [-ox, -oy, oz]), name)
        if key == "PET":
            node.GetDisplayNode().SetAndObserveColorNodeID(scene.GetFirstNodeByName("PET-Heat").GetID())


def main(argv: list[str]) -> int:
    slicer = slicer_app_fakes.install(Path(argv[1]))
    from ECFusionSlicerLib import mrml_volumes as mv

    slicer.mrmlScene = mv.new_scene()
    slicer.app.testing = True
    add_phantom(slicer.mrmlScene)
    namespace = {"__name__": "__main__", "slicer": slicer}
    exec(compile(Path(argv[2]).read_text(encoding="utf-8"), argv[2], "exec"), namespace)
    scene, made = slicer.mrmlScene, []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if node.GetAttribute("ECFusion.task"):
            display = json.loads(node.GetAttribute("ECFusion.functional_display") or "{}")
            made.append({"class": node.GetClassName(), "dimensions": list(node.GetImageData().GetDimensions()),
                         "colorNode": display.get("colorNode", "")})
    print("RESULT " + json.dumps(made))
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv))
