"""Zero-shot evaluation on a labelled manifest: per task of a prompt set, macro AUC, balanced accuracy and F1.

Which class a study belongs to, per task (first rule that applies):
1. the manifest line's `labels[task]` (a class name; a list of class names for multilabel tasks);
2. the config's `eval_labels[task][label]` for the line's `label` (a missing entry leaves the study out of the task);
3. the task's class whose name equals the line's `label`, ignoring case ("glioma" -> "Glioma"). For a multiclass
   task a label without such a class leaves the study out (a glioma is not in a stroke-vs-normal task); for a
   multilabel task it makes every class negative.
"""
import csv
import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..model.checkpoint import atomic_write
from ..model.precision import autocast
from .dataset import ManifestEntry, StudyCache
from .metrics import multiclass_metrics, multilabel_metrics

log = logging.getLogger("HLIPCore.training")
METRICS = ("auc", "balanced_accuracy", "f1")


def _match(task, name: str) -> Optional[int]:
    names = [c.name.lower() for c in task.classes]
    return names.index(name.lower()) if name.lower() in names else None


def study_target(entry: ManifestEntry, task, eval_labels: Optional[dict] = None):
    """Class index (multiclass), set of class indices (multilabel), or None when the study is not in the task."""
    eval_labels = eval_labels or {}
    if task.name in entry.labels:
        value = entry.labels[task.name]
    elif entry.label is None:
        return None
    elif task.name in eval_labels:
        value = eval_labels[task.name].get(entry.label)
        if value is None:
            return None
    else:
        value = entry.label if _match(task, entry.label) is not None else None
        if value is None:
            return None if task.kind == "multiclass" else set()
    if task.kind == "multiclass":
        index = _match(task, str(value))
        if index is None:
            log.warning("line %d: class %r is not in task '%s'; study left out", entry.line, value, task.name)
        return index
    values = [value] if isinstance(value, str) else list(value)
    return {i for i in (_match(task, str(v)) for v in values) if i is not None}


@torch.no_grad()
def encode_studies(model, entries: List[ManifestEntry], cache: StudyCache, device="cpu", precision: str = "fp32",
                   progress: bool = False):
    """[S, D] normalised image features (one study per forward pass) and the indices of the studies that failed."""
    from tqdm import tqdm
    from ..errors import HLIPError
    feats, failed = [], []
    was_training = model.training
    model.eval()
    for i, entry in enumerate(tqdm(entries, desc="eval studies", disable=not progress, leave=False)):
        try:
            x = cache.load(entry)
        except HLIPError as exc:
            log.warning("eval: skipping %s: %s", entry.name, exc)
            failed.append(i)
            continue
        with autocast(device, precision):
            f = model.encode_image(x[None].to(device), normalize=True)
        feats.append(f.float().cpu())
    model.train(was_training)
    dim = model.visual.head.proj.out_features
    return (torch.cat(feats) if feats else torch.zeros(0, dim)), failed


def score_tasks(probabilities: Dict[str, np.ndarray], entries: List[ManifestEntry], prompt_set,
                eval_labels: Optional[dict] = None) -> Dict[str, dict]:
    results = {}
    for task in prompt_set.tasks:
        targets = [(i, study_target(e, task, eval_labels)) for i, e in enumerate(entries)]
        targets = [(i, t) for i, t in targets if t is not None]
        if task.kind == "multiclass" and len({t for _, t in targets}) < 2:
            continue  # one class only (e.g. no metastasis study): AUC and balanced accuracy mean nothing
        if not targets:
            continue
        rows = np.array([i for i, _ in targets])
        probs = probabilities[task.name][rows]
        if task.kind == "multiclass":
            results[task.name] = multiclass_metrics([t for _, t in targets], probs)
        else:
            matrix = np.zeros((len(targets), len(task.classes)), dtype=bool)
            for r, (_, t) in enumerate(targets):
                matrix[r, sorted(t)] = True
            results[task.name] = multilabel_metrics(matrix, probs)
    return results


def evaluate(model, tokenizer, entries: List[ManifestEntry], prompt_set, cache: StudyCache,
             eval_labels: Optional[dict] = None, device="cpu", precision: str = "fp32", progress: bool = False,
             out_dir: Optional[Path] = None, tag: str = "eval") -> dict:
    """{'tasks': {task: {auc, balanced_accuracy, f1, n}}, 'mean': {...}, 'studies', 'failed'}; with `out_dir`,
    also `<tag>.json` and `<tag>_predictions.csv` there."""
    from ..zeroshot import build_classifier
    feats, failed = encode_studies(model, entries, cache, device, precision, progress)
    kept = [e for i, e in enumerate(entries) if i not in set(failed)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        classifier = build_classifier(model, tokenizer, prompt_set, use_cache=False)
    model.train(was_training)
    probs = {k: v.cpu().numpy() for k, v in classifier.probabilities(feats).items()}
    tasks = score_tasks(probs, kept, prompt_set, eval_labels)
    mean = {m: _mean([r[m] for r in tasks.values()]) for m in METRICS}
    result = {"tasks": tasks, "mean": mean, "studies": len(kept), "failed": [entries[i].name for i in failed]}
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write(out_dir / f"{tag}.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
        write_predictions(out_dir / f"{tag}_predictions.csv", kept, probs, prompt_set)
    return result


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def write_predictions(path: Path, entries: List[ManifestEntry], probs: Dict[str, np.ndarray], prompt_set) -> None:
    columns = [(t.name, c.name, j) for t in prompt_set.tasks for j, c in enumerate(t.classes)]

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["study", "label"] + [f"{t}:{c}" for t, c, _ in columns])
            for i, e in enumerate(entries):
                writer.writerow([e.name, e.label or ""] + [f"{probs[t][i, j]:.6f}" for t, _, j in columns])
    atomic_write(path, write)


def format_table(result: dict) -> str:
    lines = [f"{'task':<28} {'n':>5} {'AUC':>7} {'bal.acc':>8} {'F1':>7}"]
    rows = list(result["tasks"].items()) + [("mean", {**result["mean"], "n": result["studies"]})]
    for name, r in rows:
        lines.append(f"{name:<28} {r['n']:>5} " + " ".join(f"{r[m]:>{w}.3f}" for m, w in zip(METRICS, (7, 8, 7))))
    return "\n".join(lines)
