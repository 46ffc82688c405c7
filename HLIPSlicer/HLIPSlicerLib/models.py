"""The model catalog as the panel shows it, the module's model cache, and "use a local file".

The catalog and the downloads are HLIPCore's (`HLIPCore.catalog`, `HLIPCore.download`), so the Slicer module,
the worker and `hlip analyze` agree on ids, file names and checksums. Inside Slicer the cache is
`<Slicer cache>/HLIP` (set through HLIP_CACHE before anything reads it) unless the user set HLIP_CACHE.
Downloads run in the worker process (`Scripts/hlip_worker.py` with a "download" job), never in the GUI thread.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from . import ensure_core_on_path

DEFAULT_MODEL = "hlip-demo"


def use_module_cache() -> Path:
    """HLIP_CACHE = <Slicer cache folder>/HLIP inside Slicer (kept if the user set it); returns the cache folder."""
    if not os.environ.get("HLIP_CACHE"):
        try:
            import slicer
            app = getattr(slicer, "app", None)
            if app is not None:
                os.environ["HLIP_CACHE"] = str(Path(app.cachePath) / "HLIP")
        except ImportError:
            pass
    ensure_core_on_path()
    from HLIPCore.paths import cache_dir
    return cache_dir()


@dataclass
class ModelChoice:
    id: str               # catalog id, or the path of a local file/folder
    title: str
    modality: str = ""
    available: bool = False   # on this machine (cached download, bundled, or a local path)
    downloadable: bool = False
    location: str = ""        # where the file is, or where a download will go
    url: str = ""
    sha256: Optional[str] = None


def catalog() -> List[ModelChoice]:
    ensure_core_on_path()
    from HLIPCore.catalog import load_catalog
    choices = []
    for entry in load_catalog():
        local = entry.local_path()
        choices.append(ModelChoice(
            id=entry.id, title=entry.title or entry.id, modality=entry.modality, available=local is not None,
            downloadable=bool(entry.url) and local is None,
            location=str(local or (entry.cached_path() if entry.url else entry.path or "")),
            url=entry.url or "", sha256=entry.sha256))
    choices.sort(key=lambda c: (c.id != DEFAULT_MODEL, not c.available, c.id))
    return choices


def local_choice(path: str) -> ModelChoice:
    """'Use a local file': a checkpoint file or a folder written by `hlip convert`."""
    p = Path(path).expanduser()
    return ModelChoice(id=str(p), title=f"{p.name} (local)", available=p.exists(), location=str(p))


def find(model_id: str) -> Optional[ModelChoice]:
    for choice in catalog():
        if choice.id == model_id:
            return choice
    if Path(model_id).expanduser().exists():
        return local_choice(model_id)
    return None


def unavailable_message(choice: ModelChoice) -> str:
    if choice.downloadable:
        return (f"Model '{choice.id}' is not on this machine yet. Click 'Download' (it will be saved in "
                f"{choice.location} and its checksum checked), or place the file there by hand.")
    return f"Model '{choice.id}' was not found at {choice.location}. Choose 'Use a local file...'."
