"""The panel's study input: a study from the subject hierarchy, the loaded volumes, or a DICOM folder; the volumes
to use (ticked in a list); and the scans that will be used and skipped, with the reason.
"""
import slicer

from HLIPSlicerLib import results, study
from HLIPSlicerLib.qt_seam import dialogs, qt, tr
from HLIPSlicerLib.qt_seam import get as qget

_ = tr


class StudyPanel:
    """Owned by HLIPSlicerWidget: ui.studySelector, ui.volumeList, ui.dicomFolderEdit / ui.browseFolderButton and
    ui.scansLabel. `logic` (HLIPSlicerLogic) gives a study's volumes and the plan of scans used and skipped."""

    STUDY_ALL, STUDY_FOLDER = -1, -2

    def __init__(self, ui, logic, parent=None) -> None:
        self.ui = ui
        self.logic = logic
        self.parent = parent
        ui.studySelector.currentIndexChanged.connect(self.onStudyChanged)
        ui.volumeList.itemChanged.connect(lambda *a: self.updateScanList())
        ui.browseFolderButton.clicked.connect(self.onBrowseFolder)

    def isFolder(self) -> bool:
        """True when the input is a DICOM folder or file (`folder()`) rather than volume nodes."""
        return qget(self.ui.studySelector, "currentData") == self.STUDY_FOLDER

    def folder(self) -> str:
        return qget(self.ui.dicomFolderEdit, "text").strip()

    def populate(self) -> None:
        """List the scene's studies, then "Loaded volumes" and "DICOM folder or file"; keep the current choice."""
        sel = self.ui.studySelector
        previous = qget(sel, "currentData") if qget(sel, "count") else None
        sel.blockSignals(True)
        sel.clear()
        sh = study.subject_hierarchy()
        import vtk
        ids = vtk.vtkIdList()
        sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
        for n in range(ids.GetNumberOfIds()):
            item = ids.GetId(n)
            if sh.GetItemLevel(item) == "Study":
                patient = sh.GetItemName(sh.GetItemParent(item))
                sel.addItem(_("Study: {study} ({patient})").format(study=sh.GetItemName(item), patient=patient), item)
        sel.addItem(_("Loaded volumes"), self.STUDY_ALL)
        sel.addItem(_("DICOM folder or file"), self.STUDY_FOLDER)
        index = sel.findData(previous) if previous is not None else -1
        sel.setCurrentIndex(index if index >= 0 else 0)
        sel.blockSignals(False)
        self.onStudyChanged()

    def onStudyChanged(self, *args) -> None:
        choice = qget(self.ui.studySelector, "currentData")
        folder = choice == self.STUDY_FOLDER
        self.ui.volumeList.setVisible(not folder)
        self.ui.dicomFolderEdit.setVisible(folder)
        self.ui.browseFolderButton.setVisible(folder)
        lst = self.ui.volumeList
        lst.blockSignals(True)
        lst.clear()
        if choice is not None and not folder:
            if choice == self.STUDY_ALL:
                nodes = [slicer.mrmlScene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
                         for n in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
                nodes = [n for n in nodes if not n.GetAttribute(results.ATTR_ROLE)]
            else:
                nodes = self.logic.studyVolumes(int(choice))
            for node in nodes:
                if node.GetAttribute(results.ATTR_ROLE) == "attentionMap":
                    continue
                entry = qt.QListWidgetItem(node.GetName())
                entry.setData(qt.Qt.UserRole, node.GetID())
                entry.setFlags(entry.flags() | qt.Qt.ItemIsUserCheckable)
                entry.setCheckState(qt.Qt.Checked)
                lst.addItem(entry)
        lst.blockSignals(False)
        self.updateScanList()

    def selectedVolumes(self) -> list:
        """The ticked volume nodes, in list order."""
        nodes = []
        for n in range(qget(self.ui.volumeList, "count")):
            entry = self.ui.volumeList.item(n)
            if entry.checkState() == qt.Qt.Checked:
                node = slicer.mrmlScene.GetNodeByID(entry.data(qt.Qt.UserRole))
                if node is not None:
                    nodes.append(node)
        return nodes

    def updateScanList(self) -> None:
        if qget(self.ui.studySelector, "currentData") == self.STUDY_FOLDER:
            self.ui.scansLabel.setText(_("The scans of the folder are listed after the analysis."))
            return
        try:
            used, skipped = self.logic.planScans(self.selectedVolumes())
        except ImportError:  # HLIPCore's requirements not installed yet
            self.ui.scansLabel.setText(_("The scans are listed once the requirements are installed."))
            return
        self.showScans([f"{u.name} ({u.modality}, {u.shape[2]}x{u.shape[1]}x{u.shape[0]})" for u in used],
                       [(s.name, s.reason) for s in skipped])

    def showScans(self, used, skipped) -> None:
        import html
        lines = [_("<b>{n} scan(s) used:</b>").format(n=len(used))] + [html.escape(u) for u in used]
        if skipped:
            lines.append(_("<b>Skipped:</b>"))
            lines += [f"{html.escape(name)}: <i>{html.escape(reason)}</i>" for name, reason in skipped]
        self.ui.scansLabel.setText("<br>".join(lines))

    def onBrowseFolder(self) -> None:
        folder = dialogs.open_folder(self.parent, _("DICOM folder of the study"))
        if folder:
            self.ui.dicomFolderEdit.setText(folder)
