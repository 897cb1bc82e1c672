"""Render what Slicer's slice views show for an ECFusion run, without the Slicer application.

    python scripts/render_slicer_views.py [--output docs/figures/slicer_views_pet-mri_phantom.png] [--size 91 109 91]

Builds a scene with the generated head phantom (MRI and PET, the PET displayed with PET-Heat, as a user would
load them), fuses them with the module's own logic (ECFusionSlicerLib.logic.ECFusionSlicerLogic, bundled
weights, CPU), and renders three axial slice views - MRI, PET, fused - through Slicer's own slice pipeline
(``vtkMRMLSliceLogic`` of the slicer-core wheel: reslicing, window/level, colour node, RGB display), side by
side in one PNG. It is not a screenshot of the Slicer application or of the module panel: no Slicer
application runs on these machines and the Qt of the tests draws nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "ECFusionSlicer"), str(ROOT / "Testing")]


def slice_view(scene, app_logic, volume, size=(256, 256)):
    """RGB (h x w x 3 uint8) of an axial slice view showing ``volume`` as Slicer's Red view would (fit to it)."""
    import slicer
    from vtk.util import numpy_support

    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")  # a copy of the scene's default slice node (presets)
    node.SetLayoutName(f"View{volume.GetID()}")
    node.SetOrientationToAxial()
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(node)
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
    node.SetDimensions(size[0], size[1], 1)
    logic.FitSliceToAll()
    conn = logic.GetImageDataConnection()
    conn.GetProducer().Update()
    img = conn.GetProducer().GetOutputDataObject(conn.GetIndex())
    w, h, _ = img.GetDimensions()
    rgba = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.ascontiguousarray(rgba[::-1, :, :3])  # VTK rows run bottom-up


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default=str(ROOT / "docs" / "figures" / "slicer_views_pet-mri_phantom.png"))
    ap.add_argument("--size", type=int, nargs=3, default=(91, 109, 91), help="phantom voxels (x y z), 2 mm")
    args = ap.parse_args(argv)

    import SimpleITK as sitk
    from slicer_helpers import add_volume, ijk2ras

    from ECFusionLib.phantom import make_phantom
    from ECFusionSlicerLib import mrml_volumes as mv
    from ECFusionSlicerLib.logic import ECFusionSlicerLogic

    import slicer

    scene = mv.new_scene()
    scene.AddDefaultNode(slicer.vtkMRMLSliceNode())  # as Slicer's application does at start: a default slice
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # node holding the Axial/... presets
    ph = make_phantom(size=tuple(args.size), seed=3, spacing=2.0)
    nodes = []
    for key, name in (("MRI", "T1 phantom"), ("PET", "PET phantom")):
        o = ph[key].GetOrigin()
        s = ph[key].GetSpacing()
        nodes.append(add_volume(scene, sitk.GetArrayFromImage(ph[key]),
                                ijk2ras([-s[0], -s[1], s[2]], [-o[0], -o[1], o[2]]), name))
    nodes[1].GetDisplayNode().SetAndObserveColorNodeID(scene.GetFirstNodeByName("PET-Heat").GetID())
    fused = ECFusionSlicerLogic(scene).process(nodes[0], nodes[1], device="cpu", precision="fp32")
    app_logic = scene._ecfusion_logics["application"]
    views = [slice_view(scene, app_logic, n) for n in (*nodes, fused)]
    gap = np.full((views[0].shape[0], 6, 3), 255, np.uint8)
    strip = np.concatenate([views[0], gap, views[1], gap, views[2]], axis=1)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(strip, isVector=True), str(out))
    print(f"wrote {out} ({strip.shape[1]} x {strip.shape[0]}): MRI | PET (PET-Heat) | {fused.GetName()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
