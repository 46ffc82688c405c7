"""The HLIP panel outside Slicer: HLIPSlicer.ui loaded with PySide6 (offscreen) through the Qt seam, on a real
headless MRML scene, clicking Analyze (real worker child process), reading the results table, selecting a class,
changing the overlay opacity, editing prompts, cancelling. See HLIPSlicer/README.md for what this does not cover."""
import sys

import numpy as np
import pytest

pytest.importorskip("PySide6")
from slicer_env import ARTIFACTS, mrml_app, slicer_module  # noqa: F401,E402
from test_slicer_logic import add_study, model_dir  # noqa: F401,E402

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


@pytest.mark.slow
def test_panel_analyze_results_overlay_and_cancel(panel, qtbot, model_dir, tmp_path):
    widget, nodes = panel
    ui = widget.ui
    widget.addLocalModel(str(model_dir))
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
