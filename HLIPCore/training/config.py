"""Training configuration: a YAML/JSON file -> `TrainConfig`, validated with messages that name the key.

Relative paths in a config file (manifests, output folder, tokenizer folder, prompt file, model file) are taken
relative to the file, so a config and its data can move together.
"""
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..documents import read_document
from ..errors import ConfigError

PATH_KEYS = ("train_manifest", "eval_manifest", "output_dir", "cache_dir", "init_checkpoint")
MAYBE_PATH_KEYS = ("model", "tokenizer", "prompts")  # names unless they exist as files/folders next to the config


@dataclass
class TrainConfig:
    # model and text
    model: Union[str, dict] = "tiny_multiscan_h3"   # config name, JSON file, converted folder (its weights init), dict
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # deep-merged into the model config, e.g.
    #   {text_cfg: {hf_config: {initializer_range: 0.2}}} (a BERT trained from scratch needs a larger init)
    init_checkpoint: Optional[str] = None          # weights to start from (any file `hlip convert` accepts)
    tokenizer: Optional[str] = None                # folder / hub name; "build" = WordPiece from the training reports
    siglip: bool = False
    clip_label_positives: bool = False             # also same-label pairs of a batch are positives (UniCL); needs
    #   the manifest's 'label': with few classes a batch holds several studies of one class, and plain CLIP would
    #   push their reports apart as negatives
    # data
    train_manifest: Union[str, List[str]] = ""      # one manifest or a list of them (their studies are joined)
    eval_manifest: Optional[str] = None
    prompts: Optional[str] = None                  # prompt set for the zero-shot evaluation
    eval_labels: Dict[str, Dict[str, str]] = field(default_factory=dict)  # task -> {manifest label: class}
    preprocess: Dict[str, Any] = field(default_factory=dict)  # PreprocessConfig overrides of the model's own
    cache_dir: Optional[str] = None                # preprocessed-study cache; default <output_dir>/cache
    max_scans_train: int = 10                      # scans sampled per study in training (reference: 10)
    max_scans_eval: int = 40
    augment: bool = True
    intensity_scale: float = 0.1                   # per-scan x * (1 + U(-s, s)) + U(-t, t) in normalised units
    intensity_shift: float = 0.1
    report_text: str = "full"                      # full | impression_first | sections (see report_text.py)
    text_word_dropout: float = 0.0                 # each word of a training text deleted with this probability
    #   (report_text.drop_words): a from-scratch text tower then reads single words, as zero-shot prompts are
    scan_dropout: float = 0.0                      # each scan of a training study left out with this probability
    #   (at least one stays): the model cannot lean on one sequence, and uncurated studies lack sequences too
    workers: int = 0
    # optimisation
    epochs: Optional[int] = None                   # give epochs or steps (steps wins)
    steps: Optional[int] = None
    batch_size: int = 4                            # studies per process per micro-batch
    accum_steps: int = 1                           # micro-batches per optimiser step (open_clip feature caching)
    lr: float = 5e-4
    wd: float = 0.2
    betas: Tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: int = 0                                # linear warm-up steps, then cosine to 0
    grad_clip_norm: Optional[float] = None
    precision: str = "fp32"                        # fp32 | bf16 (autocast)
    grad_checkpointing: bool = False
    patch_dropout: float = 0.0
    token_loss_weight: float = 0.0                 # > 0: per-token lesion-class loss from the manifest's series_masks
    token_loss_threshold: float = 0.25             #   a token is "lesion" when this fraction of its voxels is
    token_loss_core_threshold: Optional[float] = None  # also "lesion" when this fraction is lesion core (mask 1):
    #   a 1 cm metastasis fills ~2 % of a 40 x 26 x 26 mm token and never reaches token_loss_threshold
    token_normal_class: str = "normal"             #   the label of lesion-free tokens (and of normal studies)
    study_loss_weight: float = 0.0                 # > 0: study-label cross-entropy on the image embedding
    attention_loss_weight: float = 0.0             # > 0: the explained block's class-token attention pulled onto
    #   the lesion tokens (series_masks): what the attention maps show is then where the lesion is
    stem_loss_weight: float = 0.0                  # > 0 (conv-stem models): each cell of the stem layer the refined
    #   maps read (10 x 6.4 x 6.4 mm in the demo) classified as lesion core or not, oedema counting as not: the
    #   token says which 40 mm block holds the lesion, this teaches the finer layer where in it the core is
    stem_loss_core_threshold: float = 0.25         #   a cell is core when this fraction of it is lesion core
    stem_loss_per_scan: bool = False              #   average the core cells per scan first, so a small metastasis
    #   weighs as much as a large meningioma (pooled, the large lesions' cells outnumber it a hundredfold)
    stem_pretrain_steps: int = 0                   # > 0 (needs the stem loss): before the first joint step, train
    #   only the stem's first stage and the cell head on the stem loss, on random single scans (stem_pretrain.py):
    #   jointly, the other losses shape those channels first and the layer never learns small lesions' look
    stem_pretrain_lr: float = 2e-3                 #   its peak learning rate (AdamW, one-cycle schedule)
    stem_pretrain_batch: int = 12                  #   scans per step
    lock_image: bool = False                       # freeze the image tower and its BatchNorm statistics: a
    #   text-only phase on a trained model (a model folder or init_checkpoint), its image embeddings unchanged
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    lock_text_freeze_layer_norm: bool = False
    seed: int = 0
    seed_per_rank: bool = True                     # model randomness seeded seed+rank (reference); False: same on all
    device: str = "auto"
    # output
    output_dir: str = "hlip-train"
    save_every_steps: int = 100
    keep_step_checkpoints: bool = True             # also keep step_XXXXXX.pt next to latest.pt
    eval_every_steps: int = 0                      # 0: only at the end (when an eval manifest is given)
    model_id: Optional[str] = None                 # recorded in final/config.json

    def __post_init__(self):
        self.validate()

    # -- checks -------------------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        def bad(key, msg):
            raise ConfigError(f"training config: '{key}': {msg}")

        for key in ("batch_size", "accum_steps", "max_scans_train", "max_scans_eval", "save_every_steps",
                    "stem_pretrain_batch"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, f"must be a positive integer, got {getattr(self, key)!r}")
        for key in ("epochs", "steps"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                bad(key, f"must be a positive integer, got {value!r}")
        for key in ("warmup", "workers", "eval_every_steps", "lock_text_unlocked_layers", "seed",
                    "stem_pretrain_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                bad(key, f"must be a non-negative integer, got {getattr(self, key)!r}")
        if not (isinstance(self.token_loss_threshold, (int, float)) and 0 < self.token_loss_threshold <= 1):
            bad("token_loss_threshold", f"must be in (0, 1], got {self.token_loss_threshold!r}")
        core = self.token_loss_core_threshold
        if core is not None and not (isinstance(core, (int, float)) and 0 < core <= 1):
            bad("token_loss_core_threshold", f"must be in (0, 1] or null, got {core!r}")
        if not (isinstance(self.stem_loss_core_threshold, (int, float)) and 0 < self.stem_loss_core_threshold <= 1):
            bad("stem_loss_core_threshold", f"must be in (0, 1], got {self.stem_loss_core_threshold!r}")
        if self.stem_pretrain_steps and not self.stem_loss_weight:
            bad("stem_pretrain_steps", "pretrains the stem on the stem loss's cell targets; set stem_loss_weight > 0")
        if not isinstance(self.stem_pretrain_lr, (int, float)) or self.stem_pretrain_lr <= 0:
            bad("stem_pretrain_lr", f"must be a positive number, got {self.stem_pretrain_lr!r}")
        for key in ("lr", "wd", "eps", "intensity_scale", "intensity_shift", "token_loss_weight",
                    "study_loss_weight", "attention_loss_weight", "stem_loss_weight"):
            if not isinstance(getattr(self, key), (int, float)) or getattr(self, key) < 0:
                bad(key, f"must be a non-negative number, got {getattr(self, key)!r}")
        for f in dataclasses.fields(self):
            if f.type in (bool, "bool") and not isinstance(getattr(self, f.name), bool):
                bad(f.name, f"must be true or false, got {getattr(self, f.name)!r}")
        if not (isinstance(self.text_word_dropout, (int, float)) and 0 <= self.text_word_dropout < 1):
            bad("text_word_dropout", f"must be in [0, 1), got {self.text_word_dropout!r}")
        if not (isinstance(self.scan_dropout, (int, float)) and 0 <= self.scan_dropout < 1):
            bad("scan_dropout", f"must be in [0, 1), got {self.scan_dropout!r}")
        if not (isinstance(self.patch_dropout, (int, float)) and 0 <= self.patch_dropout < 1):
            bad("patch_dropout", f"must be in [0, 1), got {self.patch_dropout!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            bad("betas", f"must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(float(b) for b in betas)
        if self.precision not in ("fp32", "bf16"):
            bad("precision", f"must be 'fp32' or 'bf16', got {self.precision!r}")
        from .report_text import MODES
        if self.report_text not in MODES:
            bad("report_text", f"must be one of {', '.join(MODES)}, got {self.report_text!r}")
        if isinstance(self.train_manifest, (list, tuple)):
            if not all(isinstance(m, str) and m for m in self.train_manifest):
                bad("train_manifest", f"must be a manifest path or a list of them, got {self.train_manifest!r}")
            self.train_manifest = list(self.train_manifest)
        elif not isinstance(self.train_manifest, str):
            bad("train_manifest", f"must be a manifest path or a list of them, got {self.train_manifest!r}")
        if not isinstance(self.model, (str, dict)) or not self.model:
            bad("model", "must be a config name, a path or a config mapping")
        if not isinstance(self.eval_labels, dict) or not all(isinstance(v, dict) for v in self.eval_labels.values()):
            bad("eval_labels", "must map task -> {manifest label: class name}")
        if not isinstance(self.model_overrides, dict):
            bad("model_overrides", "must be a mapping merged into the model config")
        if not isinstance(self.preprocess, dict):
            bad("preprocess", "must be a mapping of PreprocessConfig fields")
        if self.lock_image:
            idle = [k for k in ("token_loss_weight", "study_loss_weight", "attention_loss_weight",
                                "stem_loss_weight", "patch_dropout") if getattr(self, k)]
            if idle:
                bad("lock_image", f"the image tower is frozen (and kept in eval mode), so {', '.join(idle)} would "
                                  f"have no effect; set {'it' if len(idle) == 1 else 'them'} to 0")
        from ..data import PreprocessConfig
        fields = {f.name for f in dataclasses.fields(PreprocessConfig)}
        for key in self.preprocess:
            if key not in fields:
                bad(f"preprocess.{key}", f"unknown preprocessing option{_suggestion(key, fields)}")
        return self

    def check_runnable(self) -> None:
        """What a training run needs beyond well-formed values."""
        if not self.train_manifest:
            raise ConfigError("training config: 'train_manifest': required")
        if self.steps is None and self.epochs is None:
            raise ConfigError("training config: 'steps' or 'epochs': one of them is required")
        if self.eval_manifest and not self.prompts:
            raise ConfigError("training config: 'prompts': required when 'eval_manifest' is given")

    # -- conversion ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict, base_dir: Optional[Path] = None, source: str = "training config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, found {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"{source}: unknown key '{key}'{_suggestion(key, known)}")
        data = dict(data)
        if base_dir is not None:
            data = resolve_paths(data, Path(base_dir))
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {str(exc).replace('training config: ', '')}") from None


def resolve_paths(data: dict, base_dir: Path) -> dict:
    def resolve(value: str) -> str:
        return str((base_dir / value).resolve()) if not Path(value).is_absolute() else value

    for key in PATH_KEYS:
        if isinstance(data.get(key), str) and data[key]:
            data[key] = resolve(data[key])
        elif key == "train_manifest" and isinstance(data.get(key), (list, tuple)):
            data[key] = [resolve(v) if isinstance(v, str) and v else v for v in data[key]]
    for key in MAYBE_PATH_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        # a name ("tiny_multiscan_h3", a hub tokenizer "org/name") stays a name; an existing file or folder, or a
        # value written as a relative path ("../run/final", which a first training phase may not have made yet),
        # is taken relative to the config
        if value.startswith(("./", "../")) or (base_dir / value).exists():
            data[key] = str((base_dir / value).resolve())
    return data


def _suggestion(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_overrides(pairs: List[str]) -> dict:
    """`key=value` strings (values parsed as YAML, so numbers, booleans and lists work) -> dict."""
    from ..documents import yaml_load
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml_load(value) if value.strip() else None
    return out


def load_config(path: Union[str, Path], overrides: Optional[dict] = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: training config not found")
    data = read_document(path, "training config") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(data).__name__}")
    cfg = TrainConfig.from_dict(data, path.parent, source=str(path))
    if overrides:  # command-line values are relative to the working directory, not to the file
        merged = {**cfg.to_dict(), **resolve_paths(dict(overrides), Path.cwd())}
        cfg = TrainConfig.from_dict(merged, None, source="--set")
    return cfg
