"""The module's settings: what the panel offers and the parameter node stores, read from ECFusionLib's one
declaration of the ``fuse`` options (``ECFusionLib.options.FUSE_OPTIONS``: choices, defaults, limits), and the one
place that knows how Slicer's parameterNodeWrapper serialises them in a vtkMRMLScriptedModuleNode.

    settings = ProcessSettings(task="PET-MRI", device="cpu")        # what logic.process runs with
    values = parameter_values(parameterNode)                        # {parameter name: value}, typed
    settings = settings_from_parameters(values)                     # the same object, from the panel

No Qt, no torch: imported by the widget (its parameterNodeWrapper fields) and by the logic.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ECFusionLib.errors import ECFusionError
from ECFusionLib.options import OPTIONS_BY_NAME, check_number
from ECFusionLib.tasks import AXES_ANATOMICAL, TASK_NAMES, WINDOW_DEFAULT, check_choice, check_task

from .dependencies import BACKENDS

AUTO_TASK = "auto"  # the task choice that means "detect it" (logic.detectTask)
# parameter node name -> ``fuse`` option name. The parameter names are saved in scenes: never rename them.
OPTION_OF = {"task": "task", "device": "device", "precision": "precision", "axis": "axis", "batchSize": "batch_size",
             "ctWindow": "ct_window", "ctLevel": "ct_level", "weightsPath": "weights", "registration": "register",
             "keepSalient": "keep_salient", "backend": "backend"}


def _option(parameter: str):
    return OPTIONS_BY_NAME[OPTION_OF[parameter]]


# The choices of the text settings (first = default); the widget's Choice lists read these, so a task or device
# added to ECFusionLib appears in the panel. The panel offers the anatomical axis names only, and its own backends.
CHOICES = {"task": (AUTO_TASK, *TASK_NAMES), "device": _option("device").choices,
           "precision": _option("precision").choices, "axis": AXES_ANATOMICAL,
           "registration": _option("registration").choices, "backend": BACKENDS}
# The settings a parameter node holds, with their defaults (the widget's parameterNodeWrapper has the same names,
# types and defaults). batchSize 0: automatic. The CT window/level default: the window-mapped task's (tasks.py).
DEFAULTS = {**{name: options[0] for name, options in CHOICES.items()}, "batchSize": 0,
            "ctWindow": WINDOW_DEFAULT[0], "ctLevel": WINDOW_DEFAULT[1],
            "weightsPath": "", "keepSalient": _option("keepSalient").default}
# Limits of the numeric settings: the options' panel ranges, shared by the checks and the spin boxes (WithinRange).
LIMITS = {name: _option(name).panel_range for name in ("batchSize", "ctWindow", "ctLevel")}
NODE_ROLES = ("anatomicalVolume", "functionalVolume", "outputVolume", "registrationTransform")


@dataclass(frozen=True)
class ProcessSettings:
    """What ``ECFusionSlicerLogic.process`` fuses with. Field names and defaults are the ``fuse`` options'
    (ECFusionLib.options), plus the display overrides of a scalar PET/SPECT volume.

    Attributes:
        task: a task name (any case), or None: detected from the functional volume.
        device, precision, axis, backend, register: as ``ecfusion fuse`` has them (axis: the anatomical names).
        batch_size: slices per batch, 0-256 (None or 0: automatic).
        ct_window, ct_level: CT window 1-10000 HU and level -2000-5000 HU (None: the task's default).
        weights: a weights file, or None: the bundled weights of the task.
        keep_salient: the keep-salient rule (ECFusionLib.salient) after the network.
        color_node_id, window, level: override the scalar PET/SPECT display (colour node ID; window > 0).
    """

    task: str | None = None
    device: str = OPTIONS_BY_NAME["device"].default
    precision: str = OPTIONS_BY_NAME["precision"].default
    axis: str = OPTIONS_BY_NAME["axis"].default
    batch_size: int | None = None
    ct_window: float | None = None
    ct_level: float | None = None
    weights: str | None = None
    register: str = OPTIONS_BY_NAME["register"].default
    keep_salient: bool = OPTIONS_BY_NAME["keep_salient"].default
    backend: str = DEFAULTS["backend"]
    color_node_id: str | None = None
    window: float | None = None
    level: float | None = None

    def checked(self) -> ProcessSettings:
        """A copy with every value checked once (ECFusionError naming the field): the task's canonical name,
        the choices, the numbers within the panel's limits; batch size 0 becomes None (automatic)."""
        def number(name, value, panel=True):
            return None if value is None else check_number(name, value, panel=panel, label=name)

        check_choice(self.register, CHOICES["registration"], "registration")
        return dataclasses.replace(
            self, task=check_task(self.task) if self.task else None, batch_size=number("batch_size", self.batch_size) or None,
            ct_window=number("ct_window", self.ct_window), ct_level=number("ct_level", self.ct_level),
            window=number("window", self.window, panel=False), level=number("level", self.level, panel=False),
            keep_salient=bool(self.keep_salient), weights=self.weights or None)

    @classmethod
    def with_overrides(cls, settings: ProcessSettings | None, overrides: dict) -> ProcessSettings:
        """``settings`` (default: all defaults) with ``overrides`` ({field: value}) applied; ECFusionError for a
        name that is not a field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ECFusionError(f"unknown setting(s) {', '.join(unknown)}: use {', '.join(sorted(fields))}")
        return dataclasses.replace(settings or cls(), **overrides)


def settings_from_parameters(values: dict) -> ProcessSettings:
    """The ``ProcessSettings`` of a parameter node's values (``parameter_values``)."""
    fields = {OPTION_OF[name]: values[name] for name in DEFAULTS}
    fields["task"] = None if values["task"] == AUTO_TASK else values["task"]
    fields["batch_size"] = check_number("batch_size", values["batchSize"], panel=True, label="batchSize") or None
    for name in ("ctWindow", "ctLevel"):
        fields[OPTION_OF[name]] = check_number(OPTION_OF[name], values[name], panel=True, label=name)
    return ProcessSettings(**fields)


def parameter_text(value) -> str:
    """``value`` as parameterNodeWrapper's serializers store it (BoolSerializer: "True"/"False"; numbers: str)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


PARAMETERS = {name: parameter_text(value) for name, value in DEFAULTS.items()}  # as stored in the node


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
        elif isinstance(default, str):
            values[name] = text
        else:
            values[name] = check_number(OPTION_OF[name], text, panel=True, label=name)
    return values


def set_node_reference(parameterNode, role: str, node) -> None:
    """Refer to ``node`` under ``role`` (a single node type) in a wrapper instance or a raw parameter node."""
    if hasattr(parameterNode, "allParameters"):
        setattr(parameterNode, role, node)
    else:
        parameterNode.SetNodeReferenceID(role, node.GetID())
