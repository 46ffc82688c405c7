"""The panel's results: the scores table (task, class, probability; the most likely class of each task in bold),
the selected row's attention map over the slice views, and the map opacity and threshold applied live.
"""
from typing import Callable

from HLIPSlicerLib.logic import HLIPSlicerError
from HLIPSlicerLib.qt_seam import dialogs, qt, tr

_ = tr


class ResultsPanel:
    """Owned by HLIPSlicerWidget: ui.resultsTable, ui.resultStatusLabel, ui.opacitySpinBox, ui.thresholdSpinBox.
    `logic`: HLIPSlicerLogic; `parameterNode`: returns the widget's current parameter node (opacity, threshold).
    `resultNode` is the table node shown."""

    def __init__(self, ui, logic, parameterNode: Callable[[], object]) -> None:
        self.ui = ui
        self.logic = logic
        self.parameterNode = parameterNode
        self.resultNode = None
        ui.resultsTable.itemSelectionChanged.connect(self.onSelectionChanged)
        ui.opacitySpinBox.valueChanged.connect(self.onOpacityChanged)
        ui.thresholdSpinBox.valueChanged.connect(self.onThresholdChanged)
        ui.resultsTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        ui.resultsTable.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        ui.resultsTable.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)

    def show(self, table) -> None:
        """Fill the table from a result table node and select the first row with a map (which shows it)."""
        self.resultNode = table
        rows = self.logic.scores(table)
        view = self.ui.resultsTable
        view.blockSignals(True)
        view.clear()
        view.setColumnCount(3)
        view.setHorizontalHeaderLabels([_("Task"), _("Class"), _("Probability")])
        view.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate((row["task"], row["class"], f"{row['probability']:.3f}")):
                cell = qt.QTableWidgetItem(text)
                if row["top"]:
                    font = cell.font()
                    font.setBold(True)
                    cell.setFont(font)
                view.setItem(r, c, cell)
        view.resizeColumnsToContents()
        view.blockSignals(False)
        self.ui.resultStatusLabel.setText(_("Select a row to show its attention map. Results are in the subject "
                                            "hierarchy under the study."))
        top = next((r for r, row in enumerate(rows) if row["top"] and row["map"]), None)
        if top is not None:
            view.selectRow(top)

    def onSelectionChanged(self) -> None:
        view = self.ui.resultsTable
        selected = view.selectionModel().selectedRows()
        if not selected or self.resultNode is None:
            return
        r = selected[0].row()
        task, cls = view.item(r, 0).text(), view.item(r, 1).text()
        try:
            self.logic.showAttentionMap(self.resultNode, cls, task=task, opacity=self.parameterNode().opacity,
                                        threshold=self.parameterNode().threshold)
            self.ui.resultStatusLabel.setText(_("Showing the attention map of {task}: {cls}.").format(task=task,
                                                                                                    cls=cls))
        except HLIPSlicerError as exc:
            self.ui.resultStatusLabel.setText(str(exc))
        except Exception as exc:  # noqa: BLE001
            dialogs.error(_("The attention map cannot be shown: {error}").format(error=exc))

    def onOpacityChanged(self, value) -> None:
        if self.resultNode is not None:
            self.logic.setOverlayOpacity(value)

    def onThresholdChanged(self, value) -> None:
        if self.resultNode is not None:
            self.logic.setOverlayThreshold(self.resultNode, value)
