"""Analyze studies: read -> select scans -> preprocess -> zero-shot scores -> attention maps on the original
voxels -> report.json, map NIfTIs and an overview PNG. `Analyzer` keeps the model and the text embeddings
loaded across studies; `analyze_batch` runs many studies, continues past broken ones and skips finished ones.
"""
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import attention_maps
from .data import LoadOptions, ScanSelection, load_study, model_preprocess_config, preprocess_study, select_scans
from .errors import ConfigError, HLIPError
from .report import SCHEMA, read_report, safe_name, write_map_nifti, write_report, write_scores_csv

log = logging.getLogger("HLIPCore.analyze")
Progress = Callable[[str, float], None]  # (stage message, fraction of this study done)


@dataclass
class AnalyzeOptions:
    model: str = "hlip-demo"
    prompts: Optional[str] = None            # prompt set name or file; default: the model's catalog entry
    config: Optional[str] = None             # model config for a bare checkpoint file
    tokenizer: Optional[str] = None
    device: str = "auto"
    precision: str = "fp32"
    attention: str = "top"                   # top | all | none | a class name (or task/class)
    attention_method: str = "auto"           # auto | gradcam | refined | rollout (attention_maps.py)
    map_smooth_mm: Optional[float] = None    # Gaussian sigma of the maps on the model grid; None: the method's
                                             # default (attention_maps.default_smoothing), 0: none
    num_slices: Optional[int] = None         # depth of the model input; default: the model's catalog entry
    selection: ScanSelection = field(default_factory=ScanSelection)
    load: LoadOptions = field(default_factory=LoadOptions)
    overview: bool = True
    download: bool = False


class Analyzer:
    def __init__(self, options: AnalyzeOptions):
        from .model.precision import check_precision, prepare_for_inference, resolve_device
        from .model.resolve import load_model
        from .prompts import load_prompt_set
        from .zeroshot import build_classifier

        if options.attention_method not in attention_maps.METHODS:
            raise ConfigError(f"attention method must be one of {', '.join(attention_maps.METHODS)}")
        if options.map_smooth_mm is not None and not (0 <= options.map_smooth_mm <= 100):
            raise ConfigError(f"map smoothing must be between 0 and 100 mm, not {options.map_smooth_mm}")
        self.options = options
        self.device = resolve_device(options.device)
        self.precision = check_precision(options.precision)
        self.model, self.tokenizer, self.resolved = load_model(options.model, options.config, options.tokenizer,
                                                               device=self.device, download=options.download)
        default_prompts = (self.resolved.entry.prompts if self.resolved.entry else None) or \
            self.resolved.config.get("prompts") or "pub_brain_5"
        self.prompt_set = load_prompt_set(options.prompts or default_prompts)
        self.classifier = build_classifier(self.model, self.tokenizer, self.prompt_set, self.resolved.checkpoint)
        prepare_for_inference(self.model, self.precision)
        try:
            self.attention_method = attention_maps.resolve_method(self.model, options.attention_method)
        except ValueError as exc:
            raise ConfigError(f"{self.resolved.model_id}: {exc}") from None
        self.map_smooth_mm = options.map_smooth_mm if options.map_smooth_mm is not None \
            else attention_maps.default_smoothing(self.attention_method)
        self.preprocess = model_preprocess_config(self.resolved.preprocess, self.resolved.config,
                                                  options.num_slices,
                                                  f"model preprocessing {self.resolved.preprocess}")
        self.targets_all = [(t.name, c.name) for t in self.prompt_set.tasks for c in t.classes]

    # -- steps -------------------------------------------------------------------------------------------------
    def map_targets(self, scores: dict) -> List[Tuple[str, str]]:
        choice = self.options.attention
        if choice == "none":
            return []
        if choice == "all":
            return list(self.targets_all)
        if choice == "top":
            return [(task, max(classes, key=classes.get)) for task, classes in scores.items()]
        wanted = [(t, c) for t, c in self.targets_all if choice in (c, f"{t}/{c}")]
        if not wanted:
            raise ConfigError(f"--attention {choice!r}: no such class in prompt set '{self.prompt_set.name}'")
        return wanted

    def run_model(self, tensor: torch.Tensor, targets_for: Callable[[dict], list]):
        """(scores, {target: token-grid relevance}) for one study tensor [N, 1, D, H, W]."""
        from .model.precision import autocast
        x = tensor[None].to(self.device)
        with autocast(self.device, self.precision):
            if self.options.attention == "none":
                with torch.inference_mode():
                    feats = self.model.encode_image(x)
                return self.classifier.scores(feats)[0], {}
            if self.attention_method == "rollout":
                feats, relevance = attention_maps.rollout(self.model, x)
                scores = self.classifier.scores(feats)[0]
                # class-agnostic: one map, whatever the classes asked for
                return scores, ({("rollout", "class-agnostic"): relevance} if targets_for(scores) else {})
            feats, maps = attention_maps.gradcam(self.model, self.classifier, x,
                                                 lambda f: targets_for(self.classifier.scores(f)[0]),
                                                 refine=self.attention_method == "refined")
            return self.classifier.scores(feats)[0], maps

    def analyze(self, source, out_dir: Union[str, Path], name: Optional[str] = None,
                progress: Optional[Progress] = None) -> dict:
        progress = progress or (lambda stage, fraction: None)
        out_dir = Path(out_dir)
        timings, t0 = {}, time.perf_counter()

        def lap(stage):
            nonlocal t0
            timings[stage] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()

        progress("reading study", 0.0)
        study = load_study(source, self.options.load)
        selection = self.options.selection
        max_scans = int(self.resolved.config["vision_cfg"].get("max_num_scans", 40))
        if max_scans < selection.max_scans:
            selection = replace(selection, max_scans=max_scans)
            if max_scans == 1:  # a single-scan model (chest CT) gets the scan with the most slices
                study.scans.sort(key=lambda scan: -scan.shape[0])
        study = select_scans(study, selection)
        if not study.scans:
            raise HLIPError(f"{name or source}: no scan left after scan selection")
        lap("load")
        progress("preprocessing", 0.2)
        prepared = preprocess_study(study, self.preprocess)
        lap("preprocess")
        progress("running the model", 0.35)
        scores, relevance = self.run_model(prepared.tensor, self.map_targets)
        lap("model")
        progress("mapping attention to the original voxels", 0.75)
        maps = self.maps_on_original_voxels(relevance, prepared)
        lap("maps")
        progress("writing results", 0.9)
        report = self.build_report(name or Path(str(source)).name, study, scores, timings)
        report["maps"] = self.write_maps(maps, prepared, out_dir)
        if self.options.overview and maps:
            from .overview import write_overview
            write_overview(out_dir / "overview.png", prepared.scans, maps, scores)
            report["overview"] = "overview.png"
        lap("write")
        report["timings_s"] = {**timings, "total": round(sum(timings.values()), 3)}
        write_report(report, out_dir)
        progress("done", 1.0)
        return report

    def maps_on_original_voxels(self, relevance: dict, prepared) -> dict:
        """{target: [per scan (K, J, I) float32 in 0..1]}: upsampled to the model grid, smoothed there
        (`map_smooth_mm`), normalised over the study, sent back through each scan's recorded preprocessing.
        Targets sharing one map share the result."""
        grid = prepared.tensor.shape[-3:]
        out, done = {}, {}
        for target, rel in relevance.items():
            if id(rel) not in done:
                on_grid = attention_maps.upsample_to_grid(rel.detach().float().cpu(), grid).numpy()
                on_grid = np.stack([attention_maps.smooth(m, rec.grid_spacing, self.map_smooth_mm)
                                    for m, rec in zip(on_grid, prepared.records)])
                on_grid = attention_maps.normalise({0: torch.from_numpy(on_grid)})[0].numpy()
                done[id(rel)] = [np.clip(rec.to_original(on_grid[i]), 0.0, 1.0).astype(np.float32)
                                 for i, rec in enumerate(prepared.records)]
            out[target] = done[id(rel)]
        return out

    def write_maps(self, maps: dict, prepared, out_dir: Path) -> list:
        """One NIfTI per scan and distinct map; (task, class) pairs that share a map point at the same files."""
        entries, written = [], {}
        for (task, cls), volumes in maps.items():
            for index, (volume, scan) in enumerate(zip(volumes, prepared.scans)):
                key = (id(volumes), index)
                if key not in written:
                    rel = Path("maps") / f"{safe_name(task)}__{safe_name(cls)}__scan{index:02d}.nii.gz"
                    write_map_nifti(volume, scan.affine, out_dir / rel)
                    written[key] = rel.as_posix()
                entries.append({"task": task, "class": cls, "scan_index": index, "file": written[key],
                                "method": self.attention_method, "smooth_mm": self.map_smooth_mm})
        return entries

    def build_report(self, name: str, study, scores: dict, timings: dict) -> dict:
        ckpt = self.resolved.checkpoint
        return {
            "schema": SCHEMA, "study": name, "status": "ok",
            "model": {"id": self.resolved.model_id, "config": self.resolved.config.get("description", ""),
                      "checkpoint": Path(ckpt).name if ckpt else None},
            "prompt_set": {"name": self.prompt_set.name, "fingerprint": self.prompt_set.fingerprint()},
            "device": str(self.device), "precision": self.precision, "num_slices": self.preprocess.depth,
            "scores": scores, "top": {task: max(c, key=c.get) for task, c in scores.items()},
            "scans": [{"index": i, "modality": s.modality, "description": s.description, "shape": list(s.shape),
                       "spacing_mm": [round(float(v), 4) for v in s.spacing], "orientation": s.orientation}
                      for i, s in enumerate(study.scans)],
            "skipped": [{"source": str(k.source), "reason": k.reason} for k in study.skipped],
            "maps": [], "timings_s": dict(timings),
            "warnings": [w for s in study.scans for w in s.warnings],
        }


def study_name(source) -> str:
    return Path(str(source)).name.replace(".nii.gz", "").replace(".nii", "").replace(".nrrd", "") or "study"


def analyze_batch(sources: Sequence, out_root: Union[str, Path], options: AnalyzeOptions, force: bool = False,
                  show_progress: bool = True, flat: bool = False) -> List[dict]:
    """Analyse every study into out_root/<study>/ (`flat`: a single study straight into out_root); write
    out_root/scores.csv. A failing study is recorded with its error and the batch goes on; a study whose report
    matches this model and prompt set is not redone unless `force`."""
    from tqdm.contrib.logging import logging_redirect_tqdm
    out_root = Path(out_root)
    sources = list(sources)
    analyzer = Analyzer(options)
    with logging_redirect_tqdm():  # log lines print above the bar instead of breaking it
        rows = _analyze_each(analyzer, sources, out_root, force, show_progress, flat)
    write_scores_csv(rows, out_root / "scores.csv")
    return rows


def _analyze_each(analyzer: "Analyzer", sources: list, out_root: Path, force: bool, show_progress: bool,
                  flat: bool) -> List[dict]:
    from tqdm import tqdm
    # a batch shows a bar and reports each failure as it happens; for one study the caller's printed row is the
    # one line
    batch = len(sources) > 1
    report_failure = log.error if batch else log.debug
    rows, names = [], set()
    bar = tqdm(sources, desc="studies", unit="study", disable=not (show_progress and batch))
    for source in bar:
        name = study_name(source)
        while name in names:  # two studies with the same folder name get distinct output folders
            name += "_"
        names.add(name)
        out_dir = out_root if flat else out_root / safe_name(name)
        done = read_report(out_dir)
        if not force and done and done.get("status") == "ok" and \
                done.get("prompt_set", {}).get("fingerprint") == analyzer.prompt_set.fingerprint() and \
                done.get("model", {}).get("id") == analyzer.resolved.model_id:
            rows.append(done)
            continue
        bar.set_postfix_str(name[:30])
        try:
            rows.append(analyzer.analyze(source, out_dir, name=name))
        except HLIPError as exc:
            report_failure("%s: %s", name, exc)
            rows.append({"study": name, "status": "error", "error": str(exc)})
        except Exception as exc:  # keep the batch going; the traceback goes to the debug log
            log.debug("unexpected failure on %s", name, exc_info=True)
            report_failure("%s: unexpected %s: %s", name, type(exc).__name__, exc)
            rows.append({"study": name, "status": "error", "error": f"{type(exc).__name__}: {exc}"})
    return rows
