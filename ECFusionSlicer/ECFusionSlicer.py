"""ECFusion for 3D Slicer: fuse an MRI with CT, PET or SPECT slice by slice (the ECFusion network).

The widget is a thin layer over ECFusionSlicerLib.logic.ECFusionSlicerLogic, which holds all the
behaviour and is tested without Qt (Testing/test_slicer_logic.py). Nothing heavy (torch, pip) happens
at import or in constructors: PyTorch is checked for, and installed on request, when Apply is pressed.
"""
from __future__ import annotations

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

from ECFusionSlicerLib.logic import (CHOICES, DEFAULTS, LIMITS, TORCH_MINIMUM,  # noqa: E402 (console API)
                                     ECFusionSlicerLogic, first_anatomical_candidate, torch_version_problem)

TORCH_REQUIREMENT = ">=" + ".".join(map(str, TORCH_MINIMUM))
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
    """Saved with the scene; the names, types and defaults are ECFusionSlicerLib.logic's DEFAULTS, and the choices
    its CHOICES, which come from ECFusionLib.tasks (the registry the command line reads too).

    Each field bound to a .ui widget (property SlicerParameterName) has a type that one of Slicer's GUI connectors
    accepts (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py; checked by Testing/test_slicer_gui_contract.py):
    qMRMLNodeComboBox - a node class or typing.Union of node classes and None; QComboBox - str with Choice;
    QSpinBox - int; QDoubleSpinBox - float; QCheckBox - bool. The spin-box connectors reset the widget's range unless
    the field carries WithinRange, so the limits are given here (from the logic's LIMITS, which it also checks).
    The QComboBox connector (QComboBoxToStringableConnector) clears the combo box and adds one item per Choice entry
    when the GUI is connected, so the .ui lists no items: the Choice lists below are the only copy.
    """

    anatomicalVolume: slicer.vtkMRMLScalarVolumeNode
    functionalVolume: slicer.vtkMRMLScalarVolumeNode
    # An RGB (PET/SPECT) result is a vtkMRMLVectorVolumeNode: both classes are offered. The connector writes the
    # annotation's classes into the combobox's nodeTypes; the UnionSerializer stores the reference under
    # "outputVolume_<index>" (logic.node_reference reads either form). None = create a new volume.
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
        """Reload the module's library too ("Reload" alone re-imports only this file)."""
        import importlib

        for name in ("ECFusionSlicerLib.mrml_volumes", "ECFusionSlicerLib.logic"):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def initializeParameterNode(self):
        self.setParameterNode(ECFusionSlicerParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.anatomicalVolume:
            first = first_anatomical_candidate(slicer.mrmlScene)  # not a label map, RGB or earlier result
            if first:
                self._parameterNode.anatomicalVolume = first

    def setParameterNode(self, node):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = node
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
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
                self._parameterNode.parameterNode, progressCallback=self._onProgress,
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
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def ensure_dependencies(interactive: bool = True) -> bool:
    """PyTorch through the PyTorch extension (asks once); nothing else is needed to fuse.

    Slicer's own numpy and SimpleITK are used as they are, never replaced. Installs only when ``interactive``
    and Slicer has a main window and is not testing (then PyTorchUtils would install without asking). Returns
    False, with a message saying what to do, when PyTorch is missing, too old, declined or not installable."""
    interactive = (interactive and not slicer.app.commandOptions().noMainWindow
                   and not slicer.app.testingEnabled())

    def tell(msg):
        if interactive:
            slicer.util.errorDisplay(msg)
        else:
            logging.error(msg)

    if torch_available():
        import torch

        problem = torch_version_problem(torch.__version__)
        if problem is None:
            return True
        if not interactive or not slicer.util.confirmOkCancelDisplay(
                f"{problem}. Update PyTorch now? Slicer must be restarted afterwards."):
            tell(problem)
            return False
    try:
        import PyTorchUtils
    except ImportError:
        tell("ECFusion needs PyTorch: install the 'PyTorch' extension from the Extensions Manager, restart Slicer, "
             "then try again.")
        return False
    if not interactive:
        tell("ECFusion needs PyTorch: open the ECFusion module and press Apply to install it (not done in "
             "testing or without a main window).")
        return False
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                           torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        tell("PyTorch was not installed, so ECFusion cannot run. Press Apply again to retry.")
        return False
    if torch_version_problem(torch.__version__) is not None:
        slicer.util.infoDisplay("PyTorch was updated: restart Slicer, then press Apply again.")
        return False
    return True


# ---------------------------------------------------------------------- self-test
class ECFusionSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode > Reload and Test, or ctest): small synthetic volumes through the logic.

    Without PyTorch it reports "skipped" and passes: "Reload and Test" calls runTest() directly, where a
    unittest skip would count as a failure, and it never installs PyTorch (testing mode would not ask)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        if not torch_available() or not ensure_dependencies(interactive=False):
            self.delayDisplay("ECFusion self-test skipped: PyTorch is not installed (or too old)")
            return
        self.test_fuse_phantom()

    def test_fuse_phantom(self):
        import numpy as np
        import SimpleITK as sitk

        from ECFusionLib.errors import CancelledError
        from ECFusionLib.phantom import make_phantom
        from ECFusionLib.weights import catalogue

        if "PET-MRI" not in catalogue():
            self.delayDisplay("ECFusion self-test skipped: no bundled PET-MRI weights")
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
