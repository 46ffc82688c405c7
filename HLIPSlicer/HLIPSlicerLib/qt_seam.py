"""The Qt seam: the one place where the module gets `qt`, `ctk`, the scripted-module base classes,
`parameterNodeWrapper` and the translation function.

Inside 3D Slicer (``slicer.app`` exists) everything is Slicer's own: PythonQt's ``qt``/``ctk``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n.tr``, message boxes from
``slicer.util``.

Outside Slicer (pytest with ``slicer-core`` + ``PySide6`` through ``Qt.py``, ``QT_QPA_PLATFORM=offscreen``) the
same names are stand-ins that cover exactly what HLIPSlicer.py and its HLIPSlicerLib panels use:
- ``qt``: one namespace with QtCore, QtGui, QtWidgets classes (PythonQt puts them all in ``qt``);
- ``ScriptedLoadableModule*``: minimal bases (resourcePath, parameter node, unittest test base);
- ``parameterNodeWrapper``: typed fields stored as strings in a ``vtkMRMLScriptedModuleNode`` and
  ``connectGui`` for QComboBox (with ``Choice``), QDoubleSpinBox, QCheckBox and QLineEdit;
- ``tr``: identity; ``load_ui`` with QUiLoader; message boxes through ``dialogs`` (tests set answers there).
The widget code restricts itself to what both provide: setter/getter methods (not PythonQt properties),
``signal.connect(slot)``, standard Qt widgets in the .ui file.
"""
import os
import types
import unittest

import slicer

IN_SLICER = getattr(slicer, "app", None) is not None


def get(widget, name):
    """A Qt property read the same way in PythonQt (``w.count`` is a value) and PySide6 (``w.count()``)."""
    value = getattr(widget, name)
    return value() if callable(value) else value

if IN_SLICER:  # pragma: no cover - real Slicer only
    import ctk  # noqa: F401
    import qt  # noqa: F401
    from slicer.i18n import tr  # noqa: F401
    from slicer.i18n import translate  # noqa: F401
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: F401
    from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,  # noqa: F401
                                               ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
    from slicer.util import VTKObservationMixin  # noqa: F401

    def load_ui(path):
        return slicer.util.loadUI(str(path))

    def child_widgets(widget):
        return slicer.util.childWidgetVariables(widget)

    def process_events():
        slicer.app.processEvents()

    class dialogs:  # noqa: N801 - a namespace
        @staticmethod
        def error(text, details=""):
            slicer.util.errorDisplay(text, detailedText=details or None)

        @staticmethod
        def info(text):
            slicer.util.infoDisplay(text)

        @staticmethod
        def confirm(text, title=None):
            return slicer.util.confirmOkCancelDisplay(text, windowTitle=title)

        @staticmethod
        def open_file(parent, caption, filters):
            return qt.QFileDialog.getOpenFileName(parent, caption, "", filters)

        @staticmethod
        def save_file(parent, caption, filters):
            return qt.QFileDialog.getSaveFileName(parent, caption, "", filters)

        @staticmethod
        def open_folder(parent, caption):
            return qt.QFileDialog.getExistingDirectory(parent, caption)

else:
    from Qt import QtCore, QtGui, QtWidgets

    qt = types.SimpleNamespace()
    for _module in (QtCore, QtGui, QtWidgets):
        for _name in dir(_module):
            if _name.startswith("Q") or _name == "Qt":
                setattr(qt, _name, getattr(_module, _name))
    ctk = None

    def tr(text):
        return text

    def translate(context, text):
        return text

    def load_ui(path):
        from Qt import QtCompat
        widget = QtCompat.loadUi(str(path))
        return widget

    def child_widgets(widget):
        ui = types.SimpleNamespace()
        for child in widget.findChildren(QtCore.QObject):
            name = child.objectName()
            if name and not name.startswith("qt_"):
                setattr(ui, name, child)
        return ui

    def process_events():
        app = QtWidgets.QApplication.instance()
        if app is not None:
            app.processEvents()

    class dialogs:  # noqa: N801 - tests script the answers
        answers = {"confirm": True, "open_file": "", "save_file": "", "open_folder": ""}
        shown = []  # (kind, text) of every message box the widget would have shown

        @classmethod
        def error(cls, text, details=""):
            cls.shown.append(("error", text))

        @classmethod
        def info(cls, text):
            cls.shown.append(("info", text))

        @classmethod
        def confirm(cls, text, title=None):
            cls.shown.append(("confirm", text))
            return cls.answers["confirm"]

        @classmethod
        def open_file(cls, parent, caption, filters):
            return cls.answers["open_file"]

        @classmethod
        def save_file(cls, parent, caption, filters):
            return cls.answers["save_file"]

        @classmethod
        def open_folder(cls, parent, caption):
            return cls.answers["open_folder"]

    from slicer.util import VTKObservationMixin  # noqa: F401  (slicer-core ships it)

    # -- scripted module bases -------------------------------------------------------------------------------
    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title, parent.categories, parent.dependencies, parent.contributors = "", [], [], []
            parent.helpText = parent.acknowledgementText = ""

        def resourcePath(self, filename):
            return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.moduleName = self.__class__.__name__[:-len("Widget")]
            self.developerMode = False
            if parent is None:
                parent = QtWidgets.QWidget()
                parent.setLayout(QtWidgets.QVBoxLayout())
            self.parent = parent
            self.layout = parent.layout()

        def resourcePath(self, filename):
            import HLIPSlicerLib
            return str(HLIPSlicerLib.module_resource(filename))

        def setup(self):
            pass

        def cleanup(self):
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = self.__class__.__name__[:-len("Logic")]
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                node.SetName(scene.GenerateUniqueName(self.moduleName))
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            print(message)

    # -- parameterNodeWrapper stand-in -------------------------------------------------------------------------
    class Choice:
        def __init__(self, choices):
            self.choices = list(choices)

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    def _split(annotation):
        meta = getattr(annotation, "__metadata__", ())
        return getattr(annotation, "__origin__", annotation), list(meta)

    def parameterNodeWrapper(cls):  # noqa: N802 - same name as Slicer's decorator
        """Typed fields persisted as parameters of a vtkMRMLScriptedModuleNode (str/int/float/bool and MRML node
        references), with Slicer's `connectGui(ui)` / `disconnectGui(tag)` for the widgets this module uses."""
        fields = {}
        for name, annotation in getattr(cls, "__annotations__", {}).items():
            base, meta = _split(annotation)
            fields[name] = (base, meta, getattr(cls, name, None))

        def make_property(name, base, default):
            is_node = isinstance(base, type) and hasattr(base, "GetID") and hasattr(base, "GetScene")

            def getter(self):
                if is_node:
                    return self.parameterNode.GetNodeReference(name)
                text = self.parameterNode.GetParameter(name)
                if text == "":
                    return default
                return {bool: lambda t: t == "True", int: int, float: float}.get(base, str)(text)

            def setter(self, value):
                if is_node:
                    self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                else:
                    self.parameterNode.SetParameter(name, str(value))
            return property(getter, setter)

        def __init__(self, parameterNode):
            self.parameterNode = parameterNode
            self._guis = {}
            for name, (base, meta, default) in fields.items():
                is_node = isinstance(base, type) and hasattr(base, "GetID")
                if not is_node and not parameterNode.GetParameter(name) and default is not None:
                    setattr(self, name, default)

        def connectGui(self, ui):
            links = []
            for widget in vars(ui).values():
                name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
                if not name or name not in fields:
                    continue
                base, meta, _ = fields[name]
                links.append(_connect(self, name, widget, base, meta))
            tag = object()
            self._guis[tag] = links
            return tag

        def disconnectGui(self, tag):
            for disconnect in self._guis.pop(tag, []):
                disconnect()

        def _connect(self, name, widget, base, meta):
            choice = next((m for m in meta if isinstance(m, Choice)), None)
            if isinstance(widget, QtWidgets.QComboBox):
                if choice is None:
                    raise RuntimeError("QComboBox needs the Choice annotation")
                widget.clear()
                widget.addItems([str(c) for c in choice.choices])
                widget.setCurrentIndex(choice.choices.index(getattr(self, name)))
                signal, read = widget.currentIndexChanged, lambda *a: choice.choices[widget.currentIndex()]
            elif isinstance(widget, QtWidgets.QDoubleSpinBox):
                rng = next((m for m in meta if isinstance(m, WithinRange)), None)
                if rng:
                    widget.setRange(rng.minimum, rng.maximum)
                widget.setValue(float(getattr(self, name)))
                signal, read = widget.valueChanged, lambda *a: widget.value()
            elif isinstance(widget, QtWidgets.QCheckBox):
                widget.setChecked(bool(getattr(self, name)))
                signal, read = widget.toggled, lambda *a: widget.isChecked()
            elif isinstance(widget, QtWidgets.QLineEdit):
                widget.setText(str(getattr(self, name) or ""))
                signal, read = widget.textChanged, lambda *a: widget.text()
            else:
                raise RuntimeError(f"no GUI connector for {type(widget).__name__}")

            def slot(*args):
                setattr(self, name, read())
            signal.connect(slot)
            return lambda: signal.disconnect(slot)

        namespace = {"__init__": __init__, "connectGui": connectGui, "disconnectGui": disconnectGui,
                     "_connect": _connect, "__doc__": cls.__doc__}
        for name, (base, meta, default) in fields.items():
            namespace[name] = make_property(name, base, default)
        return type(cls.__name__, (), namespace)
