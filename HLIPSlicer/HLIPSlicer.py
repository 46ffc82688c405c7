"""HLIP for 3D Slicer: zero-shot classification of a whole CT/MRI study from editable text prompts, with attention
maps overlaid on the volumes.

Layers: HLIPSlicerWidget (GUI only) -> HLIPSlicerLogic (MRML in and out; the scripting API) -> the worker child
process (Scripts/hlip_worker.py, run by PythonSlicer) -> HLIPCore (model, study reading, maps). This file holds
thin classes; the logic's implementation is HLIPSlicerLib/logic.py, the widget's parts HLIPSlicerLib/*_panel.py.

Scripting from Slicer's Python console::

    logic = slicer.util.getModuleLogic("HLIPSlicer")            # or HLIPSlicer.HLIPSlicerLogic()
    volumes = logic.studyVolumes(studyItemID)                     # every series of a subject hierarchy study
    table = logic.analyzeVolumes(volumes, "hlip-demo", "pub_brain_5")   # blocks; progressCallback optional
    logic.scores(table)                                           # [{task, class, probability, top, map}, ...]
    logic.showAttentionMap(table, "Glioma", opacity=0.5, threshold=0.2)
"""
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import slicer

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import HLIPSlicerLib  # noqa: E402
from HLIPSlicerLib import overlays, process, study  # noqa: E402
from HLIPSlicerLib.logic import DEFAULT_MODEL, AnalysisLogic, AnalysisRun, HLIPSlicerError  # noqa: E402,F401
from HLIPSlicerLib.qt_seam import get as qget  # noqa: E402
from HLIPSlicerLib.qt_seam import (Choice, ScriptedLoadableModule, ScriptedLoadableModuleTest,  # noqa: E402
                                   ScriptedLoadableModuleWidget, VTKObservationMixin, WithinRange,
                                   parameterNodeWrapper, qt, tr, translate)

_ = tr
HLIPSlicerLib.ensure_core_on_path()

DEVICES = ["auto", "cpu", "cuda"]
PRECISIONS = ["fp32", "bf16"]
ATTENTION = ["all", "top", "none"]


#
# HLIPSlicer
#


class HLIPSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("HLIP")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["HLIP for 3D Slicer contributors"]
        self.parent.helpText = _("""
Zero-shot classification of a whole CT or MRI study (every series at once) with an HLIP model, from text prompts
you can edit, and attention maps shown over the volumes. Research use only, not a medical device.
See the <a href="https://github.com/hlip-slicer/hlip-slicer#slicer">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
HLIP (hierarchical language-image pre-training, Zhao et al.). The model runs in a separate process started with
PythonSlicer; PyTorch comes from the SlicerPyTorch extension.
""")


#
# Parameters
#


@parameterNodeWrapper
class HLIPSlicerParameterNode:
    """What the panel remembers in the scene (saved with it).

    modelId - catalog id or local checkpoint path; device/precision/attention - worker options;
    opacity/threshold - overlay display; promptSetText - the edited prompt set (JSON);
    dicomFolder - an input folder when not using loaded volumes.
    """
    modelId: str = DEFAULT_MODEL
    device: Annotated[str, Choice(DEVICES)] = "auto"
    precision: Annotated[str, Choice(PRECISIONS)] = "fp32"
    attention: Annotated[str, Choice(ATTENTION)] = "all"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    promptSetText: str = ""
    dicomFolder: str = ""


#
# Widget
#


class HLIPSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: GUI only; everything it does goes through HLIPSlicerLogic. The study input, the prompt editor and
    the results are small classes in HLIPSlicerLib (study_panel, prompt_panel, results_panel) that it owns."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.studyPanel = None
        self.promptPanel = None
        self.resultsPanel = None
        self._timer = None

    # -- setup -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from HLIPSlicerLib.qt_seam import child_widgets, load_ui
        uiWidget = load_ui(self.resourcePath("UI/HLIPSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = child_widgets(uiWidget)
        if hasattr(uiWidget, "setMRMLScene"):
            uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HLIPSlicerLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)

        from HLIPSlicerLib.prompt_panel import PromptPanel
        from HLIPSlicerLib.results_panel import ResultsPanel
        from HLIPSlicerLib.study_panel import StudyPanel
        ui = self.ui
        self.studyPanel = StudyPanel(ui, self.logic, self.parent)
        ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        ui.downloadModelButton.clicked.connect(self.onDownloadModel)
        ui.localModelButton.clicked.connect(self.onLocalModel)
        ui.deviceSelector.currentIndexChanged.connect(lambda *a: self.updateDeviceWarning())
        ui.precisionSelector.currentIndexChanged.connect(lambda *a: self.updateDeviceWarning())
        ui.analyzeButton.clicked.connect(self.onAnalyzeButton)
        self.resultsPanel = ResultsPanel(ui, self.logic, lambda: self._parameterNode)
        ui.progressBar.setRange(0, 100)

        self.promptPanel = PromptPanel(ui, lambda: self._parameterNode, self.parent)
        self.initializeParameterNode()
        self.populateModels()
        self.studyPanel.populate()
        self.promptPanel.loadFromParameterNode()
        self.updateDeviceWarning()

    def cleanup(self) -> None:
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.initializeParameterNode()
        self.studyPanel.populate()

    def onSceneNodesChanged(self, caller=None, event=None) -> None:
        if not self.studyPanel or self.logic.isRunning():  # studyPanel: set up after the logic
            return
        qt.QTimer.singleShot(0, self.studyPanel.populate)  # after the node is fully added/removed

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # -- model -------------------------------------------------------------------------------------------------
    def populateModels(self) -> None:
        from HLIPSlicerLib import models
        sel = self.ui.modelSelector
        sel.blockSignals(True)
        sel.clear()
        self._models = {}
        try:
            choices = models.catalog()
        except Exception as exc:  # noqa: BLE001 - a broken user catalog must not break the panel
            choices = []
            self.ui.modelStatusLabel.setText(_("Model catalog error: {error}").format(error=exc))
        for choice in choices:
            mark = "" if choice.available else _(" (not downloaded)")
            sel.addItem(f"{choice.id}{mark}", choice.id)
            self._models[choice.id] = choice
        wanted = self._parameterNode.modelId if self._parameterNode else DEFAULT_MODEL
        if wanted and sel.findData(wanted) < 0:
            choice = models.local_choice(wanted)
            sel.addItem(choice.title, choice.id)
            self._models[choice.id] = choice
        sel.setCurrentIndex(max(0, sel.findData(wanted)))
        sel.blockSignals(False)
        self.onModelChanged()

    def addLocalModel(self, path: str) -> None:
        from HLIPSlicerLib import models
        choice = models.local_choice(path)
        self._models[choice.id] = choice
        if self.ui.modelSelector.findData(choice.id) < 0:
            self.ui.modelSelector.addItem(choice.title, choice.id)
        self.ui.modelSelector.setCurrentIndex(self.ui.modelSelector.findData(choice.id))

    def currentModel(self):
        return self._models.get(qget(self.ui.modelSelector, "currentData"))

    def onModelChanged(self, *args) -> None:
        from HLIPSlicerLib import models
        choice = self.currentModel()
        if choice is None:
            self.ui.modelStatusLabel.setText(_("No model: choose 'Use a local file...'."))
            self.ui.downloadModelButton.setEnabled(False)
            return
        if self._parameterNode:
            self._parameterNode.modelId = choice.id
        self.ui.downloadModelButton.setEnabled(choice.downloadable)
        if choice.available:
            self.ui.modelStatusLabel.setText(_("{title}. Ready: {location}").format(title=choice.title,
                                                                                   location=choice.location))
        else:
            self.ui.modelStatusLabel.setText(models.unavailable_message(choice))

    def onLocalModel(self) -> None:
        from HLIPSlicerLib.qt_seam import dialogs
        path = dialogs.open_file(self.parent, _("HLIP checkpoint"),
                                 _("Checkpoints (*.pt *.pth *.bin *.safetensors);;All files (*)"))
        if path:
            self.addLocalModel(path)

    def onDownloadModel(self) -> None:
        choice = self.currentModel()
        if choice is None or not choice.downloadable:
            return
        if not self.ensureDependencies():
            return
        self.startRun(lambda **kw: self.logic.downloadModel(choice.id, **kw), _("Downloading {model}...").format(
            model=choice.id))

    def updateDeviceWarning(self) -> None:
        from HLIPSlicerLib import dependencies
        device = qget(self.ui.deviceSelector, "currentText") or "auto"
        precision = qget(self.ui.precisionSelector, "currentText") or "fp32"
        try:
            text = dependencies.device_warning(device, precision) if device != "cpu" else ""
        except Exception as exc:  # noqa: BLE001 - a broken CUDA setup is itself worth a warning
            text = _("The GPU cannot be queried ({error}); the CPU may be used.").format(error=exc)
        self.ui.deviceWarningLabel.setText(text)
        self.ui.deviceWarningLabel.setVisible(bool(text))

    # -- the panels' state ---------------------------------------------------------------------------------------
    def selectedVolumes(self) -> list:
        """The volume nodes ticked in the study list."""
        return self.studyPanel.selectedVolumes()

    @property
    def prompts(self):
        """The edited prompt set (prompt_editor.PromptTree)."""
        return self.promptPanel.prompts if self.promptPanel else None

    @property
    def resultNode(self):
        """The result table node shown in the results table."""
        return self.resultsPanel.resultNode if self.resultsPanel else None

    # -- run ---------------------------------------------------------------------------------------------------
    def ensureDependencies(self) -> bool:
        from HLIPSlicerLib import dependencies
        from HLIPSlicerLib.qt_seam import dialogs
        try:
            dependencies.ensure(dependencies.slicer_installer(dialogs.confirm))
            return True
        except dependencies.DependencyError as exc:
            dialogs.error(str(exc))
            return False

    def onAnalyzeButton(self) -> None:
        from HLIPSlicerLib.qt_seam import dialogs
        if self.logic.isRunning():
            self.logic.cancel()
            return
        issues = self.prompts.issues()
        if issues:
            dialogs.error(_("The prompts have problems (marked in red): {issue}").format(issue=issues[0]))
            return
        model = self.currentModel()
        if model is None or not model.available:
            from HLIPSlicerLib import models
            dialogs.error(models.unavailable_message(model) if model else _("Choose a model first."))
            return
        if not self.ensureDependencies():
            return
        p = self._parameterNode
        options = dict(modelId=model.id, promptSet=self.prompts.doc, device=p.device, precision=p.precision,
                       attention=p.attention)
        if self.studyPanel.isFolder():
            folder = self.studyPanel.folder()
            self.startRun(lambda **kw: self.logic.analyzeFolder(folder, **options, **kw), _("Analysing {name}...")
                          .format(name=folder))
        else:
            volumes = self.selectedVolumes()
            self.startRun(lambda **kw: self.logic.analyzeVolumes(volumes, **options, **kw), _("Analysing..."))

    def startRun(self, launch, message: str) -> None:
        from HLIPSlicerLib.qt_seam import dialogs
        self.ui.logText.clear()
        self.ui.progressBar.setValue(0)
        self.appendLog(message)
        try:
            launch(blocking=False, progressCallback=self.onProgress, logCallback=self.appendLog,
                   completedCallback=self.onRunCompleted)
        except HLIPSlicerError as exc:
            dialogs.error(str(exc))
            return
        self.ui.analyzeButton.setText(_("Cancel"))
        self.ui.analyzeButton.setToolTip(_("Stop the analysis; nothing is added to the scene"))
        if self.logic.run.handle.needs_polling:  # our own reader thread: poll it from the GUI thread
            self._timer = qt.QTimer()
            self._timer.timeout.connect(self.logic.poll)
            self._timer.start(100)

    def onProgress(self, fraction: float, stage: str) -> None:
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        self.ui.progressBar.setFormat(f"%p% {stage}")

    def appendLog(self, line: str) -> None:
        kind, data = process.parse_line(line)
        if kind == "progress":
            line = f"[{data.fraction:4.0%}] {data.stage}"
        elif kind == "result":
            line = _("Results: {path}").format(path=data)
        elif kind == "error":
            line = _("Error: {message}").format(message=data)
        self.ui.logText.appendPlainText(line)

    def onRunCompleted(self, run) -> None:
        from HLIPSlicerLib import models
        from HLIPSlicerLib.qt_seam import dialogs
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.ui.analyzeButton.setText(_("Analyze study"))
        self.ui.analyzeButton.setToolTip("")
        if run.state == "cancelled":
            self.appendLog(_("Cancelled; the scene was left as it was."))
            self.ui.progressBar.setValue(0)
            return
        if run.state != "done":
            self.appendLog(run.error)
            dialogs.error(run.error, "\n".join(run.log[-40:]))
            return
        if run.kind == "download":
            self.populateModels()
            self.appendLog(_("Downloaded to {path}").format(path=run.resultPath))
            return
        self.resultsPanel.show(run.resultNode)
        report = self.logic.report(run.resultNode)
        self.studyPanel.showScans([f"{s['description']} ({s['modality']})" for s in report.get("scans", [])],
                                  [(s.name, s.reason) for s in run.skipped] +
                                  [(k["source"], k["reason"]) for k in report.get("skipped", [])])


#
# Logic
#


class HLIPSlicerLogic(AnalysisLogic):
    """The scripting API (HLIPSlicer/README.md), used by the widget, the Python console, batch runs and the tests.
    Implemented in HLIPSlicerLib/logic.py (AnalysisLogic, a ScriptedLoadableModuleLogic); this class adds the
    module's parameter node."""

    def getParameterNode(self):
        return HLIPSlicerParameterNode(super().getParameterNode())


#
# Test
#


class HLIPSlicerTest(ScriptedLoadableModuleTest):
    """The module self-test (Reload and Test, or ctest py_HLIPSlicer): a two-series phantom study through the
    real worker process, the results table, map geometry, slice-view layers, and cancel. It uses the bundled
    'hlip-demo' model when present, else a tiny random-weight model made on the fly (scores then mean nothing;
    the plumbing is what is tested). Runs unchanged in pytest on the headless scene (test_slicer_selftest.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear(False)

    def runTest(self):
        self.setUp()
        self.test_HLIPSlicer_analyze()
        self.setUp()
        self.test_HLIPSlicer_cancel()

    # -- data ----------------------------------------------------------------------------------------------------
    @staticmethod
    def makeStudy():
        import numpy as np
        sh = study.subject_hierarchy()
        studyItem = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "HLIP test patient"), "HLIP test")
        rng = np.random.default_rng(0)
        nodes = []
        for n, (shape, spacing) in enumerate((((24, 48, 48), (2.0, 2.0, 4.0)), ((20, 40, 40), (2.5, 2.5, 5.0)))):
            array = (100 + rng.normal(0, 5, shape)).astype(np.float32)
            k, j, i = (s // 2 for s in shape)
            array[k - 2:k + 3, j - 5:j + 6, i - 5:i + 6] = 1000.0  # the "lesion"
            ijkToRAS = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
            ijkToRAS[:3, 3] = [40.0 + 10 * n, 40.0, -40.0]
            node = slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRAS, name=f"HLIP test series {n + 1}")
            sh.SetItemParent(study.sh_item(node), studyItem)
            nodes.append(node)
        return studyItem, nodes

    def modelForTest(self):
        from HLIPSlicerLib import models
        demo = models.find(DEFAULT_MODEL)
        if demo is not None and demo.available:
            return DEFAULT_MODEL
        folder = Path(tempfile.mkdtemp(prefix="hlip-selftest-model-"))
        return str(self.makeTinyModel(folder))

    @staticmethod
    def makeTinyModel(folder: Path) -> Path:
        """A random-weight tiny_multiscan_h3 model with a small WordPiece tokenizer, as `hlip convert` writes it."""
        import torch
        from HLIPCore.model import create_model
        from HLIPCore.model.checkpoint import convert_checkpoint
        from HLIPCore.training.vocab import build_wordpiece_tokenizer
        prompts = "This MRI study shows: No significant abnormalities, Acute stroke, Glioma, Meningioma, Metastasis."
        tok = build_wordpiece_tokenizer([prompts], folder / "tokenizer", vocab_size=256)
        torch.manual_seed(0)
        torch.save(create_model("tiny_multiscan_h3").state_dict(), folder / "tiny.pt")
        return convert_checkpoint(folder / "tiny.pt", "tiny_multiscan_h3", folder / "tiny", tokenizer=tok)

    # -- tests ---------------------------------------------------------------------------------------------------
    def test_HLIPSlicer_analyze(self):
        import numpy as np
        self.delayDisplay("HLIP: analysing a two-series phantom study")
        studyItem, nodes = self.makeStudy()
        logic = HLIPSlicerLogic()
        self.assertEqual(logic.studyVolumes(studyItem), nodes)
        stages = []
        table = logic.analyzeVolumes(nodes, self.modelForTest(), "pub_brain_5", device="cpu",
                                     progressCallback=lambda f, s: stages.append(s))
        self.assertEqual(stages[-1], "done")
        report = logic.report(table)
        rows = logic.scores(table)
        self.assertEqual(len(rows), sum(len(c) for c in report["scores"].values()))
        for task, classes in report["scores"].items():
            self.assertAlmostEqual(sum(classes.values()), 1.0, places=4)
        glioma = [r for r in rows if r["class"] == "Glioma"][0]
        maps = logic.showAttentionMap(table, "Glioma", task=glioma["task"], opacity=0.4, threshold=0.25)
        self.assertEqual(len(maps), len(nodes))
        for source, overlay in zip(nodes, maps):
            np.testing.assert_array_equal(overlays.ijk_to_ras(overlay), overlays.ijk_to_ras(source))
        for n in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = slicer.mrmlScene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
            self.assertEqual(composite.GetForegroundVolumeID(), maps[0].GetID())
            self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.4)
        sh = study.subject_hierarchy()
        self.assertEqual(sh.GetItemParent(sh.GetItemParent(sh.GetItemByDataNode(table))), studyItem)
        self.delayDisplay("HLIP: analysis test passed")

    def test_HLIPSlicer_cancel(self):
        self.delayDisplay("HLIP: cancelling a run")
        _item, nodes = self.makeStudy()
        logic = HLIPSlicerLogic()
        logic.workerEnvironment = {"HLIP_WORKER_PAUSE_S": "1.0"}
        before = slicer.mrmlScene.GetNumberOfNodes()
        run = logic.analyzeVolumes(nodes, self.modelForTest(), "pub_brain_5", device="cpu", blocking=False)
        app = getattr(slicer, "app", None)
        deadline = time.monotonic() + 120
        while not run.stage and time.monotonic() < deadline:
            logic.poll()
            if app is not None:
                app.processEvents()
            time.sleep(0.05)
        logic.cancel()
        run.wait(timeout=60, process_events=app.processEvents if app is not None else None)
        self.assertEqual(run.state, "cancelled")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("HLIP: cancel test passed")
