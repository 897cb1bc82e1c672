"""Drive the real ECFusionSlicerWidget on Slicer's own Python code at one release; run as a subprocess.

    python Testing/slicer_widget_driver.py ../shared/slicer-source/v5.8.1 [scenario ...]

Prints one JSON object {scenario: "ok" or what went wrong}. Each scenario starts from a new scene and a freshly
loaded module, like a Slicer session: Slicer's ``parameterNodeWrapper``, ``slicer.util`` and
``ScriptedLoadableModule`` come from the given folder (Testing/slicer_app_fakes.py), the MRML from slicer-core,
the panel from the real ``Resources/UI/ECFusionSlicer.ui``. Where a fusion runs, it runs on a small phantom.
Used by Testing/test_slicer_widget_on_slicer_source.py.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
import traceback
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODULE_DIR = ROOT / "ECFusionSlicer"
MODULE_FILE = MODULE_DIR / "ECFusionSlicer.py"
sys.path[:0] = [str(HERE), str(MODULE_DIR), str(ROOT)]

import slicer_app_fakes  # noqa: E402

# What a user sets in the panel before leaving it (none of these is a default).
EDITS = {"task": "CT-MRI", "device": "cpu", "precision": "fp32", "axis": "coronal", "registration": "rigid",
         "batchSize": 7, "ctWindow": 350.0, "ctLevel": 45.0, "keepSalient": False, "backend": "onnxruntime"}


class Session:
    """A Slicer session: a scene with an MRI and a PET phantom, the module loaded, its panel set up."""

    def __init__(self, with_volumes=True):
        import slicer
        from ECFusionSlicerLib import mrml_volumes as mv

        self.slicer = slicer
        slicer.mrmlScene = mv.new_scene()
        slicer.app.pending.clear()
        slicer.app.testing = True
        if with_volumes:
            self.mri, self.pet = add_phantom(slicer.mrmlScene)
        spec = importlib.util.spec_from_file_location("ECFusionSlicer", MODULE_FILE)
        self.module = importlib.util.module_from_spec(spec)
        sys.modules["ECFusionSlicer"] = self.module
        spec.loader.exec_module(self.module)
        slicer.modules.ecfusionslicer = slicer_app_fakes.LoadedModule("ECFusionSlicer", MODULE_FILE)
        self.module.ECFusionSlicer(slicer.modules.ecfusionslicer)
        self.panel = slicer.modules.ecfusionslicer.panel
        self.panel.create_widget()

    @property
    def widget(self):
        return self.slicer.modules.ECFusionSlicerWidget

    def enter(self):
        self.panel.isEntered = True
        self.widget.enter()

    def choose_inputs(self):
        """What a user does first: the MRI is preselected; pick the PET as the functional volume."""
        w = self.bound()
        check(w["anatomicalVolume"].currentNode() is self.mri, "the MRI is not preselected")
        w["functionalVolume"].setCurrentNode(self.pet)

    def exit(self):
        self.widget.exit()
        self.panel.isEntered = False

    def bound(self) -> dict:
        """SlicerParameterName -> widget of the panel."""
        ui = self.widget.ui
        return {w.property("SlicerParameterName"): w for w in vars(ui).values()
                if hasattr(w, "property") and w.property("SlicerParameterName")}

    def stored(self) -> dict:
        """The values the wrapper reads back from the parameter node."""
        p = self.module.ECFusionSlicerParameterNode(self.widget.logic.getParameterNode())
        return {name: getattr(p, name) for name in EDITS}

    def shown(self) -> dict:
        """The values the panel's widgets show."""
        w = self.bound()
        out = {}
        for name in EDITS:
            widget = w[name]
            if hasattr(widget, "currentText"):
                out[name] = widget.currentText
            elif hasattr(widget, "checked"):
                out[name] = widget.checked
            else:
                out[name] = widget.value
        return out

    def edit_like_a_user(self):
        w = self.bound()
        for name, value in EDITS.items():
            widget = w[name]
            if hasattr(widget, "currentText"):
                widget.currentIndex = [widget.itemText(i) for i in range(widget.count)].index(value)
            elif hasattr(widget, "checked"):
                widget.checked = value
            else:
                widget.value = value

    def volumes(self):
        scene = self.slicer.mrmlScene
        return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]

    def apply(self):
        self.widget.ui.applyButton.click()


def add_phantom(scene):
    """A 40 x 48 x 40 MRI and PET phantom (4.5 mm voxels), the PET shown with PET-Heat, as a user loads them."""
    import SimpleITK as sitk
    from slicer_helpers import add_volume, ijk2ras

    from ECFusionLib.phantom import make_phantom

    ph = make_phantom(size=(40, 48, 40), seed=3, spacing=4.5)
    nodes = []
    for key, name in (("MRI", "T1 phantom"), ("PET", "PET phantom")):
        img = ph[key]
        o = img.GetOrigin()
        nodes.append(add_volume(scene, sitk.GetArrayFromImage(img), ijk2ras([-4.5, -4.5, 4.5], [-o[0], -o[1], o[2]]),
                                name))
    nodes[1].GetDisplayNode().SetAndObserveColorNodeID(scene.GetFirstNodeByName("PET-Heat").GetID())
    return nodes


def check(condition, message):
    if not condition:
        raise AssertionError(message)


# ----------------------------------------------------------------------------------------------- scenarios
def every_widget_is_bound():
    """Each widget with SlicerParameterName gets a connector: a user's edit reaches the parameter node; spin-box
    ranges stay those of the .ui; the node selectors list what the logic accepts."""
    s = Session()
    s.enter()
    check(not s.widget.ui.applyButton.enabled, "Apply is enabled before a functional volume is chosen")
    s.choose_inputs()
    check(s.widget.ui.applyButton.enabled, "Apply is not enabled with an MRI and a PET in the scene")
    s.edit_like_a_user()
    check(s.stored() == EDITS, f"edits did not reach the parameter node: {s.stored()}")
    w = s.bound()
    check((w["batchSize"].minimum, w["batchSize"].maximum) == (0, 256), "batch size range reset")
    check((w["ctWindow"].minimum, w["ctWindow"].maximum) == (1.0, 10000.0), "CT window range reset")
    check((w["ctLevel"].minimum, w["ctLevel"].maximum) == (-2000.0, 5000.0), "CT level range reset")
    out = {n.GetClassName() for n in w["outputVolume"].nodes()}
    check(w["outputVolume"].noneEnabled and out == {"vtkMRMLScalarVolumeNode"}, f"output lists {out}")
    vec = s.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "earlier RGB result")
    check(vec in w["outputVolume"].nodes(), "an earlier RGB result is not offered as output")


def reentering_keeps_the_choices():
    """setup, enter, edit, exit, enter: the edits stay in the parameter node and on screen."""
    s = Session()
    s.enter()
    s.edit_like_a_user()
    s.exit()
    s.enter()
    check(s.stored() == EDITS, f"parameter node after re-entering: {s.stored()}")
    check(s.shown() == EDITS, f"panel after re-entering: {s.shown()}")
    s.exit()
    s.enter()
    check(s.stored() == EDITS, f"parameter node after entering a third time: {s.stored()}")


def earlier_result_receives_the_output():
    """Pick an earlier result in 'Fused volume' and Apply: that node receives the fused image, no node is added."""
    s = Session()
    s.enter()
    s.choose_inputs()
    w = s.bound()
    w["device"].currentIndex = [w["device"].itemText(i) for i in range(w["device"].count)].index("cpu")
    earlier = s.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "earlier result")
    w["outputVolume"].setCurrentNode(earlier)
    check(s.widget._parameterNode.outputVolume is earlier, "the wrapper did not store the chosen output")
    before = len(s.volumes())
    s.apply()
    log = s.widget.ui.statusLabel.plainText
    check(earlier.GetImageData() is not None and earlier.GetAttribute("ECFusion.task") == "PET-MRI",
          f"the chosen node did not receive the result; log: {log}")
    check(len(s.volumes()) == before, f"{len(s.volumes()) - before} volume(s) added instead; log: {log}")
    check(earlier.GetImageData().GetDimensions() == s.mri.GetImageData().GetDimensions(), "wrong grid")


def _close_scene_when(s, predicate):
    """Close the scene (as File > Close Scene does) at the first event-loop turn after a log line matching
    ``predicate``: the user's click waits in the event queue until the module lets Qt run."""
    label = s.widget.ui.statusLabel
    original = label.appendPlainText
    closed = []

    def append(text):
        original(text)
        if predicate(text) and not closed:
            closed.append(text)
            s.slicer.app.pending.append(lambda: s.slicer.mrmlScene.Clear(0))

    label.appendPlainText = append
    return closed


def scene_close_during_a_run():
    """Closing the scene while a run is in progress adds nothing to the next scene: during the fusion, and in the
    window between the last cancel check and writing (the 'Writing the result...' log line lets Qt run)."""
    for moment in ("Fusing", "Writing"):
        s = Session()
        s.enter()
        s.choose_inputs()
        closed = _close_scene_when(s, lambda text, m=moment: text.startswith(m))
        s.apply()
        scene = s.slicer.mrmlScene
        check(closed, f"the run never reached '{moment}'")
        left = [n.GetName() for n in s.volumes()]
        check(not left, f"scene closed at '{moment}': the new scene holds {left}")
        check(s.widget.ui.applyButton.text == "Apply", "the panel still shows Cancel")
        check(scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode") == 0, "a transform was added")


def reload_replaces_widget_and_library():
    """Developer > Reload: a new widget with the same choices, the old one cleaned up, and ECFusionLib reloaded
    (an edited ECFusionLib file takes effect without restarting Slicer)."""
    s = Session()
    s.enter()
    s.choose_inputs()
    s.edit_like_a_user()
    old_widget = s.widget
    # Stand-ins for an edit of the files on disk: Reload must execute them again.
    sys.modules["ECFusionLib.tasks"].DEVICES = ("stale",)
    sys.modules["ECFusionSlicerLib.logic"].CHOICES = "stale"
    old_widget.onReload()
    check(s.widget is not old_widget, "Reload kept the old widget")
    check(sys.modules["ECFusionSlicerLib.logic"].CHOICES != "stale", "ECFusionSlicerLib was not reloaded")
    check(sys.modules["ECFusionLib.tasks"].DEVICES != ("stale",), "ECFusionLib was not reloaded")
    check(not old_widget.Observations, "the old widget still observes the scene")
    check(s.stored() == EDITS and s.shown() == EDITS, f"choices after Reload: {s.stored()} / {s.shown()}")
    check(s.widget.ui.applyButton.enabled, "Apply disabled after Reload")


def _run_self_test(module):
    """Run the module's ScriptedLoadableModuleTest as ctest does (unittest calls each test_* method)."""
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(module.ECFusionSlicerTest)
    for case in suite:
        case.delayDisplay = lambda *a, **k: None
    result = unittest.TestResult()
    suite.run(result)
    return result, [f"{t.id()}: {tb.strip().splitlines()[-1]}" for t, tb in result.errors + result.failures]


def self_test_with_onnx_runtime_only():
    """The self-test (what ctest and Reload and Test run) fuses its phantom where only ONNX Runtime is installed."""
    with slicer_app_fakes.modules_replaced({"torch": None}):
        s = Session(with_volumes=False)
        result, problems = _run_self_test(s.module)
        check(not problems and not result.skipped and result.testsRun, f"self-test: {problems} {result.skipped}")


def ctest_without_an_inference_backend():
    """ctest runs the self-test class with unittest, which calls each test_* method directly: without torch and
    without onnxruntime every one must be skipped, none may error."""
    # None: the import fails, importlib.util.find_spec says "absent"
    with slicer_app_fakes.modules_replaced({"torch": None, "onnxruntime": None}):
        s = Session(with_volumes=False)
        result, problems = _run_self_test(s.module)
        check(not problems, f"ctest without torch: {problems}")
        check(result.skipped, "nothing reported as skipped")


def intel_mac_without_torch_ends_in_a_fused_volume():
    """Slicer's Intel build on a Mac, no PyTorch, no ONNX Runtime yet: the first Apply asks one question (it names
    the Mac's PyTorch 2.2.2 limit and offers ONNX Runtime), installs onnxruntime with Slicer's pip, and ends in a
    fused volume made with ONNX Runtime; PyTorch is never installed nor imported."""
    import platform

    saved = platform.system, platform.machine
    platform.system, platform.machine = (lambda: "Darwin"), (lambda: "x86_64")
    absent = {"torch": None, "onnxruntime": None, "PyTorchUtils": None}  # no PyTorch extension either
    try:
        with slicer_app_fakes.modules_replaced(absent) as hidden:
            _intel_mac_apply(hidden)
    finally:
        platform.system, platform.machine = saved


def _intel_mac_apply(hidden: dict):
    """The Apply of ``intel_mac_without_torch_ends_in_a_fused_volume``; ``hidden``: the modules made absent."""
    s = Session()
    s.slicer.app.testing = False  # a user's session: dialogs are shown
    asked, installed = [], []
    s.slicer.util.confirmOkCancelDisplay = lambda text, *a, **k: asked.append(text) or True
    s.slicer.util.errorDisplay = lambda text, *a, **k: asked.append("ERROR " + text)

    def pip_install(requirements, *a, **k):  # Slicer's pip: here the package is already on disk
        installed.append(requirements)
        if hidden["onnxruntime"] is None:
            sys.modules.pop("onnxruntime", None)
        else:
            sys.modules["onnxruntime"] = hidden["onnxruntime"]

    s.slicer.util.pip_install = pip_install
    s.enter()
    s.choose_inputs()
    s.apply()
    log = s.widget.ui.statusLabel.plainText
    check(len(asked) == 1 and "2.2.2" in asked[0] and "ONNX Runtime" in asked[0], f"questions: {asked}")
    check(installed == ["onnxruntime"], f"installed: {installed}")
    fused = [n for n in s.volumes() if n.GetAttribute("ECFusion.task")]
    check(len(fused) == 1 and fused[0].GetAttribute("ECFusion.backend") == "onnxruntime",
          f"no volume fused with ONNX Runtime; log: {log}")
    check(sys.modules.get("torch") is None, "torch was imported")


SCENARIOS = {f.__name__: f for f in (ctest_without_an_inference_backend, self_test_with_onnx_runtime_only,
                                     intel_mac_without_torch_ends_in_a_fused_volume, every_widget_is_bound,
                                     reentering_keeps_the_choices, earlier_result_receives_the_output,
                                     scene_close_during_a_run, reload_replaces_widget_and_library)}


def main(argv):
    slicer_app_fakes.install(Path(argv[1]))
    names = argv[2:] or list(SCENARIOS)
    results = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            SCENARIOS[name]()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - reported to the test, which shows it
            results[name] = traceback.format_exc(limit=-6)
        results[name + ".seconds"] = round(time.perf_counter() - t0, 2)
    print("ECFUSION-RESULTS " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
