"""The panel's prompt editor: the QTreeWidget view over a `prompt_editor.PromptTree` (tasks > classes > prompts,
negative prompts, templates), its buttons (add task/class/text, remove, load, save, reset to a built-in set) and the
problems marked in red on their items. The edited set is kept in the parameter node's `promptSetText`.
"""
from typing import Callable

from HLIPSlicerLib.prompt_editor import PromptTree
from HLIPSlicerLib.qt_seam import dialogs, qt, tr
from HLIPSlicerLib.qt_seam import get as qget

_ = tr
DEFAULT_PROMPT_SET = "pub_brain_5"


class PromptPanel:
    """Owned by HLIPSlicerWidget. `ui`: the panel's widgets; `parameterNode`: returns the widget's current
    parameter node (or None between scenes); `parent`: the parent of file dialogs. `prompts` is the edited set."""

    def __init__(self, ui, parameterNode: Callable[[], object], parent=None) -> None:
        self.ui = ui
        self.parameterNode = parameterNode
        self.parent = parent
        self.prompts = None
        self._updating = False
        ui.resetPromptsButton.clicked.connect(self.onReset)
        ui.loadPromptsButton.clicked.connect(self.onLoad)
        ui.savePromptsButton.clicked.connect(self.onSave)
        ui.addTaskButton.clicked.connect(self.onAddTask)
        ui.addClassButton.clicked.connect(self.onAddClass)
        ui.addPromptButton.clicked.connect(self.onAddText)
        ui.removePromptItemButton.clicked.connect(self.onRemoveItem)
        ui.promptTree.itemChanged.connect(self.onItemChanged)
        ui.promptTree.setColumnWidth(0, 160)
        ui.builtinPromptSelector.addItems(PromptTree.builtin_names())
        ui.builtinPromptSelector.setCurrentIndex(max(0, ui.builtinPromptSelector.findText(self.defaultPromptSet())))
        ui.promptTree.setMinimumHeight(220)

    def loadFromParameterNode(self) -> None:
        node = self.parameterNode()
        text = node.promptSetText if node else ""
        try:
            self.prompts = PromptTree.from_text(text) if text else PromptTree.load(self.defaultPromptSet())
        except Exception:  # noqa: BLE001 - unreadable saved text: start from the built-in set
            self.prompts = PromptTree.load(self.defaultPromptSet())
        self.refresh()

    def defaultPromptSet(self) -> str:
        names = [self.ui.builtinPromptSelector.itemText(n) for n in range(qget(self.ui.builtinPromptSelector, "count"))]
        return DEFAULT_PROMPT_SET if DEFAULT_PROMPT_SET in names else (names[0] if names else DEFAULT_PROMPT_SET)

    def refresh(self) -> None:
        """Rebuild the tree from `prompts`, mark problems, store the set in the parameter node."""
        tree = self.ui.promptTree
        self._updating = True
        tree.clear()
        root = self.prompts.tree()
        red = qt.QBrush(qt.QColor("#c00000"))

        def add(parent, node):
            entry = qt.QTreeWidgetItem()
            entry.setText(0, node.label)
            entry.setText(1, node.value)
            entry.setData(0, qt.Qt.UserRole, node.path)
            entry.setData(1, qt.Qt.UserRole, node.kind)
            if node.editable:
                entry.setFlags(entry.flags() | qt.Qt.ItemIsEditable)
            if node.issues:
                entry.setForeground(0, red)
                entry.setForeground(1, red)
                entry.setToolTip(0, "\n".join(node.issues))
                entry.setToolTip(1, "\n".join(node.issues))
            if parent is None:
                tree.addTopLevelItem(entry)
            else:
                parent.addChild(entry)
            for child in node.children:
                add(entry, child)
            return entry

        tree.expandItem(add(None, root))
        tree.expandAll()
        issues = self.prompts.issues()
        self.ui.promptIssuesLabel.setText("\n".join(str(i) for i in issues[:5]) +
                                          (_("\n(and {n} more)").format(n=len(issues) - 5) if len(issues) > 5 else ""))
        node = self.parameterNode()
        if node:
            node.promptSetText = self.prompts.to_text()
        self._updating = False

    def onItemChanged(self, entry, column) -> None:
        if self._updating or column != 1:
            return
        self.prompts.edit(entry.data(0, qt.Qt.UserRole), entry.data(1, qt.Qt.UserRole), entry.text(1))
        qt.QTimer.singleShot(0, self.refresh)  # not while the view is still committing the edit

    def selectedPath(self) -> tuple:
        entry = self.ui.promptTree.currentItem()
        if entry is None:
            return "", "set"
        return entry.data(0, qt.Qt.UserRole), entry.data(1, qt.Qt.UserRole)

    def onAddTask(self) -> None:
        self.prompts.add_task(_("new task"))
        self.refresh()

    def onAddClass(self) -> None:
        path, kind = self.selectedPath()
        task = "".join(path.split(".classes")[0]) if path.startswith("tasks[") else ""
        if not task:
            self.ui.promptIssuesLabel.setText(_("Select a task first."))
            return
        self.prompts.add_class(task, _("new class"))
        self.refresh()

    def onAddText(self) -> None:
        path, kind = self.selectedPath()
        if kind in ("prompts", "negative_prompts", "templates"):
            owner, key = path.rsplit(".", 1) if "." in path else ("", path)
        elif kind in ("prompt", "negative prompt", "template"):
            owner, key = path.rsplit("[", 1)[0].rsplit(".", 1) if "." in path else ("", path.rsplit("[", 1)[0])
        elif kind == "class":
            owner, key = path, "prompts"
        else:
            owner, key = (path, "templates")
        self.prompts.add_text(owner, key, _("new text") if key != "templates" else "{}")
        self.refresh()

    def onRemoveItem(self) -> None:
        path, kind = self.selectedPath()
        if path and kind not in ("templates", "prompts", "negative_prompts"):
            self.prompts.remove(path)
            self.refresh()

    def onReset(self) -> None:
        self.prompts = PromptTree.load(qget(self.ui.builtinPromptSelector, "currentText") or self.defaultPromptSet())
        self.refresh()

    def onLoad(self) -> None:
        from HLIPCore.prompts import read_document
        path = dialogs.open_file(self.parent, _("Prompt set"), _("Prompt sets (*.json *.yaml *.yml)"))
        if not path:
            return
        try:
            self.prompts = PromptTree(read_document(path))
        except Exception as exc:  # noqa: BLE001
            dialogs.error(_("Cannot read the prompt set: {error}").format(error=exc))
            return
        self.refresh()  # invalid files load too; their problems are marked in the tree

    def onSave(self) -> None:
        path = dialogs.save_file(self.parent, _("Save prompt set"), _("Prompt sets (*.json *.yaml *.yml)"))
        if not path:
            return
        try:
            self.prompts.save(path)
        except Exception as exc:  # noqa: BLE001
            dialogs.error(_("The prompt set was not saved: {error}").format(error=exc))
