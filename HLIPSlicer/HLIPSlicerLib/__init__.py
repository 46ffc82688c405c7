"""Pieces of the HLIP Slicer module, kept free of Qt where possible so that they run on a bare MRML scene.

- `qt_seam`: the only place that imports qt/ctk or their stand-ins (PySide6 through Qt.py outside Slicer).
- `dependencies`: torch (SlicerPyTorch) and the pip requirements, installed on first use after confirmation.
- `models`: the model catalog, the module's cache, downloads with checksum, "use a local file".
- `process`: launch, poll and cancel the worker child process (`Scripts/hlip_worker.py`).
- `study`: which volume nodes make the study, writing them for the worker, scans used and skipped.
- `results`: the scores table node and the subject hierarchy folder under the study.
- `overlays`: attention-map volume nodes with the input's IJKToRAS, colour map, threshold, slice view layers.
- `prompt_editor`: a Qt-free tree model of a prompt set with validation messages mapped onto tree items.
- `logic`: HLIPSlicerLogic's implementation (the scripting API): run the worker, load its results as MRML nodes.
- `study_panel`, `prompt_panel`, `results_panel`: the parts of the panel (study input and scan list, prompt tree,
  results table and overlay controls), owned by HLIPSlicerWidget.
"""
import os
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent.parent          # the folder holding HLIPSlicer.py
WORKER_SCRIPT = MODULE_DIR / "Scripts" / "hlip_worker.py"
BATCH_SCRIPT = MODULE_DIR / "Scripts" / "hlip_batch.py"


def core_parent_dir() -> Path:
    """The folder that contains the `HLIPCore` package.

    Installed extension: HLIPCore is installed next to HLIPSlicer.py (qt-scripted-modules/). Source checkout and
    build tree without install: the repository root, one level up.
    """
    for candidate in (MODULE_DIR, MODULE_DIR.parent):
        if (candidate / "HLIPCore" / "__init__.py").is_file():
            return candidate
    return MODULE_DIR.parent


def ensure_core_on_path() -> Path:
    """Make `import HLIPCore` work (it does not import torch at package import). Returns the folder added."""
    folder = core_parent_dir()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return folder


def module_resource(*parts) -> Path:
    return MODULE_DIR.joinpath("Resources", *parts)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
