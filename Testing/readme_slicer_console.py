"""Run a Slicer Python console snippet (the README's) in a Slicer-like Python; used as a subprocess by
Testing/test_readme_examples.py.

    python Testing/readme_slicer_console.py ../shared/slicer-source/<release> SNIPPET.py

Slicer's own ``slicer.util`` at that release with slicer-core's MRML (Testing/slicer_app_fakes.py), a scene with
Slicer's default colour nodes holding the small phantom as the volumes ``T1`` and ``PET`` (PET shown with
PET-Heat), as a user would have loaded them; then the snippet runs with ``slicer`` imported, as in Slicer's
console. Prints what the snippet prints, then ``RESULT {json}``: the class and dimensions of the snippet's
``fused`` node, the number of volumes in the scene and the colour map its last fusion used.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "ECFusionSlicer"), str(HERE.parent)]

import slicer_app_fakes  # noqa: E402


def main(argv: list[str]) -> int:
    slicer = slicer_app_fakes.install(Path(argv[1]))
    from ECFusionSlicerLib import mrml_volumes as mv
    from slicer_widget_driver import add_phantom

    slicer.mrmlScene = mv.new_scene()
    slicer.app.testing = True
    for node, name in zip(add_phantom(slicer.mrmlScene), ("T1", "PET")):
        node.SetName(name)
    namespace = {"__name__": "__main__", "slicer": slicer}
    exec(compile(Path(argv[2]).read_text(encoding="utf-8"), argv[2], "exec"), namespace)
    fused = namespace["fused"]
    display = json.loads(fused.GetAttribute("ECFusion.functional_display") or "{}")
    result = {"class": fused.GetClassName(), "dimensions": list(fused.GetImageData().GetDimensions()),
              "volumes": slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"),
              "colormap": display.get("colorNode")}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
