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
import math
from typing import Callable

import slicer
import vtk

# Nothing here tunes the process (OpenMP wait policy, allocator): inside Slicer the process is the application's.
# That is ECFusionLib.runtime.tune_cpu(), which only the command line calls.
from ECFusionLib.errors import CancelledError, ECFusionError
from ECFusionLib.tasks import (AXES_ANATOMICAL, DEVICES, PRECISIONS, REGISTRATION_MODES, TASK_NAMES, TASK_SPECS,
                               check_choice, check_task, detect_task, task_spec)

from . import mrml_volumes as mv
from .dependencies import BACKENDS, DEFAULT_BACKEND, resolve_backend

MODULE_NAME = "ECFusionSlicer"
ATTRIBUTE_PREFIX = "ECFusion."
AUTO_TASK = "auto"  # the task choice that means "detect it" (detectTask)
# The choices of the text settings, from ECFusionLib's registry (first = default); the widget's Choice lists
# read these, so a task or device added there appears in the panel.
CHOICES = {"task": (AUTO_TASK, *TASK_NAMES), "device": DEVICES, "precision": PRECISIONS, "axis": AXES_ANATOMICAL,
           "registration": REGISTRATION_MODES, "backend": BACKENDS}
# The settings a parameter node holds, with their defaults (the widget's parameterNodeWrapper has the same names,
# types and defaults). keepSalient: the keep-salient rule (ECFusionLib.salient) after the network.
DEFAULTS = {**{name: options[0] for name, options in CHOICES.items()}, "batchSize": 0,
            "ctWindow": TASK_SPECS["CT-MRI"].default_window[0], "ctLevel": TASK_SPECS["CT-MRI"].default_window[1],
            "weightsPath": "", "keepSalient": True}


def parameter_text(value) -> str:
    """``value`` as parameterNodeWrapper's serializers store it (BoolSerializer: "True"/"False"; numbers: str)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


PARAMETERS = {name: parameter_text(value) for name, value in DEFAULTS.items()}  # as stored in the node
# Limits of the numeric settings, shared by the logic's checks and the widget's spin boxes (WithinRange).
LIMITS = {"batchSize": (0, 256), "ctWindow": (1.0, 10000.0), "ctLevel": (-2000.0, 5000.0)}
StatusCallback = Callable[[str], None]


NODE_ROLES = ("anatomicalVolume", "functionalVolume", "outputVolume", "registrationTransform")


def node_reference(parameterNode, role: str):
    """The node a raw parameter node (vtkMRMLScriptedModuleNode) refers to under ``role``, as the widget's
    parameterNodeWrapper stored it.

    A single node type is stored under ``role`` itself (NodeSerializer); a ``Union[...]`` field (outputVolume)
    under ``f"{role}.{index}"`` of the member type that accepted the node (UnionSerializer._paramName in
    Base/Python/slicer/parameterNodeWrapper/serializers.py, the same in Slicer 5.8.1, 5.10.0, 5.12.3 and the
    preview; checked by Testing/test_slicer_widget_on_slicer_source.py on that code).
    """
    node = parameterNode.GetNodeReference(role)
    for index in range(4):
        if node is not None:
            return node
        node = parameterNode.GetNodeReference(f"{role}.{index}")
    return node


def parameter_values(parameterNode) -> dict:
    """The inputs and settings of a parameter node: {name: value} for NODE_ROLES (node or None) and every name
    of DEFAULTS (typed like its default).

    ``parameterNode`` is the widget's parameterNodeWrapper instance (read through its own attributes, so the
    wrapper's serializers decide the keys) or a raw vtkMRMLScriptedModuleNode (text parameters, as
    ``getParameterNode`` and the wrapper write them).
    """
    if hasattr(parameterNode, "allParameters"):  # a parameterNodeWrapper instance
        return {name: getattr(parameterNode, name) for name in (*NODE_ROLES, *DEFAULTS)}
    values = {role: node_reference(parameterNode, role) for role in NODE_ROLES}
    for name, default in DEFAULTS.items():
        text = parameterNode.GetParameter(name)
        if text in ("", None):
            values[name] = default
        elif isinstance(default, bool):
            values[name] = text == parameter_text(True)
        else:
            values[name] = text if isinstance(default, str) else check_number(name, text,
                                                                                integer=isinstance(default, int))
    return values


def first_anatomical_candidate(scene):
    """The first grey image volume of ``scene`` (not a label map, RGB, tensor or diffusion volume), or None."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() != "vtkMRMLScalarVolumeNode" or node.GetAttribute(ATTRIBUTE_PREFIX + "task"):
            continue
        image = node.GetImageData()
        if image is None or image.GetNumberOfScalarComponents() == 1:
            return node
    return None


def check_number(name: str, value, *, integer: bool = False, limits: tuple | None = None):
    """``value`` as a finite number within ``limits`` (default LIMITS[name]), else ECFusionError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ECFusionError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ECFusionError(f"{name} must be a finite number, got {value!r}")
    if integer and number != int(number):
        raise ECFusionError(f"{name} must be a whole number, got {value!r}")
    lo, hi = limits or LIMITS[name]
    if not lo <= number <= hi:
        raise ECFusionError(f"{name} must be between {lo:g} and {hi:g}, got {number:g}")
    return int(number) if integer else number


def output_class(task: str) -> str:
    """The MRML class of ``task``'s result: an RGB vector volume (PET/SPECT colour kept) or a grey scalar one."""
    return "vtkMRMLVectorVolumeNode" if task_spec(task).keep_colour else "vtkMRMLScalarVolumeNode"


def check_output_class(outputNode, task: str, cls: str | None = None) -> None:
    """ECFusionError unless ``outputNode`` (None: a new node) is exactly of class ``cls`` (default: the task's).

    Compared by class name: ``IsA("vtkMRMLScalarVolumeNode")`` is also true for a vector volume, which must not
    receive a grey result (nor a label map any result)."""
    cls = cls or output_class(task)
    if outputNode is None or outputNode.GetClassName() == cls:
        return
    kind = "an RGB vector volume" if cls == "vtkMRMLVectorVolumeNode" else "a grey scalar volume"
    raise ECFusionError(f"the output volume '{outputNode.GetName()}' is a {outputNode.GetClassName()}, but the "
                        f"{task} result is {kind}: choose 'Create new volume' or an earlier {task} result")


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

    def processUsingParameterNode(self, parameterNode=None, progressCallback=None, cancelCheck=None,
                                  statusCallback: StatusCallback | None = None):
        """Run ``process`` with the inputs and settings stored in a parameter node: the widget's
        parameterNodeWrapper instance or a raw vtkMRMLScriptedModuleNode (``parameter_values``).

        Node references: anatomicalVolume, functionalVolume, outputVolume (optional: empty = a new volume on every
        run, so a previous result is never overwritten unless it is chosen) and registrationTransform (optional;
        set when a registration created one). The widget's parameterNodeWrapper and this logic share the node.
        """
        p = parameterNode or self.getParameterNode()
        v = parameter_values(p)
        if v["anatomicalVolume"] is None or v["functionalVolume"] is None:
            raise ECFusionError("select both an anatomical (MRI) and a functional (CT/PET/SPECT) volume")
        batch = check_number("batchSize", v["batchSize"], integer=True)
        output = self.process(v["anatomicalVolume"], v["functionalVolume"], v["outputVolume"],
                              task=None if v["task"] == AUTO_TASK else v["task"], device=v["device"],
                              precision=v["precision"], axis=v["axis"], batchSize=batch or None,
                              ctWindow=check_number("ctWindow", v["ctWindow"]),
                              ctLevel=check_number("ctLevel", v["ctLevel"]), weightsPath=v["weightsPath"] or None,
                              registration=v["registration"], keepSalient=bool(v["keepSalient"]),
                              registrationTransformNode=v["registrationTransform"], backend=v["backend"],
                              progressCallback=progressCallback, cancelCheck=cancelCheck, statusCallback=statusCallback)
        tx_id = output.GetAttribute(ATTRIBUTE_PREFIX + "registration_transform")
        if tx_id and v["registrationTransform"] is None:
            if hasattr(p, "allParameters"):
                p.registrationTransform = self.scene.GetNodeByID(tx_id)
            else:
                p.SetNodeReferenceID("registrationTransform", tx_id)
        return output

    # ------------------------------------------------------------ task
    def detectTask(self, functionalNode) -> str:
        """Task from the DICOM modality (node or subject-hierarchy attribute 'DICOM.Modality'), else from
        the node's name, by the same rules as the command line (ECFusionLib.tasks.detect_task); raises
        ECFusionError when neither tells."""
        task = detect_task(self._dicom_modality(functionalNode), functionalNode.GetName())
        if task is None:
            raise ECFusionError(
                f"cannot tell whether '{functionalNode.GetName()}' is CT, PET or SPECT (no DICOM modality, nothing in "
                f"its name): choose the task ({', '.join(TASK_NAMES)}) explicitly")
        return task

    def _dicom_modality(self, node) -> str:
        """DICOM Modality (0008,0060) of ``node``: its own attribute, else its subject-hierarchy item's; "" if none."""
        modality = node.GetAttribute("DICOM.Modality")
        sh = self._subject_hierarchy()
        if not modality and sh is not None:
            item = sh.GetItemByDataNode(node)
            modality = sh.GetItemAttribute(item, "DICOM.Modality") if item else ""
        return modality or ""

    # ------------------------------------------------------------ main entry point
    def process(self, anatomicalNode, functionalNode, outputNode=None, *, task: str | None = None,
                device: str = DEFAULTS["device"], precision: str = DEFAULTS["precision"],
                colorNodeID: str | None = None, window: float | None = None, level: float | None = None,
                axis: str = DEFAULTS["axis"], batchSize: int | None = None, ctWindow: float | None = None,
                ctLevel: float | None = None, weightsPath: str | None = None,
                registration: str = DEFAULTS["registration"], registrationTransformNode=None,
                keepSalient: bool = DEFAULTS["keepSalient"], backend: str = DEFAULT_BACKEND,
                progressCallback: Callable[[int, int], None] | None = None,
                cancelCheck: Callable[[], bool] | None = None, statusCallback: StatusCallback | None = None):
        """Fuse ``functionalNode`` (CT, PET or SPECT; scalar or RGB) into ``anatomicalNode``'s grid.

        colorNodeID / window / level override the functional volume's display settings (scalar PET/SPECT).
        precision: "auto" (bf16 where the hardware has it, else fp32), "fp32" or "bf16" (ECFusionLib.engine).
        batchSize: slices per batch (None or 0: automatic); ctWindow > 0 and ctLevel in HU (CT-MRI).
        registration: "none", "rigid" or "affine" (mutual information, ECFusionLib.registration). The result is
        stored in ``registrationTransformNode`` (or a new linear transform node named after the inputs) for
        inspection; the functional volume is fused through it but is not moved. With registration "none", a
        given ``registrationTransformNode`` (e.g. one edited by hand) is applied as it is.
        keepSalient: apply the keep-salient rule after the network (ECFusionLib.salient; CT bone and the hottest
        PET/SPECT uptake at least as bright as in the source); recorded in the attribute ECFusion.keep_salient.
        cancelCheck() is asked between every phase (loading PyTorch, loading the network, each registration
        iteration, each batch of slices, before writing); True stops with CancelledError. statusCallback(text)
        names each phase as it starts.
        Returns the output node (``outputNode`` if given, else a new node added to the scene).
        Raises ECFusionError (bad input) or ECFusionLib's errors (weights, cancel); the scene is then unchanged.
        """
        def phase(text):
            # The status first: showing it lets Qt run (a Cancel click, a scene close), and the check after it
            # sees what happened meanwhile. Checked the other way round, a scene closed while "Writing the
            # result..." was shown still received the output.
            if text and statusCallback is not None:
                statusCallback(text)
            if cancelCheck is not None and cancelCheck():
                raise CancelledError("cancelled by the user; the scene is unchanged")

        phase("")
        self._check_inputs(anatomicalNode, functionalNode, outputNode)
        task = check_task(task) if task else self.detectTask(functionalNode)
        check_output_class(outputNode, task)
        backend = resolve_backend(backend)
        check_choice(registration, REGISTRATION_MODES, "registration")
        if batchSize is not None:
            batchSize = check_number("batchSize", batchSize, integer=True) or None  # 0: automatic
        ctWindow = check_number("ctWindow", ctWindow) if ctWindow is not None else None
        ctLevel = check_number("ctLevel", ctLevel) if ctLevel is not None else None
        if window is not None:
            window = check_number("window", window, limits=(1e-6, math.inf))
        if level is not None:
            level = check_number("level", level, limits=(-math.inf, math.inf))

        phase({"torch": "Loading PyTorch...", "onnxruntime": "Loading ONNX Runtime..."}.get(backend, "Loading..."))
        import SimpleITK as sitk

        from ECFusionLib.backends import load_network
        from ECFusionLib.fusion import FusionSettings, fuse_images

        phase("Loading the network...")
        model, weights_info = load_network(task, weightsPath, backend=backend, device=device)
        phase(f"Registering ({registration})..." if registration != "none" else "")
        reg_ras = self._registration_matrix(anatomicalNode, functionalNode, registration, registrationTransformNode,
                                            cancelCheck)
        if mv.overlap_fraction(functionalNode, anatomicalNode, reg_ras) == 0.0:
            raise ECFusionError(f"'{functionalNode.GetName()}' and '{anatomicalNode.GetName()}' do not overlap in space: "
                                "check their transforms, or register them first")

        phase("Resampling...")
        anat_arr = mv.array_from_volume(anatomicalNode)
        is_rgb = functionalNode.GetImageData().GetNumberOfScalarComponents() == 3
        moved = mv.resample_onto(functionalNode, anatomicalNode, registration=reg_ras)
        settings = FusionSettings(task=task, device=device, precision=precision, batch_size=batchSize, axis=axis,
                                  ct_window=ctWindow, ct_level=ctLevel, weights=weightsPath,
                                  keep_salient=bool(keepSalient), backend=weights_info["backend"])
        colour_info = {}
        if task_spec(task).keep_colour and not is_rgb:  # a scalar PET/SPECT: coloured as displayed
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
        phase("Fusing...")
        result = fuse_images(images[0], images[1], settings, model=model, weights_info=weights_info,
                             progress=progressCallback, cancel=cancelCheck)
        phase("Writing the result...")  # a cancel during the last batch still leaves the scene unchanged
        for node in (anatomicalNode, functionalNode, outputNode):
            if node is not None and node.GetScene() is not self.scene:  # closed without a cancel check noticing
                raise CancelledError("the scene was closed during the run; nothing was written")
        if result.metadata["alignment"]["misaligned"] and reg_ras is None:
            logging.warning("ECFusion: %s and %s look misaligned (head containment %.2f): consider 'Register before fusion'",
                            anatomicalNode.GetName(), functionalNode.GetName(), result.metadata["alignment"]["containment"])
        output = self._write_output(result, anatomicalNode, functionalNode, outputNode, task, colour_info)
        if reg_ras is not None:
            tx = self._store_registration(reg_ras, registration, registrationTransformNode, anatomicalNode, functionalNode)
            output.SetAttribute(ATTRIBUTE_PREFIX + "registration", registration if registration != "none" else "given transform")
            output.SetAttribute(ATTRIBUTE_PREFIX + "registration_transform", tx.GetID())
        return output

    def _registration_matrix(self, anatomicalNode, functionalNode, registration, transformNode, cancelCheck=None):
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
        return mv.lps_to_ras_matrix(affine_matrix_lps(register(fixed, moving, registration, cancel=cancelCheck)))

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
        if anatomicalNode is functionalNode or anatomicalNode.GetID() == functionalNode.GetID():
            raise ECFusionError(f"'{anatomicalNode.GetName()}' is selected as both the anatomical and the functional "
                                "volume: choose the MRI and the CT/PET/SPECT volume")
        if anatomicalNode.GetImageData().GetNumberOfScalarComponents() != 1:
            raise ECFusionError(f"the anatomical volume '{anatomicalNode.GetName()}' must be a scalar (grey) MRI")
        if functionalNode.GetImageData().GetNumberOfScalarComponents() not in (1, 3):
            raise ECFusionError(f"the functional volume '{functionalNode.GetName()}' must be scalar or RGB")
        if outputNode is not None and outputNode in (anatomicalNode, functionalNode):
            raise ECFusionError("the output volume must not be one of the inputs (inputs are never modified)")

    def _functional_rgb(self, functionalNode, moved: vtk.vtkImageData, colorNodeID, window, level):
        """RGB of the resampled functional voxels as its display node shows them (or with overrides)."""
        display = functionalNode.GetDisplayNode()
        if display is None or display.GetColorNode() is None or colorNodeID or window is not None or level is not None:
            return self._rgb_with_overrides(functionalNode, moved, colorNodeID, window, level)
        rgb = mv.displayed_rgb(functionalNode, moved)
        return rgb, {"colorNode": display.GetColorNode().GetName() if display.GetColorNode() else "",
                     "window": display.GetWindow(), "level": display.GetLevel()}

    def _rgb_with_overrides(self, functionalNode, moved, colorNodeID, window, level):
        from ECFusionLib.colour import apply_colormap, colormap_table
        from ECFusionLib.fusion import default_window_level

        values = mv.array_from_volume_data(moved)
        display = functionalNode.GetDisplayNode()
        color = self.scene.GetNodeByID(colorNodeID) if colorNodeID else (display.GetColorNode() if display else None)
        if colorNodeID and color is None:
            raise ECFusionError(f"colour node '{colorNodeID}' not found in the scene")
        if color is None:  # no display or no colour node (a scene without Slicer's colour nodes): grey, as Slicer shows it
            table, name = colormap_table("Grey"), "Grey"
        else:
            table, name = mv.colour_table(color), color.GetName()
        if display is not None:
            window = display.GetWindow() if window is None else window
            level = display.GetLevel() if level is None else level
        window, level = default_window_level(mv.array_from_volume(functionalNode), window, level)
        rgb = apply_colormap(values, table, float(window), float(level))
        return rgb, {"colorNode": name, "window": float(window), "level": float(level)}

    def _write_output(self, result, anatomicalNode, functionalNode, outputNode, task, colour_info):
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(result.image)
        rgb = arr.ndim == 4
        cls = "vtkMRMLVectorVolumeNode" if rgb else "vtkMRMLScalarVolumeNode"
        check_output_class(outputNode, task, cls)
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

