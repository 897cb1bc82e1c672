"""ECFusionSlicerLogic: fuse two MRML volumes with ECFusion. No Qt: runs in Slicer and with slicer-core.

    logic = ECFusionSlicerLogic()
    fused = logic.process(mriNode, petNode)                      # task detected, bundled weights, device auto
    fused = logic.process(mriNode, petNode, task="PET-MRI", device="cpu",
                          progressCallback=lambda done, total: print(done, total))

What it does: resamples the functional volume onto the anatomical grid through any parent transforms
(exact, see mrml_volumes.resample_onto); colours a scalar PET/SPECT volume exactly as its display node
shows it (colour node + window/level) or takes an RGB volume as it is; fuses slice by slice with
ECFusionLib; writes an RGB vector volume (PET/SPECT) or a scalar volume (CT-MRI) on the anatomical
grid. Inputs are never modified. Nothing is added to the scene until fusion has succeeded, so a
cancelled or failed run leaves the scene as it was.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Callable

import slicer
import vtk

from ECFusionLib.errors import ECFusionError

from . import mrml_volumes as mv

MODULE_NAME = "ECFusionSlicer"
ATTRIBUTE_PREFIX = "ECFusion."
TASKS = ("CT-MRI", "PET-MRI", "SPECT-MRI")
DICOM_MODALITY_TO_TASK = {"PT": "PET-MRI", "NM": "SPECT-MRI", "ST": "SPECT-MRI", "CT": "CT-MRI"}
NAME_PATTERNS = [  # (regular expression on the node name, task), first match wins
    (r"(^|[^a-z])(pet|pt|fdg|suv|amyloid|tau)([^a-z]|$)", "PET-MRI"),
    (r"(^|[^a-z])(spect|nm|hmpao|ecd|datscan|perfusion)([^a-z]|$)", "SPECT-MRI"),
    (r"(^|[^a-z])(ct|cta|hu)([^a-z]|$)", "CT-MRI"),
]
# The parameters a parameter node holds (the widget's parameterNodeWrapper uses the same names).
PARAMETERS = {"task": "auto", "device": "auto", "precision": "auto", "axis": "auto", "batchSize": "0", "ctWindow": "150.0",
              "ctLevel": "40.0", "weightsPath": "", "registration": "none"}


class ECFusionSlicerLogic:
    """Fusion of MRML volumes; safe to construct anywhere (imports torch only when a run starts)."""

    def __init__(self, scene=None):
        self._scene = scene

    @property
    def scene(self):
        if self._scene is None:
            self._scene = slicer.mrmlScene  # inside the Slicer application
        return self._scene

    # ------------------------------------------------------------ parameter node
    def getParameterNode(self):
        """The module's singleton vtkMRMLScriptedModuleNode, created with defaults when missing."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(MODULE_NAME)
            node.SetModuleName(MODULE_NAME)
            for key, value in PARAMETERS.items():
                node.SetParameter(key, value)
            node = self.scene.AddNode(node)
        return node

    def processUsingParameterNode(self, parameterNode=None, progressCallback=None, cancelCheck=None):
        """Run ``process`` with the inputs and settings stored in a parameter node.

        Node references: anatomicalVolume, functionalVolume, outputVolume and registrationTransform (optional;
        set on success).
        """
        p = parameterNode or self.getParameterNode()

        def param(name):
            value = p.GetParameter(name)
            return value if value not in ("", None) else PARAMETERS.get(name, "")

        def number(name, kind=float):
            value = p.GetParameter(name)
            return kind(float(value)) if value not in ("", None, "0") else None

        anatomical = p.GetNodeReference("anatomicalVolume")
        functional = p.GetNodeReference("functionalVolume")
        if anatomical is None or functional is None:
            raise ECFusionError("select both an anatomical (MRI) and a functional (CT/PET/SPECT) volume")
        task = param("task")
        output = self.process(anatomical, functional, p.GetNodeReference("outputVolume"),
                              task=None if task == "auto" else task, device=param("device"),
                              precision=param("precision"), axis=param("axis"),
                              batchSize=number("batchSize", int), ctWindow=number("ctWindow"), ctLevel=number("ctLevel"),
                              weightsPath=p.GetParameter("weightsPath") or None, registration=param("registration"),
                              registrationTransformNode=p.GetNodeReference("registrationTransform"),
                              progressCallback=progressCallback, cancelCheck=cancelCheck)
        p.SetNodeReferenceID("outputVolume", output.GetID())
        tx_id = output.GetAttribute(ATTRIBUTE_PREFIX + "registration_transform")
        if tx_id:
            p.SetNodeReferenceID("registrationTransform", tx_id)
        return output

    # ------------------------------------------------------------ task
    def detectTask(self, functionalNode) -> str:
        """Task from the DICOM modality (node or subject-hierarchy attribute 'DICOM.Modality'), else from
        the node's name; raises ECFusionError when neither tells."""
        modality = functionalNode.GetAttribute("DICOM.Modality")
        sh = self._subject_hierarchy()
        if not modality and sh is not None:
            item = sh.GetItemByDataNode(functionalNode)
            modality = sh.GetItemAttribute(item, "DICOM.Modality") if item else ""
        if modality and modality.upper() in DICOM_MODALITY_TO_TASK:
            return DICOM_MODALITY_TO_TASK[modality.upper()]
        name = (functionalNode.GetName() or "").lower()
        for pattern, task in NAME_PATTERNS:
            if re.search(pattern, name):
                return task
        raise ECFusionError(
            f"cannot tell whether '{functionalNode.GetName()}' is CT, PET or SPECT (no DICOM modality, nothing in its "
            f"name): choose the task ({', '.join(TASKS)}) explicitly"
        )

    # ------------------------------------------------------------ main entry point
    def process(self, anatomicalNode, functionalNode, outputNode=None, *, task: str | None = None,
                device: str = "auto", precision: str = "auto", colorNodeID: str | None = None, window: float | None = None,
                level: float | None = None, axis: str = "auto", batchSize: int | None = None,
                ctWindow: float | None = None, ctLevel: float | None = None, weightsPath: str | None = None,
                registration: str = "none", registrationTransformNode=None,
                progressCallback: Callable[[int, int], None] | None = None,
                cancelCheck: Callable[[], bool] | None = None):
        """Fuse ``functionalNode`` (CT, PET or SPECT; scalar or RGB) into ``anatomicalNode``'s grid.

        colorNodeID / window / level override the functional volume's display settings (scalar PET/SPECT).
        precision: "auto" (bf16 where the hardware has it, else fp32), "fp32" or "bf16" (ECFusionLib.engine).
        registration: "none", "rigid" or "affine" (mutual information, ECFusionLib.registration). The result is
        stored in ``registrationTransformNode`` (or a new linear transform node named after the inputs) for
        inspection; the functional volume is fused through it but is not moved. With registration "none", a
        given ``registrationTransformNode`` (e.g. one edited by hand) is applied as it is.
        Returns the output node (``outputNode`` if given, else a new node added to the scene).
        Raises ECFusionError (bad input) or ECFusionLib's errors (weights, cancel); the scene is then unchanged.
        """
        import SimpleITK as sitk

        from ECFusionLib.fusion import FusionSettings, fuse_images

        self._check_inputs(anatomicalNode, functionalNode, outputNode)
        task = task or self.detectTask(functionalNode)
        if task not in TASKS:
            raise ECFusionError(f"unknown task '{task}': use one of {', '.join(TASKS)}")
        if registration not in ("none", "rigid", "affine"):
            raise ECFusionError(f"unknown registration '{registration}': use none, rigid or affine")
        reg_ras = self._registration_matrix(anatomicalNode, functionalNode, registration, registrationTransformNode)
        if mv.overlap_fraction(functionalNode, anatomicalNode, reg_ras) == 0.0:
            raise ECFusionError(f"'{functionalNode.GetName()}' and '{anatomicalNode.GetName()}' do not overlap in space: "
                                "check their transforms, or register them first")

        anat_arr = mv.array_from_volume(anatomicalNode)
        is_rgb = functionalNode.GetImageData().GetNumberOfScalarComponents() == 3
        moved = mv.resample_onto(functionalNode, anatomicalNode, registration=reg_ras)
        settings = FusionSettings(task=task, device=device, precision=precision, batch_size=batchSize, axis=axis,
                                  ct_window=ctWindow, ct_level=ctLevel, weights=weightsPath)
        colour_info = {}
        if task != "CT-MRI" and not is_rgb:
            second_arr, colour_info = self._functional_rgb(functionalNode, moved, colorNodeID, window, level)
        else:
            second_arr = mv.array_from_volume_data(moved)
        world = mv.world_ijk_to_ras(anatomicalNode)
        origin, spacing, direction = mv.sitk_geometry(world if world is not None else mv.ijk_to_ras(anatomicalNode))
        images = []
        for arr, vector in ((anat_arr, False), (second_arr, second_arr.ndim == 4)):
            img = sitk.GetImageFromArray(arr, isVector=vector)
            img.SetOrigin(origin)
            img.SetSpacing(spacing)
            img.SetDirection(direction)
            images.append(img)
        result = fuse_images(images[0], images[1], settings, progress=progressCallback, cancel=cancelCheck)
        if result.metadata["alignment"]["misaligned"] and reg_ras is None:
            logging.warning("ECFusion: %s and %s look misaligned (head containment %.2f): consider 'Register before fusion'",
                            anatomicalNode.GetName(), functionalNode.GetName(), result.metadata["alignment"]["containment"])
        output = self._write_output(result, anatomicalNode, functionalNode, outputNode, task, colour_info)
        if reg_ras is not None:
            tx = self._store_registration(reg_ras, registration, registrationTransformNode, anatomicalNode, functionalNode)
            output.SetAttribute(ATTRIBUTE_PREFIX + "registration", registration if registration != "none" else "given transform")
            output.SetAttribute(ATTRIBUTE_PREFIX + "registration_transform", tx.GetID())
        return output

    def _registration_matrix(self, anatomicalNode, functionalNode, registration, transformNode):
        """4x4 RAS matrix mapping anatomical world points to functional world points, or None."""
        if registration == "none":
            if transformNode is None:
                return None
            m = vtk.vtkMatrix4x4()
            transformNode.GetMatrixTransformFromParent(m)
            return mv.matrix_to_numpy(m)
        from ECFusionLib.registration import affine_matrix_lps, register

        try:
            fixed, moving = mv.sitk_image_in_world(anatomicalNode), mv.sitk_image_in_world(functionalNode)
        except ValueError as exc:
            raise ECFusionError(str(exc)) from exc
        return mv.lps_to_ras_matrix(affine_matrix_lps(register(fixed, moving, registration)))

    def _store_registration(self, reg_ras, registration, transformNode, anatomicalNode, functionalNode):
        """Put the registration into a linear transform node ('to parent' = functional -> anatomical world)."""
        if transformNode is None:
            name = self.scene.GenerateUniqueName(f"{functionalNode.GetName()} to {anatomicalNode.GetName()} (ECFusion)")
            transformNode = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        if registration != "none":
            transformNode.SetMatrixTransformFromParent(mv.numpy_to_matrix(reg_ras))
        return transformNode

    # ------------------------------------------------------------ pieces
    @staticmethod
    def _check_inputs(anatomicalNode, functionalNode, outputNode):
        for role, node in (("anatomical", anatomicalNode), ("functional", functionalNode)):
            if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
                raise ECFusionError(f"the {role} input must be a volume node")
            if node.IsA("vtkMRMLLabelMapVolumeNode"):
                raise ECFusionError(f"the {role} input '{node.GetName()}' is a label map; select an image volume")
            image = node.GetImageData()
            if image is None or image.GetPointData().GetScalars() is None:
                raise ECFusionError(f"the {role} volume '{node.GetName()}' has no image data")
        if anatomicalNode.GetImageData().GetNumberOfScalarComponents() != 1:
            raise ECFusionError(f"the anatomical volume '{anatomicalNode.GetName()}' must be a scalar (grey) MRI")
        if functionalNode.GetImageData().GetNumberOfScalarComponents() not in (1, 3):
            raise ECFusionError(f"the functional volume '{functionalNode.GetName()}' must be scalar or RGB")
        if outputNode is not None and outputNode in (anatomicalNode, functionalNode):
            raise ECFusionError("the output volume must not be one of the inputs (inputs are never modified)")

    def _functional_rgb(self, functionalNode, moved: vtk.vtkImageData, colorNodeID, window, level):
        """RGB of the resampled functional voxels as its display node shows them (or with overrides)."""
        display = functionalNode.GetDisplayNode()
        if display is None or colorNodeID or window is not None or level is not None:
            return self._rgb_with_overrides(functionalNode, moved, colorNodeID, window, level)
        rgb = mv.displayed_rgb(functionalNode, moved)
        return rgb, {"colorNode": display.GetColorNode().GetName() if display.GetColorNode() else "",
                     "window": display.GetWindow(), "level": display.GetLevel()}

    def _rgb_with_overrides(self, functionalNode, moved, colorNodeID, window, level):
        from ECFusionLib.colour import apply_colormap
        from ECFusionLib.fusion import default_window_level

        values = mv.array_from_volume_data(moved)
        display = functionalNode.GetDisplayNode()
        color = self.scene.GetNodeByID(colorNodeID) if colorNodeID else (display.GetColorNode() if display else None)
        if color is None:
            color = self.scene.GetFirstNodeByName("PET-Heat")
        if color is None:
            raise ECFusionError(f"colour node '{colorNodeID}' not found in the scene")
        if display is not None:
            window = display.GetWindow() if window is None else window
            level = display.GetLevel() if level is None else level
        window, level = default_window_level(mv.array_from_volume(functionalNode), window, level)
        rgb = apply_colormap(values, mv.colour_table(color), float(window), float(level))
        return rgb, {"colorNode": color.GetName(), "window": float(window), "level": float(level)}

    def _write_output(self, result, anatomicalNode, functionalNode, outputNode, task, colour_info):
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(result.image)
        rgb = arr.ndim == 4
        cls = "vtkMRMLVectorVolumeNode" if rgb else "vtkMRMLScalarVolumeNode"
        if outputNode is not None and not outputNode.IsA(cls):
            raise ECFusionError(f"the output volume must be a {cls} for {task} (an RGB result)" if rgb
                                else f"the output volume must be a scalar volume for {task}")
        name = f"{anatomicalNode.GetName()} + {functionalNode.GetName()} (ECFusion)"
        node = outputNode or self.scene.AddNewNodeByClass(cls, self.scene.GenerateUniqueName(name))
        world = mv.world_ijk_to_ras(anatomicalNode)
        node.SetIJKToRASMatrix(mv.numpy_to_matrix(world if world is not None else mv.ijk_to_ras(anatomicalNode)))
        if world is None:  # a non-linear transform on the anatomical volume: follow it, as the anatomy does
            node.SetAndObserveTransformNodeID(anatomicalNode.GetParentTransformNode().GetID())
        node.SetAndObserveImageData(mv.image_data_from_array(arr, vector=rgb))
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(255.0, 127.5)
        if not rgb:
            grey = self.scene.GetFirstNodeByName("Grey")
            if grey is not None:
                display.SetAndObserveColorNodeID(grey.GetID())
        meta = dict(result.metadata)
        meta["functional_display"] = colour_info
        meta["anatomical"] = anatomicalNode.GetName()
        meta["functional"] = functionalNode.GetName()
        for key, value in meta.items():
            node.SetAttribute(ATTRIBUTE_PREFIX + key, value if isinstance(value, str) else json.dumps(value))
        self._place_in_study(node, anatomicalNode)
        logging.info("ECFusion: wrote %s (%s, %s)", node.GetName(), task, meta.get("device"))
        return node

    def _subject_hierarchy(self):
        """The scene's subject hierarchy node, or None; never creates one (looking must not change the scene)."""
        return self.scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")

    def _place_in_study(self, node, anatomicalNode):
        """Put the output beside the anatomical volume (its study) in the subject hierarchy."""
        sh = self._subject_hierarchy()
        anat_item = sh.GetItemByDataNode(anatomicalNode) if sh is not None else 0
        if not anat_item:
            return
        parent = sh.GetItemParent(anat_item)
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:
            sh.CreateItem(parent, node)
