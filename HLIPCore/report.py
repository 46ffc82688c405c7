"""Writing analysis results: report.json (schema below), attention-map NIfTI files, scores.csv for batches.

report.json (schema "hlip-report/1"):
  study           name of the study folder/file as given (no DICOM patient tags are ever copied)
  status          "ok"
  model           {id, config, checkpoint (file name only)}
  prompt_set      {name, fingerprint}
  device, precision, num_slices
  scores          {task: {class: probability}}  (multiclass: softmax over the task; multilabel: P(positive))
  top             {task: class with the highest probability}
  scans           [{index, modality, description, shape (K,J,I), spacing_mm (i,j,k), orientation}]
  skipped         [{source, reason}]   series not used, and why
  maps            [{task, class, scan_index, file (relative), method}]
  timings_s       {load, preprocess, model, maps, write, total}
  warnings        [str]
"""
import csv
import json
import os
from pathlib import Path
from typing import Dict, List

import numpy as np

from .model.checkpoint import atomic_write

SCHEMA = "hlip-report/1"


def safe_name(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text).strip())
    return keep.strip("._") or "unnamed"


def write_map_nifti(volume_kji: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """A (K, J, I) float map saved with the scan's own IJK->RAS affine, so it overlays the scan exactly."""
    import nibabel as nib
    image = nib.Nifti1Image(np.ascontiguousarray(volume_kji.transpose(2, 1, 0), dtype=np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}.{path.name}")  # same suffix: nibabel chooses the format by name
    nib.save(image, str(tmp))
    os.replace(tmp, path)
    return path


def write_report(report: dict, out_dir: Path) -> Path:
    text = json.dumps(report, indent=2)
    return atomic_write(out_dir / "report.json", lambda tmp: Path(tmp).write_text(text))


def read_report(out_dir: Path):
    try:
        return json.loads((Path(out_dir) / "report.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def score_columns(reports: List[dict]) -> List[str]:
    cols = []
    for r in reports:
        for task, classes in (r.get("scores") or {}).items():
            for cls in classes:
                name = f"{task}/{cls}"
                if name not in cols:
                    cols.append(name)
    return cols


def write_scores_csv(rows: List[Dict], path: Path) -> Path:
    """One row per study: study, status, error, then one column per task/class probability."""
    reports = [r for r in rows if r.get("status") == "ok"]
    cols = score_columns(reports)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["study", "status", "error", *cols])
            for r in rows:
                scores = {f"{t}/{c}": p for t, cs in (r.get("scores") or {}).items() for c, p in cs.items()}
                w.writerow([r.get("study", ""), r.get("status", ""), r.get("error", ""),
                            *[f"{scores[c]:.6f}" if c in scores else "" for c in cols]])
    return atomic_write(path, write)
