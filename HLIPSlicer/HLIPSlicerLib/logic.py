"""HLIPSlicerLogic's implementation, the scripting API (HLIPSlicer/README.md): `AnalysisLogic` takes and returns MRML
nodes; the analysis itself runs in the worker child process (Scripts/hlip_worker.py), so nothing here imports torch.
HLIPSlicer.HLIPSlicerLogic (the class Slicer and scripts use) is AnalysisLogic plus the module's parameter node.
"""
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import slicer

from HLIPSlicerLib import ensure_core_on_path, models, overlays, process, results, study
from HLIPSlicerLib.qt_seam import ScriptedLoadableModuleLogic, tr

_ = tr
ensure_core_on_path()

MODULE_NAME = "HLIPSlicer"
DEFAULT_MODEL = models.DEFAULT_MODEL


class HLIPSlicerError(Exception):
    """A failure with a message for the user (what happened and what to do)."""


@dataclass
class AnalysisRun:
    """One worker run. `state`: running | done | failed | cancelled."""
    kind: str
    out_dir: Path
    work_dir: Path
    input_nodes: List = field(default_factory=list)
    skipped: List = field(default_factory=list)
    name: str = ""
    state: str = "running"
    error: str = ""
    stage: str = ""
    fraction: float = 0.0
    log: List[str] = field(default_factory=list)
    resultNode: object = None
    resultPath: str = ""
    handle: object = None
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout=None, process_events=None):
        self.handle.wait(timeout=timeout, process_events=process_events)
        return self


class AnalysisLogic(ScriptedLoadableModuleLogic):
    """All computation, usable without the GUI: from the Python console, the batch script and the tests.

    pythonExecutable: the interpreter that runs the worker (default: PythonSlicer in Slicer, else sys.executable).
    useSlicerLauncher: use slicer.util.launchConsoleProcess(blocking=False) when Slicer provides it.
    """

    def __init__(self, pythonExecutable: Optional[str] = None, useSlicerLauncher: bool = True):
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleName = MODULE_NAME  # the module's parameter node, whatever the subclass is called
        self.pythonExecutable = pythonExecutable
        self.useSlicerLauncher = useSlicerLauncher
        self.workerEnvironment = {}
        self.run: Optional[AnalysisRun] = None
        models.use_module_cache()

    # -- inputs --------------------------------------------------------------------------------------------------
    def studyVolumes(self, item) -> list:
        """Scalar volumes under a subject hierarchy item (study, patient or folder item ID, or a volume node)."""
        if hasattr(item, "GetID"):
            item = study.sh_item(item)
        return study.volumes_in_item(int(item))

    def planScans(self, volumeNodes, maxScans: int = 40):
        """(used: [PlannedScan], skipped: [SkippedVolume]) - what the panel lists before a run."""
        from HLIPCore.data import ScanSelection
        return study.plan_scans(volumeNodes, ScanSelection(max_scans=maxScans))

    # -- running -------------------------------------------------------------------------------------------------
    def isRunning(self) -> bool:
        return self.run is not None and self.run.state == "running"

    def _work_dir(self, outputFolder) -> Path:
        base = None
        app = getattr(slicer, "app", None)
        if app is not None:
            base = Path(app.temporaryPath) / "HLIP"
            base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=time.strftime("hlip-%Y%m%d-%H%M%S-"), dir=base))

    @staticmethod
    def _prompt_option(promptSet, work_dir: Path):
        """None / built-in name / file path as given; a PromptSet or dict is written to the job folder."""
        if promptSet is None or isinstance(promptSet, (str, os.PathLike)):
            return None if promptSet is None else str(promptSet)
        from HLIPCore.prompts import PromptSet, save_prompt_set
        ps = promptSet if isinstance(promptSet, PromptSet) else PromptSet.from_dict(promptSet, source="prompt set")
        return str(save_prompt_set(ps, work_dir / "prompts.json"))

    def _options(self, modelId, prompts, device, precision, attention, attentionMethod, numSlices, config,
                 tokenizer, mapSmoothMm=None) -> dict:
        return {"model": str(modelId), "prompts": prompts, "config": config, "tokenizer": tokenizer,
                "device": device, "precision": precision, "attention": attention,
                "attention_method": attentionMethod, "map_smooth_mm": mapSmoothMm, "num_slices": numSlices,
                "overview": False, "download": False,
                # the scans were chosen in planScans (on the node names): the worker takes them all
                "selection": {"max_scans": 10 ** 6}}

    def analyzeVolumes(self, volumeNodes, modelId: str = DEFAULT_MODEL, promptSet=None, outputFolder=None,
                       progressCallback: Optional[Callable[[float, str], None]] = None,
                       logCallback: Optional[Callable[[str], None]] = None,
                       completedCallback: Optional[Callable[[AnalysisRun], None]] = None, blocking: bool = True,
                       device: str = "auto", precision: str = "fp32", attention: str = "all",
                       attentionMethod: str = "auto", numSlices: Optional[int] = None, maxScans: int = 40,
                       name: Optional[str] = None, config: Optional[str] = None, tokenizer: Optional[str] = None,
                       mapSmoothMm: Optional[float] = None):
        """Analyse the study made of `volumeNodes` in the worker process.

        blocking=True returns the result table node (raises HLIPSlicerError on failure or cancel);
        blocking=False returns the AnalysisRun at once; the caller polls (`logic.poll()`, e.g. from a QTimer)
        unless Slicer's launcher drives it; `completedCallback(run)` is called at the end either way.
        The scene is not touched until the worker has finished successfully. `mapSmoothMm`: the maps' Gaussian
        sigma (None: the map method's default, as `hlip analyze --map-smooth-mm`).
        """
        if self.isRunning():
            raise HLIPSlicerError(_("An analysis is already running; cancel it first."))
        used, skipped = self.planScans(list(volumeNodes), maxScans)
        if not used:
            reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped) or _("no volume selected")
            raise HLIPSlicerError(_("No usable scan in the selection ({reasons}).").format(reasons=reasons))
        work = self._work_dir(outputFolder)
        out_dir = Path(outputFolder) if outputFolder else work / "results"
        files = study.export_volumes([p.node for p in used], work / "input")
        options = self._options(modelId, self._prompt_option(promptSet, work), device, precision, attention,
                                attentionMethod, numSlices, config, tokenizer, mapSmoothMm)
        job = process.write_job(work / "job.json", files, out_dir, options, name=name or used[0].name)
        run = AnalysisRun("analyze", out_dir, work, [p.node for p in used], skipped, name or used[0].name)
        return self._launch(run, job, progressCallback, logCallback, completedCallback, blocking)

    def analyzeFolder(self, folder, modelId: str = DEFAULT_MODEL, promptSet=None, outputFolder=None,
                      progressCallback=None, logCallback=None, completedCallback=None, blocking: bool = True,
                      device: str = "auto", precision: str = "fp32", attention: str = "all",
                      attentionMethod: str = "auto", numSlices=None, maxScans: int = 40, name=None,
                      config=None, tokenizer=None, mapSmoothMm=None):
        """Analyse a DICOM folder / DICOMDIR / NIfTI or NRRD file without loading it first: the worker reads it,
        and the scans it used are then loaded as volume nodes (the map backgrounds)."""
        if self.isRunning():
            raise HLIPSlicerError(_("An analysis is already running; cancel it first."))
        if not Path(folder).exists():
            raise HLIPSlicerError(_("No such file or folder: {path}").format(path=folder))
        work = self._work_dir(outputFolder)
        out_dir = Path(outputFolder) if outputFolder else work / "results"
        options = self._options(modelId, self._prompt_option(promptSet, work), device, precision, attention,
                                attentionMethod, numSlices, config, tokenizer, mapSmoothMm)
        options["selection"] = {"max_scans": maxScans}
        label = name or Path(folder).name
        job = process.write_job(work / "job.json", str(folder), out_dir, options, name=label, write_scans=True)
        run = AnalysisRun("folder", out_dir, work, [], [], label)
        return self._launch(run, job, progressCallback, logCallback, completedCallback, blocking)

    def downloadModel(self, modelId: str, progressCallback=None, logCallback=None, completedCallback=None,
                      blocking: bool = True):
        """Download a catalog model into the module cache (checksum checked) in the worker process."""
        if self.isRunning():
            raise HLIPSlicerError(_("An analysis is already running; cancel it first."))
        work = self._work_dir(None)
        job = process.write_job(work / "job.json", "", work, {"model": modelId})
        data = json.loads(job.read_text())
        data["action"] = "download"
        job.write_text(json.dumps(data))
        run = AnalysisRun("download", work, work, name=modelId)
        return self._launch(run, job, progressCallback, logCallback, completedCallback, blocking)

    def _launch(self, run, job, progressCallback, logCallback, completedCallback, blocking):
        self.run = run

        def on_line(line):
            kind, data = process.parse_line(line)
            if kind == "progress":
                run.fraction, run.stage = data.fraction, data.stage
                if progressCallback:
                    progressCallback(data.fraction, data.stage)
            elif kind == "error":
                run.error = data
            elif kind == "result":
                run.resultPath = data
            run.log.append(line)
            if logCallback:
                logCallback(line)

        def on_done(code):
            self._finish(run, code)
            if completedCallback:
                completedCallback(run)

        env = {"PYTHONUNBUFFERED": "1", **self.workerEnvironment}
        try:
            run.handle = process.launch_worker(job, on_line=on_line, on_done=on_done, python=self.pythonExecutable,
                                               env=env, use_slicer=self.useSlicerLauncher and not blocking)
        except OSError as exc:
            run.state, run.error = "failed", _("Could not start the worker process ({error}).").format(error=exc)
            self._cleanup(run)
            raise HLIPSlicerError(run.error) from exc
        if not blocking:
            return run
        app = getattr(slicer, "app", None)
        run.handle.wait(process_events=app.processEvents if app is not None else None)
        if run.state != "done":
            raise HLIPSlicerError(run.error or run.state)
        return run.resultNode if run.kind != "download" else run.resultPath

    def poll(self) -> bool:
        """Deliver worker output and completion (for callers without Slicer's launcher); True while running."""
        return bool(self.run and self.run.handle and self.run.handle.poll())

    def cancel(self) -> None:
        """Kill the worker; the scene stays as it was before the run."""
        if self.isRunning():
            self.run.handle.cancel()

    def _finish(self, run: AnalysisRun, code: int) -> None:
        if run.handle is not None and run.handle.cancelled:
            run.state, run.error = "cancelled", _("Cancelled.")
            self._cleanup(run, results_too=True)
            return
        if code != 0:
            run.state = "failed"
            hint = process.EXIT_MESSAGES.get(code)
            if code < 0 or code in (137, -9):
                run.error = run.error or _("The worker was stopped by the system (signal {signal}), probably out "
                                           "of memory.").format(signal=-code if code < 0 else code - 128)
                hint = process.EXIT_MESSAGES[5]
            run.error = (run.error or _("The worker failed (exit code {code}).").format(code=code)) + \
                (f" - {hint}" if hint else "")
            logging.error("HLIP: %s", run.error)
            self._cleanup(run)
            return
        try:
            if run.kind == "analyze":
                run.resultNode = self.loadResult(run.out_dir, run.input_nodes, name=run.name)
            elif run.kind == "folder":
                run.resultNode = self._load_folder_result(run)
            run.state = "done"
        except Exception as exc:  # noqa: BLE001 - results that cannot be read become a message
            logging.exception("HLIP: reading the results failed")
            run.state, run.error = "failed", _("Reading the results failed: {error}").format(error=exc)
        self._cleanup(run)

    @staticmethod
    def _cleanup(run: AnalysisRun, results_too: bool = False) -> None:
        shutil.rmtree(run.work_dir / "input", ignore_errors=True)
        if results_too and run.out_dir.is_relative_to(run.work_dir):
            shutil.rmtree(run.work_dir, ignore_errors=True)

    # -- results -------------------------------------------------------------------------------------------------
    def loadResult(self, outputFolder, volumeNodes, name: Optional[str] = None):
        """The table node for a finished analysis folder (report.json + maps/), inputs in scan order, grouped in
        a subject hierarchy folder under the inputs' study."""
        out = Path(outputFolder)
        report = json.loads((out / "report.json").read_text())
        # the report's scans are the ones the model used (a single-scan model keeps one): each must be an input
        descriptions = [s.get("description", "") for s in report.get("scans", [])]
        known = {study.scan_file_name(n) for n in range(len(volumeNodes))}
        if not all(d in known for d in descriptions) and len(descriptions) != len(volumeNodes):
            raise HLIPSlicerError(_("The report lists {n} scans that do not match the {m} volumes given.").format(
                n=len(descriptions), m=len(volumeNodes)))
        label = name or report.get("study") or "study"
        table = results.build_table(report, out, volumeNodes, name=f"HLIP scores - {label}")
        results.result_folder_item(table, study.study_item(volumeNodes),
                                   f"HLIP - {report.get('model', {}).get('id', '')} - "
                                   f"{report.get('prompt_set', {}).get('name', '')}")
        return table

    def _load_folder_result(self, run: AnalysisRun):
        import nibabel as nib
        import numpy as np
        index = json.loads((run.out_dir / "scans.json").read_text())
        sh = study.subject_hierarchy()
        folder = sh.CreateFolderItem(sh.GetSceneItemID(), run.name)
        nodes = []
        for entry in index:
            image = nib.load(str(run.out_dir / entry["file"]))
            array = np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0))
            node = slicer.util.addVolumeFromArray(array, ijkToRAS=np.asarray(image.affine),
                                                  name=entry["description"] or Path(entry["file"]).stem)
            node.SetAttribute("DICOM.Modality", entry.get("modality", ""))
            sh.SetItemParent(study.sh_item(node), folder)
            nodes.append(node)
        run.input_nodes = nodes
        return self.loadResult(run.out_dir, nodes, name=run.name)

    @staticmethod
    def scores(resultNode) -> List[dict]:
        return results.table_rows(resultNode)

    @staticmethod
    def report(resultNode) -> dict:
        return results.report_of(resultNode)

    def _scan_index_to_node(self, resultNode) -> dict:
        inputs = results.input_nodes_of(resultNode)
        mapping = {}
        for n, scan in enumerate(self.report(resultNode).get("scans", [])):
            desc = scan.get("description", "")
            if desc.startswith("scan") and desc[4:].isdigit() and int(desc[4:]) < len(inputs):
                mapping[n] = inputs[int(desc[4:])]  # files were written as scanNNN in input order
            elif n < len(inputs):
                mapping[n] = inputs[n]
        return mapping

    def _find_task(self, resultNode, className: str, task: Optional[str]) -> str:
        scores = self.report(resultNode).get("scores", {})
        if task is not None:
            if task not in scores or className not in scores[task]:
                raise HLIPSlicerError(_("No class '{cls}' in task '{task}'.").format(cls=className, task=task))
            return task
        for name, classes in scores.items():
            if className in classes:
                return name
        raise HLIPSlicerError(_("No class '{cls}' in this result.").format(cls=className))

    def attentionMapNodes(self, resultNode, className: str, task: Optional[str] = None,
                          threshold: float = 0.2) -> list:
        """The map volumes (one per scan, input order) of a class, loaded from the output folder on first use."""
        task = self._find_task(resultNode, className, task)
        entries = [m for m in self.report(resultNode).get("maps", []) if m["task"] == task and m["class"] == className]
        if not entries:
            raise HLIPSlicerError(_("No attention map was computed for '{cls}': run again with maps for all "
                                    "classes.").format(cls=className))
        loaded = {}
        for n in range(resultNode.GetNumberOfNodeReferences(results.MAP_REF)):
            node = resultNode.GetNthNodeReference(results.MAP_REF, n)
            if node is not None and node.GetAttribute("HLIP.Task") == task and node.GetAttribute("HLIP.Class") == className:
                loaded[int(node.GetAttribute("HLIP.ScanIndex"))] = node
        inputs = self._scan_index_to_node(resultNode)
        folder = results.output_folder_of(resultNode)
        nodes = []
        for entry in sorted(entries, key=lambda m: m["scan_index"]):
            index = entry["scan_index"]
            node = loaded.get(index)
            if node is None:
                source = inputs[index]
                array = overlays.read_map(folder / entry["file"], source)
                node = overlays.add_map_volume(array, source, f"{className} map - {source.GetName()}", threshold)
                node.SetAttribute(results.ATTR_ROLE, "attentionMap")
                node.SetAttribute("HLIP.Task", task)
                node.SetAttribute("HLIP.Class", className)
                node.SetAttribute("HLIP.ScanIndex", str(index))
                resultNode.AddNodeReferenceID(results.MAP_REF, node.GetID())
                results.put_in_result_folder(resultNode, node)
            nodes.append(node)
        return nodes

    def showAttentionMap(self, resultNode, className: str, task: Optional[str] = None, opacity: float = 0.5,
                         threshold: float = 0.2) -> list:
        """Show the class's map of every scan as the foreground of the slice views (each view gets the map of the
        scan it shows as background); returns the map volume nodes."""
        nodes = self.attentionMapNodes(resultNode, className, task, threshold)
        inputs = self._scan_index_to_node(resultNode)
        by_input = {}
        for node in nodes:
            overlays.set_threshold(node, threshold)
            by_input[inputs[int(node.GetAttribute("HLIP.ScanIndex"))].GetID()] = node
        first = inputs[min(inputs)] if inputs else None
        overlays.show_in_slice_views(by_input, opacity, first_input=first)
        return nodes

    @staticmethod
    def setOverlayOpacity(opacity: float) -> None:
        overlays.set_opacity(opacity)

    def setOverlayThreshold(self, resultNode, threshold: float) -> None:
        for n in range(resultNode.GetNumberOfNodeReferences(results.MAP_REF)):
            node = resultNode.GetNthNodeReference(results.MAP_REF, n)
            if node is not None:
                overlays.set_threshold(node, threshold)
