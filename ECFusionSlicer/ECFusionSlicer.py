"""ECFusion for 3D Slicer: fuse an MRI with CT, PET or SPECT slice by slice (the ECFusion network).

The widget is a thin layer over ECFusionSlicerLib.logic.ECFusionSlicerLogic, which holds all the
behaviour and is tested without Qt (Testing/test_slicer_logic.py). Nothing heavy (torch, pip) happens
at import or in constructors: PyTorch is checked for, and installed on request, when Apply is pressed.
"""
from __future__ import annotations

import logging
from typing import Annotated

import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from ECFusionSlicerLib.logic import ECFusionSlicerLogic  # the console API: ECFusionSlicer.ECFusionSlicerLogic()

TORCH_REQUIREMENT = "torch>=2.1"


class ECFusionSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ECFusion"
        self.parent.categories = ["Multimodal"]
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
    """Saved with the scene; the names match ECFusionSlicerLib.logic.PARAMETERS and its node references."""

    anatomicalVolume: slicer.vtkMRMLScalarVolumeNode
    functionalVolume: slicer.vtkMRMLScalarVolumeNode
    outputVolume: slicer.vtkMRMLScalarVolumeNode
    task: Annotated[str, Choice(["auto", "CT-MRI", "PET-MRI", "SPECT-MRI"])] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    precision: Annotated[str, Choice(["auto", "fp32", "bf16"])] = "auto"
    axis: Annotated[str, Choice(["auto", "axial", "coronal", "sagittal"])] = "auto"
    batchSize: int = 0
    ctWindow: float = 150.0
    ctLevel: float = 40.0
    weightsPath: str = ""
    registration: Annotated[str, Choice(["none", "rigid", "affine"])] = "none"
    registrationTransform: slicer.vtkMRMLLinearTransformNode


class ECFusionSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False

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
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(ECFusionSlicerParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.anatomicalVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.anatomicalVolume = first

    def setParameterNode(self, node):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = node
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        if self._running:
            return
        ok = bool(self._parameterNode and self._parameterNode.anatomicalVolume and self._parameterNode.functionalVolume)
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = "Fuse the two volumes" if ok else "Select the anatomical and functional volumes"

    # -------------------------------------------------------------- run
    def onApplyButton(self):
        if self._running:  # the button reads "Cancel" while running
            self._cancelRequested = True
            self.log("Cancelling after the current slice...")
            return
        with slicer.util.tryWithErrorDisplay("ECFusion failed.", waitCursor=False):
            if not ensure_dependencies():
                return
            self._run()

    def _run(self):
        from ECFusionLib.errors import CancelledError

        self._running, self._cancelRequested = True, False
        self.ui.applyButton.text = "Cancel"
        self.ui.progressBar.value = 0
        self.ui.statusLabel.plainText = ""
        self.log("Fusing... (the first run loads the network)")
        try:
            output = self.logic.processUsingParameterNode(
                self._parameterNode.parameterNode, progressCallback=self._onProgress,
                cancelCheck=lambda: self._cancelRequested)
            self.log(f"Done: {output.GetName()} ({output.GetAttribute('ECFusion.task')}, "
                     f"{output.GetAttribute('ECFusion.device')})")
            slicer.util.setSliceViewerLayers(background=output, foreground=None, fit=True)
        except CancelledError:
            self.log("Cancelled: the scene is unchanged.")
        finally:
            self._running = False
            self.ui.applyButton.text = "Apply"
            self._checkCanApply()

    def _onProgress(self, done, total):
        self.ui.progressBar.maximum = max(total, 1)
        self.ui.progressBar.value = done
        self.ui.progressBar.format = f"slice {done}/{total}"
        slicer.app.processEvents()  # keep the GUI responsive (and the Cancel button clickable)

    def log(self, text):
        logging.info(text)
        self.ui.statusLabel.appendPlainText(text)
        slicer.app.processEvents()


def ensure_dependencies() -> bool:
    """PyTorch through the PyTorch extension (asks once); nothing else is needed to fuse.

    Slicer's own numpy and SimpleITK are used as they are, never replaced. Returns False if the user
    declined or the PyTorch extension is missing (with a message saying what to do)."""
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        pass
    interactive = slicer.app.commandOptions().noMainWindow is False and not slicer.app.testingEnabled()
    try:
        import PyTorchUtils
    except ImportError:
        msg = "ECFusion needs PyTorch: install the 'PyTorch' extension from the Extensions Manager, restart Slicer, then try again."
        if interactive:
            slicer.util.errorDisplay(msg)
        else:
            logging.error(msg)
        return False
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=interactive,
                                                           torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
    return torch is not None


# ---------------------------------------------------------------------- self-test
class ECFusionSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode > Reload and Test): small synthetic volumes through the logic."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_fuse_phantom()

    def test_fuse_phantom(self):
        import numpy as np
        import SimpleITK as sitk

        from ECFusionLib.phantom import make_phantom
        from ECFusionLib.weights import catalogue

        if not ensure_dependencies():
            self.skipTest("PyTorch is not available")
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
        if "PET-MRI" not in catalogue():
            self.skipTest("no bundled PET-MRI weights")
        nodes_before = slicer.mrmlScene.GetNumberOfNodes()
        logic = ECFusionSlicerLogic()
        from ECFusionLib.errors import CancelledError

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
