"""Named model configurations (JSON, open_clip style) and the factory that builds models from them.

A model is named by a config in `configs/` (e.g. `multiscan_h2_token1176`), by a JSON file, or by a converted
model folder (`config.json` + `model.safetensors` [+ tokenizer files]) as written by `hlip convert`.
"""
import copy
import json
import logging
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from ..errors import ConfigError
from .clip import HLIPModel

log = logging.getLogger("HLIPCore.model")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def list_configs() -> list:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_model_config(name_or_path: Union[str, Path]) -> dict:
    """A config by registry name, JSON file path, or model folder; returns a deep copy the caller may edit."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    elif not path.suffix == ".json":
        if len(path.parts) > 1:  # written as a path, not a registry name
            raise ConfigError(f"{name_or_path}: model folder not found")
        path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError(f"unknown model config '{name_or_path}'; known: {', '.join(list_configs())}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable model config: {exc}") from None
    if "model_cfg" in cfg:  # a converted model folder wraps the architecture with metadata
        cfg = cfg["model_cfg"]
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ConfigError(f"{path}: model config lacks '{key}'")
    return copy.deepcopy(cfg)


def create_model(model: Union[str, Path, dict], checkpoint: Optional[Union[str, Path]] = None,
                 device: Union[str, torch.device] = "cpu", strict: bool = True) -> HLIPModel:
    """Build a model from a config (name / path / dict) and optionally load weights.

    For a converted model folder the folder's own `model.safetensors` is loaded unless `checkpoint` is given.
    The model is returned in eval mode.
    """
    from .checkpoint import find_weights, load_checkpoint

    cfg = model if isinstance(model, dict) else get_model_config(model)
    try:
        net = HLIPModel(**copy.deepcopy(cfg))
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"invalid model config: {exc}") from None
    if checkpoint is None and not isinstance(model, dict) and Path(model).is_dir():
        checkpoint = find_weights(Path(model))
    if checkpoint is not None:
        load_checkpoint(net, checkpoint, strict=strict)
    return net.to(device).eval()


def create_tokenizer(model: Union[str, Path, dict], tokenizer: Optional[Union[str, Path]] = None):
    """The tokenizer of a model: explicit argument, else the converted folder's own files, else the config's."""
    from .tokenizer import HFTokenizer

    cfg = model if isinstance(model, dict) else get_model_config(model)
    text_cfg = cfg["text_cfg"]
    if tokenizer is None and not isinstance(model, dict) and Path(model).is_dir():
        folder = Path(model)
        if (folder / "tokenizer_config.json").is_file() or (folder / "vocab.txt").is_file():
            tokenizer = folder
    tokenizer = tokenizer or text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    if tokenizer is None:
        raise ConfigError("no tokenizer given and the model config names none")
    return HFTokenizer(tokenizer, context_length=text_cfg.get("context_length", 256))


def create_model_and_tokenizer(model, checkpoint=None, tokenizer=None, device="cpu") -> Tuple[HLIPModel, object]:
    return create_model(model, checkpoint, device=device), create_tokenizer(model, tokenizer)
