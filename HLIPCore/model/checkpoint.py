"""Reading, checking, writing and converting HLIP checkpoints.

Accepted: the v1.0 release `.pt` (`{"epoch", "name", "state_dict": {"module.<key>": ...}, "optimizer", ...}`),
bare state dicts (`.pt/.pth/.bin`, with or without the DDP prefix), `.safetensors`, and folders holding
`model.safetensors` or `pytorch_model.bin`. Pickles are always read with `weights_only=True`.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
IGNORED_SUFFIXES = ("position_ids",)  # buffers some transformers versions saved; never needed


def find_weights(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file (looked for {', '.join(WEIGHT_FILES)})")


def read_checkpoint(path: Union[str, Path]) -> dict:
    """The raw object stored in a checkpoint file (a dict), read safely."""
    path = Path(path)
    if path.is_dir():
        path = find_weights(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    import zipfile
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):  # torch.save writes a zip (or a pickle)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle; "
                              "random or truncated bytes?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains objects other than weights and is refused for safety (weights_only=True)"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {reason}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    return obj


def extract_state_dict(obj: dict) -> Dict[str, torch.Tensor]:
    """Unwrap `state_dict`/`model`, strip the DDP `module.` prefix when present, drop ignorable buffers."""
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}


def load_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    return extract_state_dict(read_checkpoint(path))


def describe_mismatch(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> Optional[str]:
    """None when `state` fits `model` exactly (ignoring ignorable keys), else a short description."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith(IGNORED_SUFFIXES)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} key(s) (e.g. {', '.join(keys[:3])})")
    if wrong:
        shown = "; ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k])}" for k in wrong[:3])
        parts.append(f"{len(wrong)} shape mismatch(es) ({shown})")
    return "; ".join(parts) or None


def matching_configs(state: Dict[str, torch.Tensor]) -> list:
    """Registry configs whose parameter names and shapes fit `state` (attention layout is not in the weights,
    so e.g. h2 and h3 variants of the same size both fit)."""
    from .factory import get_model_config, list_configs
    from .clip import HLIPModel
    fits = []
    for name in list_configs():
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = HLIPModel(**get_model_config(name))
        if describe_mismatch(model, state) is None:
            fits.append(name)
    return fits


def load_checkpoint(model: torch.nn.Module, path: Union[str, Path], strict: bool = True) -> dict:
    """Load weights into `model`; a mismatch raises one CheckpointError naming the configs that would fit."""
    raw = read_checkpoint(path)
    state = extract_state_dict(raw)
    if not state:
        raise CheckpointError(f"{path}: holds no weight tensors")
    problem = describe_mismatch(model, state)
    if problem and strict:
        fits = matching_configs(state)
        hint = f"; it fits config(s): {', '.join(fits)}" if fits else "; it fits none of the known configs"
        raise CheckpointError(f"{path}: does not fit this model: {problem}{hint}")
    model.load_state_dict(state, strict=False)
    return {k: v for k, v in raw.items() if not isinstance(v, (dict, torch.Tensor))}  # metadata: epoch, name


def atomic_write(path: Union[str, Path], write_fn) -> Path:
    """Write via `write_fn(tmp_path)` then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_torch_atomic(obj, path: Union[str, Path]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_safetensors(model: torch.nn.Module, path: Union[str, Path], metadata: Optional[dict] = None,
                     half: bool = False) -> Path:
    """`half` stores floating-point weights as float16 (half the size; loading casts them back to the model's
    dtype)."""
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not k.endswith(IGNORED_SUFFIXES)}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def convert_checkpoint(checkpoint: Union[str, Path], config: Union[str, dict], out_dir: Union[str, Path],
                       tokenizer: Optional[Union[str, Path]] = None, model_id: Optional[str] = None,
                       half: bool = False) -> Path:
    """Write `model.safetensors` + `config.json` (+ tokenizer files) that `create_model(out_dir)` loads."""
    from .factory import create_model, create_tokenizer, get_model_config
    cfg = config if isinstance(config, dict) else get_model_config(config)
    model = create_model(cfg, checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, out_dir / "model.safetensors", metadata={"format": "pt"}, half=half)
    meta = {"model_id": model_id or (config if isinstance(config, str) else None),
            "source": Path(checkpoint).name, "model_cfg": cfg}
    atomic_write(out_dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    if tokenizer is not None:
        create_tokenizer(cfg, tokenizer).save_pretrained(out_dir)
    return out_dir
