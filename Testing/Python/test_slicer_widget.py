"""The HLIP panel outside Slicer: HLIPSlicer.ui loaded with PySide6 (offscreen) through the Qt seam, on a real
headless MRML scene, clicking Analyze (real worker child process), reading the results table, selecting a class,
changing the overlay opacity, editing prompts, cancelling. See HLIPSlicer/README.md for what this does not cover."""
import json
import sys

import numpy as np
import pytest

pytest.importorskip("PySide6")
from slicer_env import ARTIFACTS, mrml_app, slicer_module  # noqa: F401,E402
from test_slicer_logic import add_study  # noqa: E402

import slicer  # noqa: E402


@pytest.fixture
def panel(qtbot, mrml_app, slicer_module):
    from HLIPSlicerLib.qt_seam import dialogs
    dialogs.shown.clear()
    dialogs.answers["confirm"] = True
    item, nodes = add_study()
    widget = slicer_module.HLIPSlicerWidget()
    widget.setup()
    widget.logic.pythonExecutable = sys.executable
    qtbot.addWidget(widget.parent)
    widget.parent.resize(460, 1100)
    widget.parent.show()
    yield widget, nodes
    widget.cleanup()


def test_panel_lists_study_scans_and_prompts(panel, qtbot):
    widget, nodes = panel
    ui = widget.ui
    assert ui.studySelector.currentText() == "Study: Phantom study (Phantom patient)"
    assert ui.volumeList.count() == 2 and [n.GetName() for n in widget.selectedVolumes()] == ["T1 AX", "T2 SAG"]
    assert "2 scan(s) used" in ui.scansLabel.text() and "T2 SAG" in ui.scansLabel.text()
    ui.volumeList.item(1).setCheckState(slicer_qt().Qt.Unchecked)
    assert "1 scan(s) used" in ui.scansLabel.text()
    # device/precision combos come from the parameter node (connectGui)
    assert [ui.deviceSelector.itemText(n) for n in range(ui.deviceSelector.count())] == ["auto", "cpu", "cuda"]
    ui.deviceSelector.setCurrentIndex(1)
    assert widget._parameterNode.device == "cpu"
    # the prompt tree shows the built-in set; an invalid edit is marked on its item and explained
    tree = ui.promptTree
    assert tree.topLevelItem(0).text(1) == "pub_brain_5"
    template = find_item(tree, "templates[0]")
    template.setText(1, "no placeholder here")
    qtbot.waitUntil(lambda: ui.promptIssuesLabel.text() != "", timeout=2000)
    assert "{}" in ui.promptIssuesLabel.text()
    marked = find_item(tree, "templates[0]")
    assert marked.foreground(1).color().name() == "#c00000" and marked.toolTip(1)
    ui.resetPromptsButton.click()
    assert ui.promptIssuesLabel.text() == "" and find_item(tree, "templates[0]").text(1).endswith("{}.")


def test_prompt_buttons_edit_save_and_load(panel, tmp_path, monkeypatch):
    """The prompt editor's buttons: add a class, a prompt and a task, remove, save to a file, reset, load it back;
    the edited set is kept in the parameter node, an empty task is marked, an unreadable file is explained."""
    widget, _ = panel
    from HLIPSlicerLib.qt_seam import dialogs
    ui, tree = widget.ui, widget.ui.promptTree
    tasks = len(widget.prompts.doc["tasks"])
    new_class = f"tasks[0].classes[{len(widget.prompts.doc['tasks'][0]['classes'])}]"
    tree.setCurrentItem(find_item(tree, "tasks[0]"))
    ui.addClassButton.click()
    assert find_item(tree, new_class).text(1) == "new class"
    tree.setCurrentItem(find_item(tree, new_class))
    ui.addPromptButton.click()
    assert find_item(tree, f"{new_class}.prompts[1]").text(1) == "new text"
    assert ui.promptIssuesLabel.text() == ""
    ui.addTaskButton.click()
    assert len(widget.prompts.doc["tasks"]) == tasks + 1
    empty_task = find_item(tree, f"tasks[{tasks}]")
    assert ui.promptIssuesLabel.text() and empty_task.foreground(1).color().name() == "#c00000"
    tree.setCurrentItem(empty_task)
    ui.removePromptItemButton.click()
    assert len(widget.prompts.doc["tasks"]) == tasks and ui.promptIssuesLabel.text() == ""
    assert json.loads(widget._parameterNode.promptSetText) == widget.prompts.doc
    saved = tmp_path / "edited.json"
    monkeypatch.setitem(dialogs.answers, "save_file", str(saved))
    ui.savePromptsButton.click()
    assert saved.is_file()
    ui.resetPromptsButton.click()
    with pytest.raises(KeyError):
        find_item(tree, new_class)
    monkeypatch.setitem(dialogs.answers, "open_file", str(saved))
    ui.loadPromptsButton.click()
    assert find_item(tree, f"{new_class}.prompts[1]").text(1) == "new text"
    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setitem(dialogs.answers, "open_file", str(tmp_path / "broken.json"))
    ui.loadPromptsButton.click()
    assert dialogs.shown[-1][0] == "error" and "Cannot read the prompt set" in dialogs.shown[-1][1]
    assert find_item(tree, new_class).text(1) == "new class"  # the tree is left as it was


def test_dicom_folder_input(panel, tmp_path, monkeypatch):
    widget, _ = panel
    from HLIPSlicerLib.qt_seam import dialogs
    ui = widget.ui
    ui.studySelector.setCurrentIndex(ui.studySelector.findData(widget.studyPanel.STUDY_FOLDER))
    assert ui.volumeList.isHidden() and not ui.dicomFolderEdit.isHidden()
    assert "listed after the analysis" in ui.scansLabel.text()
    monkeypatch.setitem(dialogs.answers, "open_folder", str(tmp_path))
    ui.browseFolderButton.click()
    assert ui.dicomFolderEdit.text() == str(tmp_path) and widget._parameterNode.dicomFolder == str(tmp_path)
    ui.studySelector.setCurrentIndex(0)
    assert not ui.volumeList.isHidden() and ui.volumeList.count() == 2


@pytest.mark.slow
def test_panel_analyze_results_overlay_and_cancel(panel, qtbot, tiny_model_dir, tmp_path):
    widget, nodes = panel
    ui = widget.ui
    widget.addLocalModel(str(tiny_model_dir))
    assert "Ready" in ui.modelStatusLabel.text()
    ui.deviceSelector.setCurrentIndex(ui.deviceSelector.findText("cpu"))
    qtbot.mouseClick(ui.analyzeButton, slicer_qt().Qt.LeftButton)
    assert ui.analyzeButton.text() == "Cancel"
    qtbot.waitUntil(lambda: not widget.logic.isRunning(), timeout=180_000)
    assert widget.logic.run.state == "done", widget.logic.run.error
    assert ui.analyzeButton.text() == "Analyze study" and ui.progressBar.value() == 100
    rows = widget.logic.scores(widget.resultNode)
    table = ui.resultsTable
    assert table.rowCount() == len(rows)
    assert [(table.item(r, 0).text(), table.item(r, 1).text()) for r in range(table.rowCount())] == \
        [(row["task"], row["class"]) for row in rows]
    # the top class of the first task is selected and its map shown in every slice view
    selected = table.selectionModel().selectedRows()[0].row()
    assert rows[selected]["top"]
    composite = slicer.mrmlScene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    overlay = slicer.mrmlScene.GetNodeByID(composite.GetForegroundVolumeID())
    assert overlay.GetAttribute("HLIP.Class") == rows[selected]["class"]
    ui.opacitySpinBox.setValue(0.8)
    assert composite.GetForegroundOpacity() == pytest.approx(0.8)
    ui.thresholdSpinBox.setValue(0.4)
    assert overlay.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.4)
    # choosing another class shows that class
    other = next(r for r in range(len(rows)) if rows[r]["class"] != rows[selected]["class"])
    table.selectRow(other)
    overlay = slicer.mrmlScene.GetNodeByID(composite.GetForegroundVolumeID())
    assert overlay.GetAttribute("HLIP.Class") == rows[other]["class"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # as in Slicer's module panel (a scroll area), the panel gets at least its size hint: no squeezed layouts
    hint = widget.parent.sizeHint()
    widget.parent.resize(max(460, hint.width()), max(1100, hint.height()))
    assert widget.parent.grab().save(str(ARTIFACTS / "hlip_panel.png"))

    # run again and cancel: the button turns back, nothing is added to the scene
    widget.logic.workerEnvironment = {"HLIP_WORKER_PAUSE_S": "1.0"}
    before = slicer.mrmlScene.GetNumberOfNodes()
    qtbot.mouseClick(ui.analyzeButton, slicer_qt().Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.logic.run.stage != "", timeout=60_000)
    qtbot.mouseClick(ui.analyzeButton, slicer_qt().Qt.LeftButton)  # "Cancel"
    qtbot.waitUntil(lambda: not widget.logic.isRunning(), timeout=60_000)
    assert widget.logic.run.state == "cancelled" and ui.analyzeButton.text() == "Analyze study"
    assert slicer.mrmlScene.GetNumberOfNodes() == before


def test_missing_model_is_explained_and_nothing_runs(panel, qtbot):
    widget, _ = panel
    from HLIPSlicerLib.qt_seam import dialogs
    widget.addLocalModel("/nonexistent/model.pt")
    widget.ui.analyzeButton.click()
    assert not widget.logic.isRunning()
    assert dialogs.shown and dialogs.shown[-1][0] == "error" and "/nonexistent/model.pt" in dialogs.shown[-1][1]


def slicer_qt():
    from HLIPSlicerLib.qt_seam import qt
    return qt


def find_item(tree, path):
    from HLIPSlicerLib.qt_seam import qt
    stack = [tree.topLevelItem(n) for n in range(tree.topLevelItemCount())]
    while stack:
        item = stack.pop()
        if item.data(0, qt.Qt.UserRole) == path:
            return item
        stack += [item.child(n) for n in range(item.childCount())]
    raise KeyError(path)
