"""Turn what a user types after --model (a catalog id, a checkpoint file, a converted folder) into a model."""
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..catalog import ModelEntry, get_entry
from ..errors import CheckpointError, ConfigError
from .checkpoint import find_weights, load_state_dict, matching_configs, read_checkpoint
from .factory import create_model, create_tokenizer, get_model_config

log = logging.getLogger("HLIPCore.model")


@dataclass
class ResolvedModel:
    model_id: str
    config: dict
    checkpoint: Optional[Path]
    tokenizer: Optional[Union[str, Path]]
    entry: Optional[ModelEntry] = None
    preprocess: dict = field(default_factory=dict)


def _config_for_file(path: Path, config: Optional[str]) -> str:
    """The config of a bare checkpoint: the one given, else the only registry config its weights fit."""
    if config:
        return config
    fits = matching_configs(load_state_dict(path))
    if len(fits) == 1:
        return fits[0]
    name = str(read_checkpoint(path).get("name", "")).lower()  # v1.0 files record their training run name
    layout_tag = {f: re.search(r"_(h\d)(?:_|$)", f) for f in fits}  # e.g. 'h3' of 'multiscan_h3_token1176'
    named = [f for f, tag in layout_tag.items() if tag and re.search(rf"(?:^|[^a-z0-9]){tag.group(1)}(?:[^0-9]|$)", name)]
    if len(named) == 1:
        return named[0]
    if fits:
        raise ConfigError(f"{path}: the weights fit several configs ({', '.join(fits)}); choose one with --config")
    raise CheckpointError(f"{path}: the weights fit none of the known configs; convert it with 'hlip convert' "
                          "and a JSON config")


def resolve_model(ref: Union[str, Path], config: Optional[str] = None, tokenizer=None, download: bool = False,
                  progress: bool = True) -> ResolvedModel:
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        cfg = get_model_config(config or path)
        tok = tokenizer or (path if (path / "tokenizer_config.json").is_file() else None)
        return ResolvedModel(path.name, cfg, find_weights(path), tok, preprocess=cfg.get("preprocess", {}))
    if path.is_file():
        cfg = get_model_config(_config_for_file(path, config))
        return ResolvedModel(path.stem, cfg, path, tokenizer, preprocess=cfg.get("preprocess", {}))
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or "/" in str(ref):
        raise CheckpointError(f"{ref}: no such checkpoint file or folder")
    entry = get_entry(str(ref))
    local = entry.local_path()
    if local is None:
        if not download:
            raise CheckpointError(f"model '{entry.id}' is not on this machine; download it with "
                                  f"'hlip models --download {entry.id}' or place it at {entry.cached_path()}")
        from ..download import download_file
        local = download_file(entry.url, entry.cached_path(), sha256=entry.sha256, progress=progress)
    # a model folder's own config.json is what its weights were trained with (e.g. the demo model's preprocessing);
    # the entry's registry config names the architecture for bare weight files
    own = local.is_dir() and (local / "config.json").is_file()
    inner = resolve_model(local, config=config or (None if own else entry.config),
                          tokenizer=tokenizer or entry.tokenizer)
    preprocess = {**inner.config.get("preprocess", {}), **entry.preprocess}
    return ResolvedModel(entry.id, inner.config, inner.checkpoint, inner.tokenizer, entry, preprocess)


def load_model(ref, config=None, tokenizer=None, device="cpu", download=False):
    """(model in eval mode, tokenizer, ResolvedModel) for a --model argument."""
    resolved = resolve_model(ref, config=config, tokenizer=tokenizer, download=download)
    model = create_model(resolved.config, resolved.checkpoint, device=device)
    tok = create_tokenizer(resolved.config, resolved.tokenizer)
    return model, tok, resolved
