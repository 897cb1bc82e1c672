"""ECFusionSlicerLogic: fuse two MRML volumes with ECFusion. No Qt: runs in Slicer and with slicer-core.

    logic = ECFusionSlicerLogic()
    fused = logic.process(mriNode, petNode)                      # task detected, bundled weights, device auto
    fused = logic.process(mriNode, petNode, ProcessSettings(task="PET-MRI", device="cpu"),
                          progressCallback=lambda done, total: print(done, total))
    fused = logic.process(mriNode, petNode, task="PET-MRI", device="cpu")   # the same, fields as keywords

What it does: resamples the functional volume onto the anatomical grid through any parent transforms
(exact, see mrml_volumes.resample_onto); colours a scalar PET/SPECT volume exactly as its display node
shows it (colour node + window/level) or takes an RGB volume as it is; fuses slice by slice with
ECFusionLib; writes an RGB vector volume (a task that keeps colour: PET, SPECT) or a grey scalar volume
(CT) on the anatomical grid. Inputs are never modified. Nothing is added to the scene until fusion has
succeeded, so a cancelled or failed run leaves the scene as it was.

The settings and the parameter node's format are in parameters.py, the MRML <-> array/SimpleITK conversion in
mrml_volumes.py; this module orchestrates.
"""
from __future__ import annotations

import json
import logging
from typing import Callable

import slicer
import vtk

# Nothing here tunes the process (OpenMP wait policy, allocator): inside Slicer the process is the application's.
# That is ECFusionLib.runtime.tune_cpu(), which only the command line calls.
from ECFusionLib.errors import CancelledError, ECFusionError
from ECFusionLib.tasks import TASK_NAMES, TaskSpec, detect_task, task_spec

from . import mrml_volumes as mv
from .dependencies import resolve_backend
from .parameters import (CHOICES, DEFAULTS, LIMITS, PARAMETERS, ProcessSettings,  # noqa: F401 (the module's API)
                         parameter_values, set_node_reference, settings_from_parameters)

MODULE_NAME = "ECFusionSlicer"
ATTRIBUTE_PREFIX = "ECFusion."
StatusCallback = Callable[[str], None]
ENGINE_LOADING = {"torch": "Loading PyTorch...", "onnxruntime": "Loading ONNX Runtime..."}


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


def output_class(spec: TaskSpec) -> str:
    """The MRML class of the task's result: an RGB vector volume (colour kept) or a grey scalar one."""
    return "vtkMRMLVectorVolumeNode" if spec.keep_colour else "vtkMRMLScalarVolumeNode"


def check_output_class(outputNode, spec: TaskSpec, cls: str | None = None) -> None:
    """ECFusionError unless ``outputNode`` (None: a new node) is exactly of class ``cls`` (default: the task's).

    Compared by class name: ``IsA("vtkMRMLScalarVolumeNode")`` is also true for a vector volume, which must not
    receive a grey result (nor a label map any result)."""
    cls = cls or output_class(spec)
    if outputNode is None or outputNode.GetClassName() == cls:
        return
    kind = "an RGB vector volume" if cls == "vtkMRMLVectorVolumeNode" else "a grey scalar volume"
    raise ECFusionError(f"the output volume '{outputNode.GetName()}' is a {outputNode.GetClassName()}, but the "
                        f"{spec.name} result is {kind}: choose 'Create new volume' or an earlier {spec.name} result")


def phase_reporter(statusCallback: StatusCallback | None, cancelCheck: Callable[[], bool] | None):
    """``phase(text)``: show ``text`` (if any) through ``statusCallback``, then stop with CancelledError when
    ``cancelCheck()`` says so. The status first: showing it lets Qt run (a Cancel click, a scene close), and the
    check after it sees what happened meanwhile. Checked the other way round, a scene closed while "Writing the
    result..." was shown still received the output."""
    def phase(text: str = "") -> None:
        if text and statusCallback is not None:
            statusCallback(text)
        if cancelCheck is not None and cancelCheck():
            raise CancelledError("cancelled by the user; the scene is unchanged")
    return phase


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
        parameterNodeWrapper instance or a raw vtkMRMLScriptedModuleNode (``parameters.parameter_values``).

        Node references: anatomicalVolume, functionalVolume, outputVolume (optional: empty = a new volume on every
        run, so a previous result is never overwritten unless it is chosen) and registrationTransform (optional;
        set when a registration created one). The widget's parameterNodeWrapper and this logic share the node.
        """
        p = parameterNode or self.getParameterNode()
        v = parameter_values(p)
        if v["anatomicalVolume"] is None or v["functionalVolume"] is None:
            raise ECFusionError("select both an anatomical (MRI) and a functional (CT/PET/SPECT) volume")
        output = self.process(v["anatomicalVolume"], v["functionalVolume"], v["outputVolume"],
                              settings_from_parameters(v), registrationTransformNode=v["registrationTransform"],
                              progressCallback=progressCallback, cancelCheck=cancelCheck, statusCallback=statusCallback)
        tx_id = output.GetAttribute(ATTRIBUTE_PREFIX + "registration_transform")
        if tx_id and v["registrationTransform"] is None:
            set_node_reference(p, "registrationTransform", self.scene.GetNodeByID(tx_id))
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

    def taskSpec(self, functionalNode, task: str | None = None) -> TaskSpec:
        """The ``TaskSpec`` of ``task`` (any case), or of the task ``detectTask`` finds: resolved once per run."""
        return task_spec(task or self.detectTask(functionalNode))

    def _dicom_modality(self, node) -> str:
        """DICOM Modality (0008,0060) of ``node``: its own attribute, else its subject-hierarchy item's; "" if none."""
        modality = node.GetAttribute("DICOM.Modality")
        sh = self._subject_hierarchy()
        if not modality and sh is not None:
            item = sh.GetItemByDataNode(node)
            modality = sh.GetItemAttribute(item, "DICOM.Modality") if item else ""
        return modality or ""

    # ------------------------------------------------------------ main entry point
    def process(self, anatomicalNode, functionalNode, outputNode=None, settings: ProcessSettings | None = None, *,
                registrationTransformNode=None, progressCallback: Callable[[int, int], None] | None = None,
                cancelCheck: Callable[[], bool] | None = None, statusCallback: StatusCallback | None = None,
                **overrides):
        """Fuse ``functionalNode`` (CT, PET or SPECT; scalar or RGB) into ``anatomicalNode``'s grid.

        settings: a ``ProcessSettings`` (parameters.py: task, device, precision, axis, batch_size, ct_window,
        ct_level, weights, register, keep_salient, backend, and color_node_id / window / level overriding a scalar
        PET/SPECT volume's display); default: all defaults. ``overrides``: any of its fields as keywords, applied
        on top (``process(mri, pet, task="PET-MRI", device="cpu")``). keep_salient is recorded in the attribute
        ECFusion.keep_salient.
        register "rigid"/"affine" (mutual information, ECFusionLib.registration) stores its result in
        ``registrationTransformNode`` (or a new linear transform node named after the inputs) for inspection; the
        functional volume is fused through it but is not moved. With register "none", a given
        ``registrationTransformNode`` (e.g. one edited by hand) is applied as it is.
        cancelCheck() is asked between every phase (loading the inference engine, loading the network, each
        registration iteration, each batch of slices, before writing); True stops with CancelledError.
        statusCallback(text) names each phase as it starts.
        Returns the output node (``outputNode`` if given, else a new node added to the scene).
        Raises ECFusionError (bad input) or ECFusionLib's errors (weights, cancel); the scene is then unchanged.
        """
        phase = phase_reporter(statusCallback, cancelCheck)
        phase()
        settings = ProcessSettings.with_overrides(settings, overrides)
        self._check_inputs(anatomicalNode, functionalNode, outputNode)
        settings = settings.checked()
        spec = self.taskSpec(functionalNode, settings.task)
        check_output_class(outputNode, spec)
        backend = resolve_backend(settings.backend)

        phase(ENGINE_LOADING.get(backend, "Loading..."))
        from ECFusionLib.backends import load_network

        phase("Loading the network...")
        model, weights_info = load_network(spec.name, settings.weights, backend=backend, device=settings.device)
        phase(f"Registering ({settings.register})..." if settings.register != "none" else "")
        reg_ras = self._registration_matrix(anatomicalNode, functionalNode, settings.register,
                                            registrationTransformNode, cancelCheck)
        if mv.overlap_fraction(functionalNode, anatomicalNode, reg_ras) == 0.0:
            raise ECFusionError(f"'{functionalNode.GetName()}' and '{anatomicalNode.GetName()}' do not overlap in space: "
                                "check their transforms, or register them first")
        phase("Resampling...")
        images, colour_info = self._fusion_inputs(anatomicalNode, functionalNode, spec, settings, reg_ras)
        phase("Fusing...")
        result = self._fuse(images, spec, settings, model, weights_info, progressCallback, cancelCheck)
        phase("Writing the result...")  # a cancel during the last batch still leaves the scene unchanged
        self._check_still_in_scene(anatomicalNode, functionalNode, outputNode)
        if result.metadata["alignment"]["misaligned"] and reg_ras is None:
            logging.warning("ECFusion: %s and %s look misaligned (head containment %.2f): consider 'Register before fusion'",
                            anatomicalNode.GetName(), functionalNode.GetName(), result.metadata["alignment"]["containment"])
        output = self._write_output(result, anatomicalNode, functionalNode, outputNode, spec, colour_info)
        if reg_ras is not None:
            self._record_registration(output, reg_ras, settings.register, registrationTransformNode, anatomicalNode,
                                      functionalNode)
        return output

    def _fusion_inputs(self, anatomicalNode, functionalNode, spec: TaskSpec, settings: ProcessSettings, reg_ras):
        """([anatomical, second] SimpleITK images on the anatomical grid, the colouring used): the functional
        volume resampled through ``reg_ras`` (4x4 RAS or None); a scalar one of a colour-keeping task coloured as
        displayed (or with the settings' overrides), else its values as they are."""
        moved = mv.resample_onto(functionalNode, anatomicalNode, registration=reg_ras)
        colour_info = {}
        if spec.keep_colour and functionalNode.GetImageData().GetNumberOfScalarComponents() != 3:
            second_arr, colour_info = self._functional_rgb(functionalNode, moved, settings.color_node_id,
                                                           settings.window, settings.level)
        else:
            second_arr = mv.array_from_volume_data(moved)
        images = [mv.sitk_image_on(anatomicalNode, arr) for arr in (mv.array_from_volume(anatomicalNode), second_arr)]
        return images, colour_info

    @staticmethod
    def _fuse(images, spec: TaskSpec, settings: ProcessSettings, model, weights_info, progress, cancel):
        """``ECFusionLib.fusion.fuse_images`` on the two images with the run's settings."""
        from ECFusionLib.fusion import FusionSettings, fuse_images

        fusion = FusionSettings(task=spec.name, device=settings.device, precision=settings.precision,
                                batch_size=settings.batch_size, axis=settings.axis, ct_window=settings.ct_window,
                                ct_level=settings.ct_level, weights=settings.weights,
                                keep_salient=settings.keep_salient, backend=weights_info["backend"])
        return fuse_images(images[0], images[1], fusion, model=model, weights_info=weights_info, progress=progress,
                           cancel=cancel)

    def _check_still_in_scene(self, *nodes) -> None:
        """CancelledError when a node left the scene (closed without a cancel check noticing)."""
        for node in nodes:
            if node is not None and node.GetScene() is not self.scene:
                raise CancelledError("the scene was closed during the run; nothing was written")

    def _record_registration(self, output, reg_ras, registration, transformNode, anatomicalNode, functionalNode):
        """Store the registration in a transform node and name it in ``output``'s attributes."""
        tx = self._store_registration(reg_ras, registration, transformNode, anatomicalNode, functionalNode)
        output.SetAttribute(ATTRIBUTE_PREFIX + "registration", registration if registration != "none" else "given transform")
        output.SetAttribute(ATTRIBUTE_PREFIX + "registration_transform", tx.GetID())

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
        window, level = default_window_level(mv.array_from_volume(functionalNode), window, level, table)
        rgb = apply_colormap(values, table, float(window), float(level))
        return rgb, {"colorNode": name, "window": float(window), "level": float(level)}

    def _write_output(self, result, anatomicalNode, functionalNode, outputNode, spec: TaskSpec, colour_info):
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(result.image)
        rgb = arr.ndim == 4
        cls = "vtkMRMLVectorVolumeNode" if rgb else "vtkMRMLScalarVolumeNode"
        check_output_class(outputNode, spec, cls)
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
        logging.info("ECFusion: wrote %s (%s, %s)", node.GetName(), spec.name, meta.get("device"))
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

