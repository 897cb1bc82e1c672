"""The module panel's .ui against its @parameterNodeWrapper class, by the rules of Slicer's GUI connectors.

There is no Slicer application here, so the contract is checked statically. In Slicer, ``connectGui`` builds a
connector for every widget with the dynamic property ``SlicerParameterName`` before connecting any: one widget/type
pair that no connector accepts raises, and the whole panel stays unbound (Apply never enables). The rules below
are those of ``Base/Python/slicer/parameterNodeWrapper/guiConnectors.py`` (Slicer/Slicer, read at 113c6bd and
0e31bd8; the same pairs in v5.6.2, v5.8.1, v5.10.0, see shared/design/slicer-conventions.md): each connector's
``canRepresent`` compares ``type(widget)`` exactly and the *unannotated* field type. Where a newer Slicer accepts
more pairs, this table is the stricter, older one, so a panel that passes here binds in every supported version.

The field types are the real ones: the module file is imported with the Slicer-application-only modules
(qt, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule, slicer.util) replaced by small stand-ins, and
MRML classes from slicer-core; ``typing.get_type_hints`` resolves the annotations as Slicer's wrapper does.
"""
from __future__ import annotations

import enum
import importlib.util
import pathlib
import sys
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

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
    saved = {name: sys.modules.get(name) for name in _stub_modules()}
    sys.modules.update(_stub_modules())
    try:
        spec = importlib.util.spec_from_file_location("ECFusionSlicer_under_test", MODULE / "ECFusionSlicer.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # get_type_hints resolves the annotations in the module's globals
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("ECFusionSlicer_under_test", None)
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


@pytest.fixture(scope="module")
def fields(module) -> dict:
    return typing.get_type_hints(module.ECFusionSlicerParameterNode, include_extras=True)


# ----------------------------------------------------------------- Slicer's connector rules
def split(annotated) -> tuple[object, tuple]:
    """(type, annotations) as parameterNodeWrapper.util.splitAnnotations gives them."""
    if typing.get_origin(annotated) is typing.Annotated:
        args = typing.get_args(annotated)
        return args[0], tuple(args[1:])
    return annotated, ()


def first(annotations, kind):
    return next((a for a in annotations if isinstance(a, kind)), None)


PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
              pathlib.PureWindowsPath)


def is_node_or_union_of_nodes(t) -> bool:
    """util.isNodeOrUnionOfNodes: a vtkMRMLNode class, or typing.Union of them and None (typing.get_origin must be
    typing.Union: a PEP 604 ``A | B`` is a types.UnionType and is not accepted)."""
    if isinstance(t, type):
        return issubclass(t, slicer.vtkMRMLNode)
    if typing.get_origin(t) is typing.Union:
        return all(isinstance(a, type) and (a is type(None) or issubclass(a, slicer.vtkMRMLNode))
                   for a in (split(x)[0] for x in typing.get_args(t)))
    return False


def node_types(t) -> tuple[type, ...]:
    """util.getNodeTypes: the classes the connector writes into the combobox's nodeTypes."""
    if isinstance(t, type):
        return (t,)
    return tuple(a for a in typing.get_args(t) if isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode))


def connector_problem(widget_class: str, annotated) -> str | None:
    """None when one of Slicer's registered connectors accepts (widget class, field type), else why not."""
    t, ann = split(annotated)
    bounded = first(ann, WithinRange) is not None or (first(ann, Minimum) and first(ann, Maximum)) is not None
    rules = {
        "QCheckBox": lambda: t is bool,
        "QPushButton": lambda: t is bool,
        "QSlider": lambda: t is int and bounded,
        "QSpinBox": lambda: t is int,
        "QDoubleSpinBox": lambda: t is float,
        "ctkSliderWidget": lambda: t is float and bounded,
        "QComboBox": lambda: (t in (int, float, str, bool) and first(ann, Choice) is not None)
                             or (isinstance(t, type) and issubclass(t, enum.Enum)),
        "QLineEdit": lambda: t is str,
        "QTextEdit": lambda: t is str,
        "ctkRangeWidget": lambda: getattr(t, "__name__", "") == "FloatRange" and first(ann, RangeBounds) is not None,
        "ctkPathLineEdit": lambda: t in PATH_TYPES,
        "ctkDirectoryButton": lambda: t in PATH_TYPES,
        "qMRMLNodeComboBox": lambda: is_node_or_union_of_nodes(t),
        "qMRMLSubjectHierarchyTreeView": lambda: is_node_or_union_of_nodes(t),
    }
    if widget_class not in rules:
        return f"no Slicer GUI connector exists for a {widget_class}"
    if not rules[widget_class]():
        return f"Slicer's connectors do not bind a {widget_class} to {annotated!r}"
    return None


# ----------------------------------------------------------------- the .ui
def bound_widgets() -> dict[str, ET.Element]:
    """SlicerParameterName -> <widget> element."""
    out = {}
    for w in ET.parse(UI).getroot().iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.find("string").text] = w
    return out


def prop(widget: ET.Element, name: str):
    for p in widget.findall("property"):
        if p.get("name") == name:
            child = p[0]
            if child.tag == "stringlist":
                return [s.text for s in child]
            if child.tag == "bool":
                return child.text == "true"
            if child.tag in ("number", "double"):
                return float(child.text)
            return child.text
    return None


VOLUME_CLASSES = [getattr(slicer, n) for n in (
    "vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLTensorVolumeNode",
    "vtkMRMLDiffusionTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode", "vtkMRMLStreamingVolumeNode")]


def offered_classes(widget: ET.Element, annotated) -> set[str]:
    """Volume classes a qMRMLNodeComboBox lists once the connector has set nodeTypes from the annotation:
    the node types themselves, plus their subclasses when showChildNodeTypes (default true) unless hidden."""
    types_ = node_types(split(annotated)[0])
    show_children = prop(widget, "showChildNodeTypes")
    show_children = True if show_children is None else show_children
    hidden = [getattr(slicer, h) for h in (prop(widget, "hideChildNodeTypes") or [])]
    offered = set()
    for cls in VOLUME_CLASSES:
        if cls in types_ or (show_children and any(issubclass(cls, t) for t in types_)
                             and not any(issubclass(cls, h) for h in hidden)):
            offered.add(cls.__name__)
    return offered


def wrapper_reads(t, text: str):
    """What parameterNodeWrapper's serializers (serializers.py) read from the text a parameter node stores:
    BoolSerializer is True only for "True"; NumberSerializer calls the type; StringSerializer passes it through."""
    return text == "True" if t is bool else t(text)


def combo_items(widget: ET.Element) -> list[str]:
    """The items a QComboBox lists in the .ui itself (<item><property name="text">)."""
    return [item.find("property/string").text or "" for item in widget.findall("item")]


# ----------------------------------------------------------------- tests
def test_every_bound_widget_has_a_connector_for_its_field_type(fields):
    widgets = bound_widgets()
    unknown = set(widgets) - set(fields)
    assert not unknown, f".ui names parameters the wrapper lacks: {sorted(unknown)}"
    problems = {name: connector_problem(w.get("class"), fields[name]) for name, w in widgets.items()}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, problems


def test_unbound_fields_are_connected_by_hand(fields):
    """A field without a bound widget (weightsPath: a ctkPathLineEdit has only a pathlib connector) is kept in
    step with its widget by the module's own code, in both directions."""
    code = (MODULE / "ECFusionSlicer.py").read_text()
    for name in set(fields) - set(bound_widgets()):
        assert f"self._parameterNode.{name} = " in code, f"nothing writes {name} from its widget"
        assert f"self._parameterNode.{name}" in code.replace(f"self._parameterNode.{name} = ", ""), \
            f"nothing writes {name} back to its widget"
    assert 'weightsPathLineEdit.connect("currentPathChanged(QString)"' in code


def test_spin_boxes_keep_their_range(fields):
    """The int/float connectors reset a spin box to (-2**31, 2**31-1) or (-inf, inf) unless the field carries
    WithinRange (or Minimum and Maximum); the annotation must then give the .ui's own limits."""
    defaults = {"QSpinBox": (0.0, 99.0), "QDoubleSpinBox": (0.0, 99.99)}  # Qt's defaults when the .ui sets none
    for name, w in bound_widgets().items():
        if w.get("class") not in ("QSpinBox", "QDoubleSpinBox", "QSlider", "ctkSliderWidget"):
            continue
        _, ann = split(fields[name])
        rng = first(ann, WithinRange)
        lo, hi = (rng.minimum, rng.maximum) if rng else (getattr(first(ann, Minimum), "minimum", None),
                                                          getattr(first(ann, Maximum), "maximum", None))
        assert lo is not None and hi is not None, f"{name}: the connector would make the range unbounded"
        ui_lo = prop(w, "minimum")
        ui_hi = prop(w, "maximum")
        d_lo, d_hi = defaults.get(w.get("class"), (None, None))
        assert (lo, hi) == (d_lo if ui_lo is None else ui_lo, d_hi if ui_hi is None else ui_hi), name


def test_node_selectors_offer_the_right_volume_classes(fields):
    widgets = bound_widgets()
    output = offered_classes(widgets["outputVolume"], fields["outputVolume"])
    assert {"vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"} <= output, output  # CT-MRI grey, PET/SPECT RGB
    assert "vtkMRMLLabelMapVolumeNode" not in output
    functional = offered_classes(widgets["functionalVolume"], fields["functionalVolume"])
    assert {"vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"} <= functional  # RGB PET/SPECT input
    assert "vtkMRMLLabelMapVolumeNode" not in functional
    anatomical = offered_classes(widgets["anatomicalVolume"], fields["anatomicalVolume"])
    assert anatomical == {"vtkMRMLScalarVolumeNode"}, anatomical  # a grey MRI only


def test_output_selector_creates_only_what_the_logic_accepts():
    """'Create new' must not make a node of the wrong class: the None entry (named "Create new volume") is the only
    way to a new output, and the logic then creates a scalar or vector volume as the result needs."""
    w = bound_widgets()["outputVolume"]
    assert prop(w, "addEnabled") is False
    assert prop(w, "noneEnabled") is True and prop(w, "noneDisplay") == "Create new volume"


def test_parameter_node_written_by_the_logic_is_read_by_the_wrapper(fields):
    """Defaults agree, and the logic reads node references in both the single-type and the Union form."""
    from ECFusionSlicerLib.logic import LIMITS, PARAMETERS, ECFusionSlicerLogic, node_reference

    wrapper = sys.modules["ECFusionSlicer_under_test"].ECFusionSlicerParameterNode
    for name, text in PARAMETERS.items():
        t, ann = split(fields[name])
        default = getattr(wrapper, name)
        assert type(default) is t, f"{name}: default {default!r} is not a {t.__name__}"
        assert wrapper_reads(t, text) == default, name
        rng = first(ann, WithinRange)
        if name in LIMITS:
            assert (rng.minimum, rng.maximum) == LIMITS[name]
    scene = slicer.vtkMRMLScene()
    p = ECFusionSlicerLogic(scene).getParameterNode()
    vec = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "earlier result")
    p.SetNodeReferenceID("outputVolume_0", vec.GetID())  # what UnionSerializer writes for the first member type
    assert node_reference(p, "outputVolume") is vec
    p.SetNodeReferenceID("anatomicalVolume", vec.GetID())
    assert node_reference(p, "anatomicalVolume") is vec


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


def test_testing_mode_never_installs_pytorch_and_the_self_test_reports_a_skip(module, monkeypatch):
    """Item: without torch the self-test must pass with a "skipped" message (Reload and Test calls runTest()
    directly, where a skipTest counts as a failure), and PyTorchUtils must not install without asking."""
    def install(**kwargs):
        raise AssertionError("PyTorch would be installed without asking")

    pytorch_utils = types.ModuleType("PyTorchUtils")
    pytorch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(installTorch=install)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorch_utils)
    monkeypatch.setattr(module, "torch_available", lambda: False)
    monkeypatch.setattr(module.slicer, "app", _fake_app(testing=True), raising=False)
    monkeypatch.setattr(module.slicer, "mrmlScene", types.SimpleNamespace(Clear=lambda: None), raising=False)
    assert module.ensure_dependencies(interactive=True) is False
    test = module.ECFusionSlicerTest()
    shown = []
    test.delayDisplay = shown.append
    test.runTest()
    assert shown and "skipped" in shown[-1]


def test_an_old_torch_is_refused_without_a_main_window(module, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "__version__", "2.4.1+cpu")
    monkeypatch.setattr(module.slicer, "app", _fake_app(testing=False, no_main_window=True), raising=False)
    monkeypatch.setattr(module, "torch_available", lambda: True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # not even looked at
    assert module.ensure_dependencies(interactive=True) is False


# ----------------------------------------------------------------- one vocabulary: the registry
def test_choice_lists_are_the_registry_vocabularies(fields):
    """The panel offers exactly what ECFusionLib.tasks (the command line's choices=) defines, in its order; the
    first entry is the default."""
    from ECFusionLib import tasks

    expected = {"task": ["auto", *tasks.TASK_NAMES], "device": list(tasks.DEVICES),
                "precision": list(tasks.PRECISIONS), "axis": list(tasks.AXES_ANATOMICAL),
                "registration": list(tasks.REGISTRATION_MODES)}
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
