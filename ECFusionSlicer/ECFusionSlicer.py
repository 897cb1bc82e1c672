"""ECFusion for 3D Slicer: fuse an MRI with CT, PET or SPECT slice by slice (the ECFusion network).

The widget is a thin layer over ECFusionSlicerLib.logic.ECFusionSlicerLogic, which holds all the
behaviour and is tested without Qt (Testing/test_slicer_logic.py); the widget itself runs on Slicer's own
parameterNodeWrapper/util/ScriptedLoadableModule in Testing/test_slicer_widget_on_slicer_source.py. Nothing
heavy (torch, pip) happens at import or in constructors: an inference engine (PyTorch, or ONNX Runtime) is
checked for, and installed on request, when Apply is pressed (ECFusionSlicerLib/dependencies.py).
"""
from __future__ import annotations

import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Union

import slicer
import vtk

# Run from a source checkout (Extension Wizard "Select Extension", or the ECFusionSlicer folder added to the
# additional module paths): Slicer puts this folder on sys.path, ECFusionLib sits one level up. An installed
# extension has ECFusionLib beside the module already, and this adds nothing.
_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "ECFusionLib" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.append(str(_CHECKOUT))
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,  # noqa: E402
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin  # noqa: E402

from ECFusionSlicerLib import dependencies  # noqa: E402
from ECFusionSlicerLib.logic import ECFusionSlicerLogic, first_anatomical_candidate  # noqa: E402 (console API)
from ECFusionSlicerLib.parameters import CHOICES, DEFAULTS, LIMITS, ProcessSettings  # noqa: E402, F401 (console API)

TORCH_REQUIREMENT = ">=" + ".".join(map(str, dependencies.TORCH_MINIMUM_NETWORK))
DOUBLE_CLICK_S = 1.0  # an Apply click this soon after starting is the second half of a double-click: ignored


class ECFusionSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ECFusion"
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = []
        self.parent.contributors = ["ECFusion for 3D Slicer developers"]
        self.parent.helpText = (
            "Fuse an anatomical MRI with a CT, PET or SPECT volume using the ECFusion network "
            "(edge-augmented encoder, cross-scale transformer fusion). PET/SPECT colours are kept: the luminance "
            "is fused and the colour put back. See the <a href='https://github.com/ecfusion/SlicerECFusion'>README</a> "
            "for the console API and batch use."
        )
        self.parent.acknowledgementText = (
            "Method: Luo, Wu, Rojas Pino, Ding, Scientific Reports 2025. Training data: the Harvard Whole Brain Atlas "
            "(K. A. Johnson, J. A. Becker)."
        )


@parameterNodeWrapper
class ECFusionSlicerParameterNode:
    """Saved with the scene; the names, types and defaults are ECFusionSlicerLib.parameters' DEFAULTS, the choices
    its CHOICES and the limits its LIMITS, which come from ECFusionLib.options (the ``fuse`` options the command line
    reads too).

    Each field bound to a .ui widget (property SlicerParameterName) has a type that one of Slicer's GUI connectors
    accepts (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py; checked by Testing/test_slicer_gui_contract.py):
    qMRMLNodeComboBox - a node class or typing.Union of node classes and None; QComboBox - str with Choice;
    QSpinBox - int; QDoubleSpinBox - float; QCheckBox - bool. The spin-box connectors reset the widget's range unless
    the field carries WithinRange, so the limits are given here (from parameters.LIMITS, which the logic also checks).
    The QComboBox connector (QComboBoxToStringableConnector) clears the combo box and adds one item per Choice entry
    when the GUI is connected, so the .ui lists no items: the Choice lists below are the only copy.
    """

    anatomicalVolume: slicer.vtkMRMLScalarVolumeNode
    functionalVolume: slicer.vtkMRMLScalarVolumeNode
    # An RGB (PET/SPECT) result is a vtkMRMLVectorVolumeNode: both classes are offered. The connector writes the
    # annotation's classes into the combobox's nodeTypes; the UnionSerializer stores the reference under
    # "outputVolume.<index>"; the logic reads it through this wrapper's attribute. None = create a new volume.
    outputVolume: Union[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLVectorVolumeNode, None]
    task: Annotated[str, Choice(list(CHOICES["task"]))] = DEFAULTS["task"]
    device: Annotated[str, Choice(list(CHOICES["device"]))] = DEFAULTS["device"]
    precision: Annotated[str, Choice(list(CHOICES["precision"]))] = DEFAULTS["precision"]
    axis: Annotated[str, Choice(list(CHOICES["axis"]))] = DEFAULTS["axis"]
    batchSize: Annotated[int, WithinRange(*LIMITS["batchSize"])] = DEFAULTS["batchSize"]
    ctWindow: Annotated[float, WithinRange(*LIMITS["ctWindow"])] = DEFAULTS["ctWindow"]
    ctLevel: Annotated[float, WithinRange(*LIMITS["ctLevel"])] = DEFAULTS["ctLevel"]
    # Bound by hand to weightsPathLineEdit (a ctkPathLineEdit): Slicer's only connector for that widget takes
    # pathlib types, and an empty pathlib.Path serialises as "." - not "no weights file".
    weightsPath: str = DEFAULTS["weightsPath"]
    registration: Annotated[str, Choice(list(CHOICES["registration"]))] = DEFAULTS["registration"]
    registrationTransform: slicer.vtkMRMLLinearTransformNode
    keepSalient: bool = DEFAULTS["keepSalient"]  # the keep-salient rule (ECFusionLib.salient) after the network
    backend: Annotated[str, Choice(list(CHOICES["backend"]))] = DEFAULTS["backend"]  # auto: torch, else ONNX Runtime


class ECFusionSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. While a run is in progress: Apply reads Cancel, the input sections are disabled, a click within
    DOUBLE_CLICK_S of starting is ignored, and closing the scene cancels the run (nothing is added)."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._startedAt = 0.0
        self._cancelRequested = False
        self._updatingWeightsPath = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ECFusionSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ECFusionSlicerLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        # ctkPathLineEdit::currentPathChanged(QString) - connected by hand (see ECFusionSlicerParameterNode.weightsPath)
        self.ui.weightsPathLineEdit.connect("currentPathChanged(QString)", self.onWeightsPathChanged)
        self.initializeParameterNode()

    def cleanup(self):
        self._cancelRequested = True
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self._running:  # the run stops at its next check and adds nothing to the closing scene
            self._cancelRequested = True
            self.log("The scene is closing: cancelling the run.")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onReload(self):
        """Reload the module's libraries too ("Reload" alone re-executes only this file): ECFusionSlicerLib and
        ECFusionLib are dropped from sys.modules, so this file's imports load the edited files afresh."""
        for name in [n for n in sys.modules if n.split(".")[0] in ("ECFusionSlicerLib", "ECFusionLib")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def initializeParameterNode(self):
        self.setParameterNode(ECFusionSlicerParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.anatomicalVolume:
            first = first_anatomical_candidate(slicer.mrmlScene)  # not a label map, RGB or earlier result
            if first:
                self._parameterNode.anatomicalVolume = first

    def boundWidgets(self) -> dict:
        """{parameter name: widget} for the panel's widgets with the dynamic property SlicerParameterName (what
        Slicer's connectGui looks for)."""
        return {w.property("SlicerParameterName"): w for w in vars(self.ui).values()
                if hasattr(w, "property") and w.property("SlicerParameterName")}

    def setParameterNode(self, node):
        # connectParametersToGui, not connectGui: in Slicer 5.8 connectGui returns no tag, so disconnectGui(None)
        # left the old connectors live, and on re-entering they wrote "first choice" into the parameter node
        # while the new connectors refilled the combo boxes (Slicer fixed connectGui after 5.8, b5a65a49a0).
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = node
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self.boundWidgets())
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None):
        if self._parameterNode and not self._updatingWeightsPath:
            self._updatingWeightsPath = True
            try:
                if self.ui.weightsPathLineEdit.currentPath != self._parameterNode.weightsPath:
                    self.ui.weightsPathLineEdit.currentPath = self._parameterNode.weightsPath
            finally:
                self._updatingWeightsPath = False
        self._checkCanApply()

    def onWeightsPathChanged(self, path):
        if self._parameterNode and not self._updatingWeightsPath:
            self._parameterNode.weightsPath = path or ""

    def _checkCanApply(self, caller=None, event=None):
        if self._running:
            return
        p = self._parameterNode
        ok = bool(p and p.anatomicalVolume and p.functionalVolume and p.anatomicalVolume != p.functionalVolume)
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = ("Fuse the two volumes" if ok else
                                       "Select two different volumes: the anatomical MRI and the CT/PET/SPECT")

    # -------------------------------------------------------------- run
    def onApplyButton(self):
        if self._running:  # the button reads "Cancel" while running
            if time.monotonic() - self._startedAt < DOUBLE_CLICK_S:
                return  # the second click of a double-click on Apply, not a Cancel
            self._cancelRequested = True
            self.ui.applyButton.enabled = False
            self.log("Cancelling...")
            return
        self._setRunning(True)
        try:
            with slicer.util.tryWithErrorDisplay("ECFusion failed.", waitCursor=False):
                if ensure_dependencies(interactive=True) and not self._cancelRequested:
                    self._run()
        finally:
            self._setRunning(False)

    def _setRunning(self, running):
        self._running = running
        if running:
            self._startedAt, self._cancelRequested = time.monotonic(), False
        for section in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton,
                        self.ui.outputsCollapsibleButton):
            section.enabled = not running
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = True
        if running:
            self.ui.progressBar.value = 0
            self.ui.progressBar.format = "starting"
            self.ui.statusLabel.plainText = ""
        else:
            self._checkCanApply()

    def _isCancelled(self):
        slicer.app.processEvents()  # keep the GUI responsive (and the Cancel button clickable)
        return self._cancelRequested

    def _run(self):
        from ECFusionLib.errors import CancelledError

        try:
            output = self.logic.processUsingParameterNode(
                self._parameterNode, progressCallback=self._onProgress,
                cancelCheck=self._isCancelled, statusCallback=self.log)
        except CancelledError:
            self.log("Cancelled: the scene is unchanged.")
            return
        self.log(f"Done: {output.GetName()} ({output.GetAttribute('ECFusion.task')}, "
                 f"{output.GetAttribute('ECFusion.device')})")
        slicer.util.setSliceViewerLayers(background=output, foreground=None, fit=True)

    def _onProgress(self, done, total):
        self.ui.progressBar.maximum = max(total, 1)
        self.ui.progressBar.value = done
        self.ui.progressBar.format = f"slice {done}/{total}"
        slicer.app.processEvents()

    def log(self, text):
        logging.info(text)
        self.ui.statusLabel.appendPlainText(text)
        slicer.app.processEvents()


def torch_available() -> bool:
    """True when a torch that runs the network is installed (its version read without importing it)."""
    return dependencies.torch_problem(dependencies.installed_version("torch")) is None


def inference_available() -> bool:
    """True when the network can run here: a usable torch, or ONNX Runtime where ECFusionLib has that backend."""
    return torch_available() or _plan().backend is not None


def _plan() -> dependencies.Plan:
    return dependencies.plan(dependencies.installed_version("torch"),
                             dependencies.installed_version(dependencies.ONNXRUNTIME_PACKAGE),
                             dependencies.is_intel_mac(), "onnxruntime" in dependencies.library_backends())


def ensure_dependencies(interactive: bool = True) -> bool:
    """Make sure the network can run (ECFusionSlicerLib.dependencies.plan decides; one question at most).

    Without a usable torch: offers ONNX Runtime (CPU, tens of MB) where ECFusionLib has that backend, else
    PyTorch through the PyTorch extension (on a Mac with Slicer's Intel build: PyTorch 2.2.2, the last for it).
    Nothing is imported before the versions are known, so an old torch is never imported and then replaced.
    Slicer's own numpy and SimpleITK are never replaced. Installs only when ``interactive`` and Slicer has a
    main window and is not testing; otherwise returns False with the reason logged."""
    if torch_available():
        return True
    interactive = (interactive and not slicer.app.commandOptions().noMainWindow
                   and not slicer.app.testingEnabled())
    plan = _plan()
    if plan.backend is not None:
        return True

    def tell(msg):
        if interactive:
            slicer.util.errorDisplay(msg)
        else:
            logging.error(msg)

    if plan.install is None or not interactive:
        tell(plan.message if interactive else plan.message.replace(
            " now?", ": open the ECFusion module and press Apply (not done in testing or without a main window)."))
        return False
    if plan.install == dependencies.ONNXRUNTIME_PACKAGE:
        if not slicer.util.confirmOkCancelDisplay(plan.message):
            return False
        # slicer.util.pip_install exists in every supported Slicer (5.12+ forwards it to slicer.packaging). Not
        # slicer.packaging.pip_ensure: it takes packaging Requirement objects and would ask a second time.
        slicer.util.pip_install(dependencies.ONNXRUNTIME_PACKAGE)
        importlib.invalidate_caches()  # the new package, installed by a pip subprocess, is seen by this one
        return dependencies.installed_version(dependencies.ONNXRUNTIME_PACKAGE) is not None
    try:
        import PyTorchUtils
    except ImportError:
        tell(plan.message + " Install the 'PyTorch' extension from the Extensions Manager, restart Slicer, then "
                            "press Apply again.")
        return False
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                           torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        tell("PyTorch was not installed, so ECFusion cannot run. Press Apply again to retry.")
        return False
    return dependencies.torch_problem(torch.__version__) is None


# ---------------------------------------------------------------------- self-test
class ECFusionSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode > Reload and Test, or ctest): small synthetic volumes through the logic.

    Without an inference engine it reports "skipped" and passes: "Reload and Test" calls runTest(), where a
    unittest skip would count as a failure; ctest calls test_fuse_phantom(), which skips. It never installs
    anything (testing mode would not ask)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    SKIPPED = "ECFusion self-test skipped: no inference engine (PyTorch or ONNX Runtime) is installed"

    def runTest(self):
        self.setUp()
        if not inference_available():
            self.delayDisplay(self.SKIPPED)  # not skipTest: "Reload and Test" would count it as a failure
            return
        self.test_fuse_phantom()

    def test_fuse_phantom(self):
        # ctest runs this method directly (unittest), not runTest: the guard must be here too, before any import
        # of ECFusionLib's network modules (they import torch).
        if not inference_available():
            self.skipTest(self.SKIPPED)
        import numpy as np
        import SimpleITK as sitk

        from ECFusionLib.errors import CancelledError
        from ECFusionLib.phantom import make_phantom
        from ECFusionLib.tasks import task_of_modality
        from ECFusionLib.weights import catalogue

        if task_of_modality("PET") not in catalogue():  # the phantom's PET
            self.delayDisplay("ECFusion self-test skipped: no bundled PET weights")
            return
        self.delayDisplay("Building a small phantom")
        ph = make_phantom(size=(40, 48, 40), seed=3, spacing=4.5)
        mri = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(ph["MRI"]), name="T1 phantom")
        pet = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(ph["PET"]), name="PET phantom")
        for node, img in ((mri, ph["MRI"]), (pet, ph["PET"])):
            node.SetSpacing(img.GetSpacing())
            o = img.GetOrigin()
            node.SetOrigin(-o[0], -o[1], o[2])  # LPS -> RAS
            node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)
        pet.GetDisplayNode().SetAndObserveColorNodeID(slicer.util.getNode("PET-Heat").GetID())
        nodes_before = slicer.mrmlScene.GetNumberOfNodes()
        logic = ECFusionSlicerLogic()
        with self.assertRaises(CancelledError):
            logic.process(mri, pet, device="cpu", cancelCheck=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes_before)
        self.delayDisplay("Fusing")
        out = logic.process(mri, pet, device="cpu")
        self.assertTrue(out.IsA("vtkMRMLVectorVolumeNode"))
        self.assertEqual(out.GetImageData().GetDimensions(), mri.GetImageData().GetDimensions())
        arr = slicer.util.arrayFromVolume(out)
        self.assertEqual(arr.shape[-1], 3)
        self.assertGreater(float(np.mean(arr)), 1.0)
        self.delayDisplay("Test passed")
