"""Module-file facts that need no Slicer code: the vocabularies, the .ui's own items, the Apply/Cancel button and
the dependency questions.

How the panel binds to its parameter node is NOT checked here: Testing/test_slicer_widget_on_slicer_source.py
runs Slicer's own parameterNodeWrapper and ScriptedLoadableModule (5.8.1, 5.10.0, 5.12.3, preview) on the real
widget. (This file used to re-implement Slicer's connector rules, and encoded the same wrong Union key as the
module.) Here the module file is imported with the application-only modules replaced by small stand-ins.
"""
from __future__ import annotations

import importlib.util
import sys
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slicer_app_fakes import modules_replaced

slicer = pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "ECFusionSlicer"
UI = MODULE / "Resources" / "UI" / "ECFusionSlicer.ui"


# ----------------------------------------------------------------- stand-ins for the application-only modules
class _Validator:
    pass


class Choice(_Validator):  # slicer.parameterNodeWrapper.validators.Choice(choices)
    def __init__(self, choices):
        self.choices = choices


class WithinRange(_Validator):  # validators.WithinRange(minimum, maximum)
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


class Minimum(_Validator):
    def __init__(self, minimum):
        self.minimum = minimum


class Maximum(_Validator):
    def __init__(self, maximum):
        self.maximum = maximum


class RangeBounds(_Validator):
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _stub_modules() -> dict[str, types.ModuleType]:
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.Choice, pnw.WithinRange, pnw.Minimum, pnw.Maximum, pnw.RangeBounds = Choice, WithinRange, Minimum, Maximum, RangeBounds
    pnw.parameterNodeWrapper = lambda cls=None: cls if cls is not None else (lambda c: c)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleLogic"):
        setattr(slm, name, type(name, (), {}))
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (), {})
    return {"qt": types.ModuleType("qt"), "ctk": types.ModuleType("ctk"), "slicer.parameterNodeWrapper": pnw,
            "slicer.ScriptedLoadableModule": slm, "slicer.util": util}


@pytest.fixture(scope="module")
def module():
    with modules_replaced({**_stub_modules(), "ECFusionSlicer_under_test": None}):
        spec = importlib.util.spec_from_file_location("ECFusionSlicer_under_test", MODULE / "ECFusionSlicer.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # get_type_hints resolves the annotations in the module's globals
        spec.loader.exec_module(mod)
        yield mod


@pytest.fixture(scope="module")
def fields(module) -> dict:
    return typing.get_type_hints(module.ECFusionSlicerParameterNode, include_extras=True)


def split(annotated) -> tuple[object, tuple]:
    """(type, annotations) of a possibly Annotated field type."""
    if typing.get_origin(annotated) is typing.Annotated:
        args = typing.get_args(annotated)
        return args[0], tuple(args[1:])
    return annotated, ()


def first(annotations, kind):
    return next((a for a in annotations if isinstance(a, kind)), None)


def bound_widgets() -> dict[str, ET.Element]:
    """SlicerParameterName -> <widget> element."""
    out = {}
    for w in ET.parse(UI).getroot().iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[p.find("string").text] = w
    return out


def prop(widget: ET.Element, name: str):
    for p in widget.findall("property"):
        if p.get("name") == name:
            child = p[0]
            return child.text == "true" if child.tag == "bool" else child.text
    return None


def combo_items(widget: ET.Element) -> list[str]:
    """The items a QComboBox lists in the .ui itself (<item><property name="text">)."""
    return [item.find("property/string").text or "" for item in widget.findall("item")]


# ----------------------------------------------------------------- widget behaviour that needs no Qt
class _Widget(types.SimpleNamespace):
    pass


def _fake_ui():
    return types.SimpleNamespace(**{name: _Widget(enabled=True, text="", toolTip="", value=0, maximum=1, format="",
                                                  plainText="")
                                    for name in ("inputsCollapsibleButton", "advancedCollapsibleButton",
                                                 "outputsCollapsibleButton", "applyButton", "progressBar")},
                                 statusLabel=types.SimpleNamespace(appendPlainText=lambda text: None, plainText=""))


def test_a_double_click_on_apply_does_not_cancel_and_inputs_are_locked(module, monkeypatch):
    w = module.ECFusionSlicerWidget.__new__(module.ECFusionSlicerWidget)
    w.ui, w._parameterNode, w._cancelRequested = _fake_ui(), None, False
    monkeypatch.setattr(module.slicer, "app", types.SimpleNamespace(processEvents=lambda: None), raising=False)
    w._setRunning(True)
    assert w.ui.applyButton.text == "Cancel" and w.ui.applyButton.enabled
    assert not any(getattr(w.ui, s).enabled for s in ("inputsCollapsibleButton", "advancedCollapsibleButton",
                                                         "outputsCollapsibleButton"))
    w.onApplyButton()  # the second click of a double-click
    assert not w._cancelRequested
    w._startedAt -= module.DOUBLE_CLICK_S + 0.1
    w.onApplyButton()  # a real Cancel
    assert w._cancelRequested and w._isCancelled()
    w._setRunning(False)
    assert w.ui.applyButton.text == "Apply" and w.ui.inputsCollapsibleButton.enabled
    assert not w.ui.applyButton.enabled  # no volumes chosen


def test_scene_close_cancels_a_run(module, monkeypatch):
    w = module.ECFusionSlicerWidget.__new__(module.ECFusionSlicerWidget)
    w.ui, w._parameterNode, w._running, w._cancelRequested = _fake_ui(), None, True, False
    w.log = lambda text: None
    w.onSceneStartClose(None, None)
    assert w._cancelRequested


def _fake_app(testing: bool, no_main_window: bool = False):
    return types.SimpleNamespace(commandOptions=lambda: types.SimpleNamespace(noMainWindow=no_main_window),
                                 testingEnabled=lambda: testing, processEvents=lambda: None)


def _no_engine(module, monkeypatch, torch_version=None, onnx_backend=True, intel_mac=False):
    """Pretend torch (at ``torch_version``) and onnxruntime are absent; the versions are what the module reads."""
    deps = module.dependencies
    versions = {"torch": torch_version, "onnxruntime": None}
    monkeypatch.setattr(deps, "installed_version", lambda name: versions.get(name))
    monkeypatch.setattr(deps, "library_backends", lambda: ("torch", "onnxruntime") if onnx_backend else ("torch",))
    monkeypatch.setattr(deps, "is_intel_mac", lambda: intel_mac)
    return versions


def _pytorch_utils(monkeypatch, installs):
    pytorch_utils = types.ModuleType("PyTorchUtils")
    installed = types.SimpleNamespace(__version__="2.13.0+cpu")  # what installTorch returns: the new torch module
    pytorch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(
        installTorch=lambda **kw: installs.append(kw) or installed)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorch_utils)


def test_testing_mode_never_installs_and_the_self_test_reports_a_skip(module, monkeypatch):
    """Without any inference engine the self-test passes with a "skipped" message (Reload and Test calls
    runTest() directly, where a skipTest counts as a failure), and nothing is installed without asking."""
    installs = []
    _pytorch_utils(monkeypatch, installs)
    _no_engine(module, monkeypatch)
    monkeypatch.setattr(module.slicer, "app", _fake_app(testing=True), raising=False)
    monkeypatch.setattr(module.slicer, "mrmlScene", types.SimpleNamespace(Clear=lambda: None), raising=False)
    assert module.ensure_dependencies(interactive=True) is False and not installs
    test = module.ECFusionSlicerTest()
    shown = []
    test.delayDisplay = shown.append
    test.runTest()
    assert shown and "skipped" in shown[-1]


def test_without_torch_onnxruntime_is_offered_once_and_installed(module, monkeypatch):
    """An Intel Mac (or any machine) without torch: one question, naming the Mac's limit, then pip installs
    onnxruntime with slicer.util.pip_install and the run goes on; PyTorch is not asked."""
    versions = _no_engine(module, monkeypatch, intel_mac=True)
    installs, asked = [], []
    _pytorch_utils(monkeypatch, installs)
    monkeypatch.setattr(module.slicer, "app", _fake_app(testing=False), raising=False)

    def pip_install(name):
        installs.append(name)
        versions["onnxruntime"] = "1.19.2"

    util = types.SimpleNamespace(confirmOkCancelDisplay=lambda text: asked.append(text) or True,
                                 pip_install=pip_install, errorDisplay=lambda text: pytest.fail(text))
    monkeypatch.setattr(module.slicer, "util", util, raising=False)
    assert module.ensure_dependencies(interactive=True) is True
    assert installs == ["onnxruntime"] and len(asked) == 1
    assert "Intel build" in asked[0] and "2.2.2" in asked[0] and "ONNX Runtime" in asked[0]


def test_an_old_torch_is_never_imported_then_replaced(module, monkeypatch):
    """torch 2.1 installed, no ONNX Runtime backend in this ECFusionLib: the version is read without importing
    torch, and PyTorch's own installer is asked (one confirmation, its own) for torch >= 2.2."""
    _no_engine(module, monkeypatch, torch_version="2.1.2", onnx_backend=False)
    installs = []
    _pytorch_utils(monkeypatch, installs)
    monkeypatch.setattr(module.slicer, "app", _fake_app(testing=False), raising=False)
    hidden = sys.modules.pop("torch", None)
    try:
        assert module.ensure_dependencies(interactive=True) is True
        assert "torch" not in sys.modules, "the old torch was imported"
    finally:
        if hidden is not None:
            sys.modules["torch"] = hidden
    assert installs and installs[0]["torchVersionRequirement"] == ">=2.2" and installs[0]["askConfirmation"]


# ----------------------------------------------------------------- one vocabulary: the registry
def test_choice_lists_are_the_registry_vocabularies(fields):
    """The panel offers exactly what ECFusionLib.tasks (the command line's choices=) defines, in its order; the
    first entry is the default."""
    from ECFusionLib import tasks

    expected = {"task": ["auto", *tasks.TASK_NAMES], "device": list(tasks.DEVICES),
                "precision": list(tasks.PRECISIONS), "axis": list(tasks.AXES_ANATOMICAL),
                "registration": list(tasks.REGISTRATION_MODES), "backend": ["auto", "torch", "onnxruntime"]}
    wrapper = sys.modules["ECFusionSlicer_under_test"].ECFusionSlicerParameterNode
    with_choice = {name for name, annotated in fields.items() if first(split(annotated)[1], Choice) is not None}
    assert with_choice == set(expected)
    for name, choices in expected.items():
        assert list(first(split(fields[name])[1], Choice).choices) == choices, name
        assert getattr(wrapper, name) == choices[0], name


def test_combo_box_items_come_from_the_choice_lists(fields):
    """Slicer's QComboBoxToStringableConnector (guiConnectors.py, read at 113c6bd and 0e31bd8) clears a bound combo
    box and adds one item per Choice entry when connectGui runs, so the .ui needs no items; any it lists must be
    the Choice list itself, or the panel would show one list before the GUI is connected and another after."""
    combos = {name: w for name, w in bound_widgets().items() if w.get("class") == "QComboBox"}
    assert combos, "no bound combo boxes found in the .ui"
    for name, widget in combos.items():
        items = combo_items(widget)
        choices = list(first(split(fields[name])[1], Choice).choices)
        assert items in ([], choices), f"{name}: the .ui lists {items}, the parameter node {choices}"


def test_check_boxes_start_as_their_default(fields):
    wrapper = sys.modules["ECFusionSlicer_under_test"].ECFusionSlicerParameterNode
    boxes = {name: w for name, w in bound_widgets().items() if w.get("class") == "QCheckBox"}
    assert "keepSalient" in boxes
    for name, widget in boxes.items():
        assert bool(prop(widget, "checked")) == getattr(wrapper, name), name
