"""Stand-ins for what only the Slicer application provides, so that Slicer's own Python code can run here.

Used by Testing/slicer_widget_driver.py in a subprocess: ``install(tag_dir)`` builds a ``slicer`` package from
Slicer's own ``Base/Python/slicer`` sources at one release (``../shared/slicer-source/<tag>``: the real
``parameterNodeWrapper``, ``util`` and ``ScriptedLoadableModule``, read from there, never copied) plus the MRML
classes of the ``slicer-core`` wheel, and registers small ``qt``/``ctk`` modules whose widgets emit signals the
way Qt does where Slicer's GUI connectors depend on it:

- ``QComboBox.clear()`` on a non-empty box emits ``currentIndexChanged(-1)``; the first ``addItem`` emits
  ``currentIndexChanged(0)``; setting ``currentIndex`` emits only on change.
- Property writes (``value``, ``checked``, ``currentPath``, ...) emit their change signal only when the value
  changes; spin boxes clamp to their range, and a range change that moves the value emits too.
- ``qMRMLNodeComboBox`` lists the scene's nodes of its ``nodeTypes``; without ``noneEnabled`` it selects the
  first node when it has none (as Qt's model does), and it drops a node removed from the scene.
- Slots receive as many of the signal's arguments as they accept (PythonQt's rule).

``QUiLoader.load`` builds these widgets from a real ``.ui`` file: classes, names, properties (``stdset="0"``
ones such as ``SlicerParameterName`` as dynamic properties) and the file's signal/slot connections.
"""
from __future__ import annotations

import contextlib
import inspect
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path


# ----------------------------------------------------------------------------------------------- signals
@contextlib.contextmanager
def modules_replaced(replacements: dict):
    """``sys.modules`` with ``replacements`` (name -> module, or None: importing it fails) for the block; yields
    the entries it replaced (None: there was none) and puts them back, or removes the name, after it."""
    saved = {name: sys.modules.get(name) for name in replacements}
    sys.modules.update(replacements)
    try:
        yield saved
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def _call(slot, args):
    """Call ``slot`` with as many of ``args`` as it takes (PythonQt drops the extra signal arguments)."""
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return slot(*args)
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return slot(*args)
    n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    return slot(*args[:n])


class Signal:
    def __init__(self):
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
        else:
            self._slots.remove(slot)  # raises when not connected, as PythonQt does

    def emit(self, *args):
        for slot in list(self._slots):
            _call(slot, args)

    @property
    def connections(self) -> int:
        return len(self._slots)


class signal:  # noqa: N801 - a class attribute giving each instance its own Signal
    def __set_name__(self, owner, name):
        self.key = "_signal_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj.__dict__.setdefault(self.key, Signal())


# ----------------------------------------------------------------------------------------------- qt
class QObject:
    destroyed = signal()

    def __init__(self, parent=None):
        self.name = ""
        self._children = []
        self._parent = None
        self._dynamic = {}
        if parent is not None:
            self.setParent(parent)

    def setParent(self, parent):
        if self._parent is not None:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def property(self, name):
        if name in self._dynamic:
            return self._dynamic[name]
        return getattr(self, name, None) if not callable(getattr(type(self), name, None)) else None

    def setProperty(self, name, value):
        self._dynamic[name] = value

    def findChildren(self, cls=None):
        out = []
        for c in self._children:
            if cls is None or isinstance(c, cls):
                out.append(c)
            out.extend(c.findChildren(cls))
        return out

    def connect(self, signature, slot):
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature, slot):
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def className(self):
        return type(self).__name__


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.enabled, self.visible, self.toolTip = True, True, ""
        self._layout = None

    def isWidgetType(self):
        return True

    def setLayout(self, layout):
        self._layout = layout
        layout._owner = self

    def layout(self):
        return self._layout

    def hide(self):
        self.visible = False

    def show(self):
        self.visible = True


class _Layout:
    def __init__(self, parent=None):
        self._items, self._owner = [], None
        if parent is not None:
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        self._items.append(widget)
        if self._owner is not None:
            widget.setParent(self._owner)

    def addRow(self, *widgets):
        for w in widgets:
            if isinstance(w, QWidget):
                self.addWidget(w)

    def count(self):
        return len(self._items)

    def itemAt(self, i):
        return self._items[i]

    def removeItem(self, item):
        self._items.remove(item)


class QVBoxLayout(_Layout):
    pass


class QHBoxLayout(_Layout):
    pass


class QFormLayout(_Layout):
    pass


class _ValueChanged:
    """Helper for properties that emit ``<signal>(value)`` when written with a different value."""

    @staticmethod
    def set(obj, attr, value, *signals):
        if getattr(obj, attr) == value:
            return False
        setattr(obj, attr, value)
        for s in signals:
            getattr(obj, s).emit(value)
        return True


class QLabel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = ""


class QPushButton(QWidget):
    clicked = signal()
    toggled = signal()

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self.text, self.checkable, self._checked = text, False, False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        _ValueChanged.set(self, "_checked", bool(value) and self.checkable, "toggled")

    def click(self):
        if self.enabled:
            self.clicked.emit(False)


class QCheckBox(QWidget):
    toggled = signal()
    stateChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.text, self._checked = "", False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        if _ValueChanged.set(self, "_checked", bool(value), "toggled"):
            self.stateChanged.emit(2 if self._checked else 0)


class QComboBox(QWidget):
    currentIndexChanged = signal()
    currentTextChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items, self._index = [], -1

    @property
    def count(self):
        return len(self._items)

    def clear(self):
        self._items = []
        self._set_index(-1)

    def addItem(self, text, userData=None):
        self._items.append(str(text))
        if self._index == -1:
            self._set_index(0)

    def itemText(self, i):
        return self._items[i]

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, i):
        self._set_index(i if 0 <= i < len(self._items) else -1)

    def setCurrentIndex(self, i):
        self.currentIndex = i

    @property
    def currentText(self):
        return self._items[self._index] if self._index >= 0 else ""

    def _set_index(self, i):
        if i != self._index:
            self._index = i
            self.currentIndexChanged.emit(i)
            self.currentTextChanged.emit(self.currentText)


class QSpinBox(QWidget):
    valueChanged = signal()
    _default_range = (0, 99)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._min, self._max = self._default_range
        self._value = self._min
        self.singleStep, self.decimals = 1, 0

    def _coerce(self, v):
        return int(v)

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, v):
        _ValueChanged.set(self, "_value", min(max(self._coerce(v), self._min), self._max), "valueChanged")

    def setValue(self, v):
        self.value = v

    @property
    def minimum(self):
        return self._min

    @minimum.setter
    def minimum(self, v):
        self.setRange(v, max(v, self._max))

    @property
    def maximum(self):
        return self._max

    @maximum.setter
    def maximum(self, v):
        self.setRange(min(v, self._min), v)

    def setMinimum(self, v):
        self.minimum = v

    def setMaximum(self, v):
        self.maximum = v

    def setRange(self, lo, hi):
        self._min, self._max = self._coerce(lo) if abs(lo) != float("inf") else lo, \
            self._coerce(hi) if abs(hi) != float("inf") else hi
        self.value = self._value


class QDoubleSpinBox(QSpinBox):
    _default_range = (0.0, 99.99)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.decimals = 2

    def _coerce(self, v):
        return round(float(v), self.decimals)


class QSlider(QSpinBox):
    pass


class QProgressBar(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.value, self.minimum, self.maximum, self.format = 0, 0, 100, "%p%"


class QPlainTextEdit(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.plainText, self.readOnly, self.maximumHeight = "", False, 0

    def appendPlainText(self, text):
        self.plainText = f"{self.plainText}\n{text}" if self.plainText else text


class QLineEdit(QWidget):
    textChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""

    @property
    def text(self):
        return self._text

    @text.setter
    def text(self, v):
        _ValueChanged.set(self, "_text", str(v), "textChanged")


class QTextEdit(QPlainTextEdit):
    pass


class QColor:
    pass


class QIcon:
    def __init__(self, path=""):
        self.path = path


class QSettings:
    _store: dict = {}

    def value(self, key, default=None):
        return self._store.get(key, default)

    def setValue(self, key, value):
        self._store[key] = value

    def contains(self, key):
        return key in self._store


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return Path(self.path).is_file()

    def open(self, mode):
        return True


class QUiLoader:
    """Builds fake widgets from a .ui file (classes looked up in the fake qt, ctk and slicer modules)."""

    def load(self, qfile):
        root = ET.parse(qfile.path).getroot()
        top = self._widget(root.find("widget"), None)
        named = {w.name: w for w in [top, *top.findChildren()]}
        for c in root.iter("connection"):
            sender, receiver = named[c.findtext("sender")], named[c.findtext("receiver")]
            slot = getattr(receiver, c.findtext("slot").split("(")[0])
            sender.connect(c.findtext("signal"), slot)
        return top

    def _widget(self, element, parent):
        cls = _widget_class(element.get("class"))
        w = cls()
        w.name = element.get("name") or ""
        if parent is not None:
            w.setParent(parent)
        props = element.findall("property")
        props.sort(key=lambda p: p.get("name") not in ("minimum", "maximum", "decimals"))  # range before value
        for p in props:
            value = _property_value(p)
            if p.get("stdset") == "0":
                w.setProperty(p.get("name"), value)
            elif value is not _SKIP:
                setattr(w, p.get("name"), value)
        layout = element.find("layout")
        if layout is not None:
            w.setLayout(QFormLayout() if layout.get("class") == "QFormLayout" else QVBoxLayout())
            for item in layout.findall("item"):
                child = item.find("widget")
                if child is not None:
                    w.layout().addWidget(self._widget(child, w))
        return w


_SKIP = object()


def _property_value(p):
    child = p[0]
    if child.tag == "string":
        return child.text or ""
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "double":
        return float(child.text)
    if child.tag == "stringlist":
        return [s.text or "" for s in child]
    return _SKIP  # enums, sizes: nothing the module reads


def _widget_class(name):
    for module in ("qt", "ctk", "slicer"):
        cls = getattr(sys.modules[module], name, None)
        if isinstance(cls, type):
            return cls
    raise KeyError(f"no fake for widget class {name}")


# ----------------------------------------------------------------------------------------------- ctk
class ctkCollapsibleButton(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.text, self.collapsed = "", False


class ctkPathLineEdit(QWidget):
    currentPathChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._path, self.nameFilters, self.filters = "", [], 0

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, v):
        _ValueChanged.set(self, "_path", str(v), "currentPathChanged")


def _plain(name, base=QWidget):
    return type(name, (base,), {})


# ----------------------------------------------------------------------------------------------- MRML widgets
class qMRMLWidget(QWidget):
    mrmlSceneChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(QWidget):
    currentNodeChanged = signal()
    currentNodeIDChanged = signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._node, self._tags = None, None, []
        self._types = []
        self.showChildNodeTypes, self.hideChildNodeTypes = True, []
        self.noneEnabled, self.addEnabled, self.removeEnabled, self.renameEnabled = False, True, True, False
        self.noneDisplay = "None"

    @property
    def nodeTypes(self):
        return list(self._types)

    @nodeTypes.setter
    def nodeTypes(self, types_):
        self._types = list(types_)
        self._refresh()

    def setMRMLScene(self, scene):
        for tag in self._tags:
            self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            self._tags = [scene.AddObserver(e, lambda *a: self._refresh())
                          for e in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent)]
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def nodes(self):
        """The nodes the box lists, in scene order."""
        if self._scene is None:
            return []
        out = []
        for i in range(self._scene.GetNumberOfNodes()):
            n = self._scene.GetNthNode(i)
            if self._lists(n):
                out.append(n)
        return out

    def _lists(self, node):
        cls = node.GetClassName()
        if cls in self._types:
            return True
        return (self.showChildNodeTypes and any(node.IsA(t) for t in self._types)
                and not any(node.IsA(h) for h in self.hideChildNodeTypes))

    def _refresh(self):
        listed = self.nodes()
        if self._node is not None and self._node not in listed:
            self.setCurrentNode(None)
        if self._node is None and not self.noneEnabled and listed:
            self.setCurrentNode(listed[0])

    def currentNode(self):
        return self._node

    @property
    def currentNodeID(self):
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(self.currentNodeID)

    def setCurrentNodeID(self, node_id):
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id else None)


# ----------------------------------------------------------------------------------------------- the application
class _ModuleManager(QObject):
    moduleAboutToBeUnloaded = signal()


class _CommandOptions:
    noMainWindow = False


class Application(QObject):
    """``slicer.app``: processEvents runs what a test scheduled for the next event loop turn (a user's click)."""

    def __init__(self):
        super().__init__()
        self.pending = []
        self.testing = True
        self._manager = _ModuleManager()

    def processEvents(self):
        while self.pending:
            self.pending.pop(0)()

    def commandOptions(self):
        return _CommandOptions()

    def testingEnabled(self):
        return self.testing

    def moduleManager(self):
        return self._manager

    def layoutManager(self):
        return None

    def userSettings(self):
        return QSettings()

    def setOverrideCursor(self, *a):
        pass

    def restoreOverrideCursor(self):
        pass


class ScriptedModulePanel(qMRMLWidget):
    """qSlicerScriptedLoadableModuleWidget: holds the Python widget, enters/exits it, and reloads it."""

    def __init__(self, module_name):
        super().__init__()
        self.setLayout(QVBoxLayout())
        self.moduleName, self.isEntered = module_name, False

    def create_widget(self):
        import slicer

        widget = getattr(sys.modules[self.moduleName], self.moduleName + "Widget")(self)
        widget.setup()
        setattr(slicer.modules, self.moduleName + "Widget", widget)
        return widget

    def reload(self):
        widget = self.create_widget()
        if self.isEntered:
            widget.enter()


class LoadedModule:
    """``slicer.modules.<name>``: the path Slicer found the module at and its panel."""

    def __init__(self, name, path):
        self.name, self.path = name, str(path)
        self.panel = ScriptedModulePanel(name)

    def widgetRepresentation(self):
        return self.panel


# ----------------------------------------------------------------------------------------------- assembly
QT_CLASSES = ["QObject", "QWidget", "QVBoxLayout", "QHBoxLayout", "QFormLayout", "QLabel", "QPushButton", "QCheckBox",
              "QComboBox", "QSpinBox", "QDoubleSpinBox", "QSlider", "QProgressBar", "QPlainTextEdit", "QLineEdit",
              "QTextEdit", "QColor", "QIcon", "QSettings", "QFile", "QUiLoader"]
CTK_PLAIN = ["ctkCheckBox", "ctkComboBox", "ctkSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox", "ctkRangeWidget",
             "ctkDoubleRangeSlider", "ctkDirectoryButton", "ctkCheckablePushButton", "ctkColorPickerButton"]
MRML_PLAIN = ["qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qSlicerWidget",
              "qMRMLSubjectHierarchyTreeView"]


def install(tag_dir: Path) -> types.ModuleType:
    """Register fake ``qt``/``ctk`` and a ``slicer`` package made of Slicer's sources at ``tag_dir`` (a folder of
    ../shared/slicer-source) and slicer-core's MRML. Returns the ``slicer`` module (``slicer.mrmlScene`` unset)."""
    this = sys.modules[__name__]
    qt = types.ModuleType("qt")
    for name in QT_CLASSES:
        setattr(qt, name, getattr(this, name))
    qt.Qt = types.SimpleNamespace(WaitCursor=3, ShiftModifier=0x02000000)
    ctk = types.ModuleType("ctk")
    ctk.ctkCollapsibleButton, ctk.ctkPathLineEdit = ctkCollapsibleButton, ctkPathLineEdit
    for name in CTK_PLAIN:
        setattr(ctk, name, _plain(name))
    sys.modules.update(qt=qt, ctk=ctk)

    import slicer_core  # the MRML and logic classes of the slicer-core wheel (not its "slicer" meta-package)

    slicer = types.ModuleType("slicer")
    slicer.__path__ = [str(Path(tag_dir) / "Base" / "Python" / "slicer")]  # util, ScriptedLoadableModule, wrapper
    for name in dir(slicer_core):
        if not name.startswith("_"):
            setattr(slicer, name, getattr(slicer_core, name))
    slicer.qMRMLWidget, slicer.qMRMLNodeComboBox = qMRMLWidget, qMRMLNodeComboBox
    for name in MRML_PLAIN:
        setattr(slicer, name, _plain(name))
    slicer.app = Application()
    slicer.modules = types.SimpleNamespace()
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = i18n.translate = lambda *args: args[-1]
    sys.modules.update({"slicer": slicer, "slicer.i18n": i18n})
    slicer.i18n = i18n
    import slicer.util  # Slicer's own, from tag_dir

    slicer.util.setSliceViewerLayers = lambda **kw: None  # no slice views without the application
    return slicer
