"""The model catalog: released HLIP models (Resources/models.json) plus the user's own entries.

User entries come from `<cache>/models.json` and from the JSON files listed in `HLIP_MODELS` (separated by the
OS path separator), with the same fields; a local entry gives `path` instead of `url`. A later entry with the
same id replaces an earlier one, so a user can point a released id at a file they placed by hand.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .errors import ConfigError
from .paths import cache_dir, resources_dir


@dataclass
class ModelEntry:
    id: str
    config: str
    title: str = ""
    url: Optional[str] = None
    path: Optional[str] = None
    file_name: Optional[str] = None
    sha256: Optional[str] = None
    tokenizer: Optional[str] = None
    modality: str = ""
    body_part: str = ""
    text_tower: str = ""
    prompts: Optional[str] = None
    preprocess: dict = field(default_factory=dict)
    license: str = ""
    source: str = ""
    catalog: str = ""  # the file the entry came from

    def cached_path(self) -> Path:
        """Where a downloaded checkpoint of this entry is kept."""
        return cache_dir() / "models" / self.id / (self.file_name or Path(self.url or "model.pt").name)

    def local_path(self) -> Optional[Path]:
        """The checkpoint on this machine, if any: an explicit `path`, else a completed download."""
        if self.path:
            path = Path(os.path.expanduser(self.path))
            if not path.is_absolute() and self.catalog:
                path = Path(self.catalog).parent / path
            return path if path.exists() else None
        cached = self.cached_path()
        return cached if cached.is_file() else None


def catalog_files() -> List[Path]:
    files = [resources_dir() / "models.json", cache_dir() / "models.json"]
    files += [Path(p) for p in os.environ.get("HLIP_MODELS", "").split(os.pathsep) if p]
    return files


def _read(path: Path) -> List[ModelEntry]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: model catalog is not valid JSON ({exc})") from None
    known = set(ModelEntry.__dataclass_fields__)
    entries = []
    for i, item in enumerate(doc.get("models", [])):
        if not isinstance(item, dict) or "id" not in item or "config" not in item:
            raise ConfigError(f"{path}: model #{i + 1} needs at least 'id' and 'config'")
        if not item.get("url") and not item.get("path"):
            raise ConfigError(f"{path}: model '{item['id']}' needs 'url' or 'path'")
        entries.append(ModelEntry(**{k: v for k, v in item.items() if k in known}, catalog=str(path)))
    return entries


def load_catalog() -> List[ModelEntry]:
    by_id = {}
    for path in catalog_files():
        if path.is_file():
            for entry in _read(path):
                by_id[entry.id] = entry
    return list(by_id.values())


def get_entry(model_id: str) -> ModelEntry:
    for entry in load_catalog():
        if entry.id == model_id:
            return entry
    known = ", ".join(e.id for e in load_catalog())
    raise ConfigError(f"unknown model '{model_id}': not a file or folder, and not in the catalog ({known})")
