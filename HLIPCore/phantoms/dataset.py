"""`generate_dataset(n, seed, out_dir)`: n phantom studies, a labels CSV and a JSON-lines manifest.

Labels are balanced (round-robin over the classes, shuffled by the seed); each study's own seed is derived from
(seed, index), so study i is the same whatever n is. Paths in the manifest and CSV are relative to `out_dir`.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from .lesions import LABELS
from .sequences import SHOWS
from .study import PhantomConfig, PhantomStudy, generate_study
from .writer import write_study

CSV_COLUMNS = ("study_id", "label", "seed", "vendor", "n_series", "sequences", "side", "lobe", "max_mm", "study",
               "report")


def study_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def balanced_labels(n: int, seed: int, labels: Sequence[str] = LABELS) -> List[str]:
    """n labels, as equal in number as n allows, in an order shuffled by `seed`."""
    for label in labels:
        if label not in LABELS:
            raise ValueError(f"unknown phantom label {label!r}; choose from {', '.join(LABELS)}")
    order = [labels[i % len(labels)] for i in range(n)]
    return [order[i] for i in np.random.default_rng(int(seed)).permutation(n)]


def manifest_entry(study: PhantomStudy, paths: dict, root: Path) -> dict:
    rel = lambda p: None if p is None else os.path.relpath(p, root).replace(os.sep, "/")
    series = []
    shows = [_shows(study, s) for s in study.images]
    for n, s in enumerate(study.images):
        series.append({"sequence": s.sequence, "description": s.description, "plane": s.geometry.plane,
                       "series_number": s.series_number, "shape": list(s.array.shape),
                       "spacing": [round(v, 4) for v in s.geometry.spacing], "shows_finding": shows[n],
                       "nifti": rel(paths["nifti"][n]) if paths["nifti"] else None, "mask": rel(paths["masks"][n])})
    others = [{"kind": s.kind, "description": s.description, "series_number": s.series_number}
              for s in study.series if s.kind != "image"]
    return {"study_id": study.study_id, "study": rel(paths["dicom"]) or rel(str(Path(paths["report"]).parent / "nifti")),
            "nifti": [rel(p) for p in paths["nifti"]], "report": study.report, "label": study.label,
            "mask": rel(paths["world_mask"]), "series_masks": [rel(p) for p in paths["masks"]],
            "series_shows": shows, "seed": study.seed,
            "vendor": study.vendor, "series": series, "non_image_series": others, "findings": study.findings}


def _shows(study: PhantomStudy, series) -> bool:
    """Does this series show the study's finding (its sequence carries the label's signature)? False for normal
    studies: there is nothing to show."""
    return study.label != "normal" and series.sequence in SHOWS[study.label]


def generate_dataset(n: int, seed: int, out_dir, labels: Optional[Sequence[str]] = None,
                     formats: Iterable[str] = ("dicom", "nifti"), config: PhantomConfig = PhantomConfig(),
                     progress: Optional[Callable] = None) -> Path:
    """Writes n studies under out_dir/studies/, then out_dir/labels.csv and out_dir/manifest.jsonl (one JSON line
    per study). `progress(iterable)` may wrap the loop (e.g. tqdm). Returns the manifest path."""
    if n < 1:
        raise ValueError("n must be at least 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    formats = tuple(formats)
    plan = balanced_labels(n, seed, tuple(labels or config.labels))
    entries = []
    steps = range(n) if progress is None else progress(range(n))
    for i in steps:
        study_id = f"phantom_{i:05d}"
        study = generate_study(study_seed(seed, i), plan[i], config, study_id=study_id,
                               patient_name=f"PHANTOM^{i + 1:04d}")
        paths = write_study(study, root / "studies" / study_id, formats)
        entries.append(manifest_entry(study, paths, root))
    manifest = root / "manifest.jsonl"
    with open(manifest, "w") as f:
        for e in entries:
            f.write(json.dumps(e, sort_keys=True) + "\n")
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for e in entries:
            fnd = e["findings"]
            writer.writerow([e["study_id"], e["label"], e["seed"], e["vendor"], len(e["series"]),
                             ";".join(s["sequence"] for s in e["series"]), fnd.get("side", ""), fnd.get("lobe", ""),
                             fnd.get("max_mm", ""), e["study"], f"studies/{e['study_id']}/report.txt"])
    return manifest
