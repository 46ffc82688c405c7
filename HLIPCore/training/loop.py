"""The training loop: DDP under torchrun, bf16 autocast, accumulation with feature caching, exact resume.

Exact resume: the data of step s is a pure function of (seed, s) (see dataset.StepBatchSampler), and a checkpoint
holds the model, optimizer, schedule and every process's RNG states, so stopping after step s and resuming gives
the same bits as never stopping. Checkpoints are written atomically, so a SIGKILL loses only the steps after the
last one. Evaluation runs under a forked RNG and does not change the training trajectory.
"""
import contextlib
import copy
import csv
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist

from ..attention_maps import explained_block, has_conv_stem, refine_geometry, refine_layer
from ..data import model_preprocess_config
from ..errors import CheckpointError, ConfigError
from ..losses import attention_target_loss, cell_core_loss, create_loss, token_class_loss
from ..model.checkpoint import atomic_write, save_safetensors, save_torch_atomic
from ..model.precision import autocast
from .config import TrainConfig
from .dataset import StepBatchSampler, StudyCache, TrainDataset, collate, read_manifest
from .optim import CosineSchedule, create_optimizer

log = logging.getLogger("HLIPCore.training")
CHECKPOINT_FORMAT = "hlip-train-1"
LOG_COLUMNS = ["step", "epoch", "lr", "loss", "logit_scale", "step_time_s", "eval_auc", "eval_balanced_accuracy",
               "eval_f1", "token_loss", "study_loss", "attention_loss", "stem_loss"]
AUX_LOSSES = ("token_loss", "study_loss", "attention_loss", "stem_loss")
CLIP_KEYS = ("image_features", "text_features", "logit_scale", "logit_bias")


# -- processes and randomness --------------------------------------------------------------------------------------

def init_distributed() -> tuple:
    """(rank, world size, local rank, created): joins the torchrun group given by the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), created
    return 0, 1, 0, False


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's RNG states, in types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _link_or_copy(src: Path, dst: str) -> None:
    """latest.pt as a hard link of the step file: the same bytes without writing them twice."""
    os.unlink(dst)
    try:
        os.link(src, dst)
    except OSError:
        import shutil
        shutil.copyfile(src, dst)


def _resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


# -- model and tokenizer ------------------------------------------------------------------------------------------

def model_config(cfg: TrainConfig) -> tuple:
    """(architecture dict with the training's patch dropout / SigLIP init, weights to start from or None)."""
    from ..model.checkpoint import find_weights
    from ..model.factory import get_model_config
    weights = cfg.init_checkpoint
    if isinstance(cfg.model, dict):
        mcfg = copy.deepcopy(cfg.model.get("model_cfg", cfg.model))
    else:
        mcfg = get_model_config(cfg.model)
        if weights is None and Path(cfg.model).is_dir():
            weights = str(find_weights(Path(cfg.model)))
    mcfg = deep_merge(mcfg, cfg.model_overrides)
    if cfg.patch_dropout:
        mcfg["vision_cfg"]["patch_dropout"] = float(cfg.patch_dropout)
    if cfg.siglip:  # the reference's SigLIP init (open_clip: scale ln 10, bias -10)
        mcfg.setdefault("init_logit_scale", math.log(10))
        mcfg.setdefault("init_logit_bias", -10.0)
    return mcfg, weights


def deep_merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_tokenizer(cfg: TrainConfig, mcfg: dict, reports: List[str], out: Path, rank: int, world: int):
    from ..model.factory import create_tokenizer
    source = cfg.tokenizer
    if source == "build":
        source = out / "tokenizer"
        if rank == 0 and not (source / "tokenizer_config.json").is_file():
            from .vocab import build_wordpiece_tokenizer
            vocab = mcfg["text_cfg"].get("hf_config", {}).get("vocab_size", 8192)
            build_wordpiece_tokenizer(reports, source, vocab_size=vocab)
        barrier(world)
    elif source is None and not isinstance(cfg.model, dict):
        source = cfg.model if Path(cfg.model).is_dir() else None
    tokenizer = create_tokenizer(mcfg, source)
    vocab_limit = mcfg["text_cfg"].get("hf_config", {}).get("vocab_size")
    if vocab_limit and len(tokenizer.tokenizer) > vocab_limit:
        raise ConfigError(f"tokenizer {source}: {len(tokenizer.tokenizer)} tokens, more than the model's "
                          f"vocab_size {vocab_limit}")
    return tokenizer


class TrainingHeadsNet(torch.nn.Module):
    """The model plus training-only linear classifiers: `head` on the trunk's patch tokens (`token_logits`
    [B, L, classes], the token loss) and `study_head` on the normalised image embedding (`study_logits` [B, classes],
    a cosine classifier at temperature 0.1, the study loss). With `attend`, also the class token's attention over
    the patch tokens in the block the attention maps explain (`class_attention` [B, L], mean over heads; the
    attention loss). With `stem_cells`, `cell_head` reads the conv-stem layer the refined maps read (`cell_logits`
    [B, k, d, h, w], the stem loss). One module, so DDP synchronises all; only `model` is exported."""

    def __init__(self, model: torch.nn.Module, num_classes: int, attend: bool = False, stem_cells: bool = False):
        super().__init__()
        self.model = model
        self.cell_head = None
        if stem_cells:
            if not has_conv_stem(model):
                raise ConfigError("training config: 'stem_loss_weight': the model embeds patches linearly; the stem "
                                  "loss needs a convolutional stem")
            stem = model.visual.trunk.patch_embed
            self.cell_head = torch.nn.Conv3d(refine_geometry(stem)[0], 1, kernel_size=1)
        self.head = torch.nn.Linear(model.visual.trunk.num_features, num_classes)
        self.study_head = torch.nn.Linear(model.visual.head.proj.out_features, num_classes)
        self.attend = attend
        if attend:
            trunk = model.visual.trunk
            self.explained = explained_block(trunk)
            if trunk.attn_layout[self.explained] != "study":
                raise ConfigError("training config: 'attention_loss_weight': the model has no study-level block "
                                  "whose class-token attention the maps explain")

    def heads_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def forward(self, image, text):
        attn = self.model.visual.trunk.blocks[self.explained].attn if self.attend and image is not None else None
        if attn is not None:
            attn.record = "class_row"
        # the stem layer's output is caught only during this forward: the exported model (and the periodic
        # evaluation, which runs it) keeps no hook and no activations
        cells, hook = [], None
        if self.cell_head is not None and image is not None:
            stem_layer = refine_layer(self.model.visual.trunk.patch_embed)
            hook = stem_layer.register_forward_hook(lambda module, inputs, output: cells.append(output))
        try:
            out = self.model(image, text, return_tokens=True)
            if attn is not None:  # one window per study at the study level: [B, heads, 1, 1 + L] -> [B, L]
                out["class_attention"] = attn.attn_probs[:, :, 0, self.model.visual.trunk.num_prefix_tokens:].mean(1)
        finally:
            if attn is not None:
                attn.record, attn.attn_probs = None, None
            if hook is not None:
                hook.remove()
        out["token_logits"] = self.head(out.pop("image_tokens"))
        out["study_logits"] = self.study_head(out["image_features"]) * 10.0
        if cells:  # [B*k, C, d, h, w] -> [B, k, d, h, w]
            out["cell_logits"] = self.cell_head(cells[0])[:, 0].unflatten(0, image.shape[:2])
        return out


# -- the trainer ---------------------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: TrainConfig, resume: Union[None, bool, str, Path] = "auto", progress: bool = True):
        from ..model.factory import create_model
        cfg.check_runnable()
        self.cfg, self.progress = cfg, progress
        self.rank, self.world, local_rank, self._owns_group = init_distributed()
        self.device = _resolve_device(cfg, local_rank)
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        # data first: the tokenizer may be built from the reports
        manifests = cfg.train_manifest if isinstance(cfg.train_manifest, list) else [cfg.train_manifest]
        self.entries = [entry for manifest in manifests for entry in read_manifest(manifest)]
        mask_loss = next(k for k in ("token_loss_weight", "attention_loss_weight", "stem_loss_weight", "")
                         if not k or getattr(cfg, k))
        if mask_loss and not any(e.series_masks for e in self.entries):
            raise ConfigError(f"training config: '{mask_loss}': {cfg.train_manifest} has no 'series_masks' "
                              "to make token targets from")
        for key in ("study_loss_weight", "clip_label_positives"):
            if getattr(cfg, key) and not any(e.label for e in self.entries):
                raise ConfigError(f"training config: '{key}': {cfg.train_manifest} has no 'label's")
        self.mcfg, init_weights = model_config(cfg)
        if cfg.tokenizer == "build" and init_weights:  # a new vocabulary would scramble the trained word embeddings
            raise ConfigError(f"training config: 'tokenizer': 'build' makes a new vocabulary, but the text tower "
                              f"starts from the trained weights {init_weights}; give the tokenizer those weights "
                              "were trained with (a model folder holds it)")
        self.preprocess = model_preprocess_config({**self.mcfg.get("preprocess", {}), **cfg.preprocess}, self.mcfg,
                                                  source="training config: 'preprocess'")
        self.mcfg["preprocess"] = {k: list(v) if isinstance(v, tuple) else v
                                   for k, v in vars(self.preprocess).items()}
        self.cache = StudyCache(cfg.cache_dir or self.out / "cache", self.preprocess, max_scans=cfg.max_scans_eval)
        self.tokenizer = make_tokenizer(cfg, self.mcfg, [e.report for e in self.entries], self.out, self.rank,
                                        self.world)

        # the same initial weights on every process (DDP would broadcast them anyway), then per-process randomness
        seed_everything(cfg.seed)
        model = create_model(self.mcfg, init_weights).train()
        if model.logit_bias is not None and not cfg.siglip:
            model.logit_bias.requires_grad_(False)  # unused by the CLIP loss; DDP rejects unused parameters
        if cfg.lock_image:
            model.lock_image_tower()
        if cfg.lock_text:
            model.lock_text_tower(cfg.lock_text_unlocked_layers, cfg.lock_text_freeze_layer_norm)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.model = model.to(self.device)
        self.token_net, self.token_classes = None, None
        heads = bool(cfg.token_loss_weight or cfg.study_loss_weight or cfg.attention_loss_weight
                     or cfg.stem_loss_weight)
        if heads or cfg.clip_label_positives:  # both read the study labels (as class indices)
            self.token_classes = sorted({e.label for e in self.entries if e.label} | {cfg.token_normal_class})
        if heads:
            self.token_net = TrainingHeadsNet(self.model, len(self.token_classes),
                                              attend=bool(cfg.attention_loss_weight),
                                              stem_cells=bool(cfg.stem_loss_weight)).to(self.device)
            if cfg.token_loss_weight or cfg.attention_loss_weight or cfg.stem_loss_weight:
                self.cache.token_grid = self.model.visual.trunk.patch_embed.patch_size
            if cfg.stem_loss_weight:
                self.cache.cell_grid = refine_geometry(self.model.visual.trunk.patch_embed)[1]
        self.net = self.token_net or self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        seed_everything(cfg.seed + (self.rank if cfg.seed_per_rank else 0))

        self.optimizer = create_optimizer(self.model, cfg.lr, cfg.wd, cfg.betas, cfg.eps)
        if self.token_net is not None:  # the training-only head: its own groups, the same schedule
            from .optim import param_groups
            for head in (self.token_net.head, self.token_net.study_head, self.token_net.cell_head):
                if head is None:
                    continue
                for group in param_groups(head, cfg.wd):
                    self.optimizer.add_param_group(group)
        self.loss_fn = create_loss(cfg.siglip)
        self.dataset = TrainDataset(self.entries, self.cache, cfg.seed, cfg.augment, cfg.intensity_scale,
                                    cfg.intensity_shift, cfg.report_text, cfg.text_word_dropout, cfg.scan_dropout)
        if self.token_classes is not None:
            self.dataset.enable_token_targets(self.token_classes, cfg.token_normal_class,
                                              self.model.visual.trunk.patch_embed.grid_size,
                                              cfg.token_loss_threshold, cfg.token_loss_core_threshold)
            if cfg.stem_loss_weight:
                trunk = self.model.visual.trunk
                cells = tuple(i // c for i, c in zip(trunk.patch_embed.img_size, self.cache.cell_grid))
                self.dataset.enable_cell_targets(cells, cfg.stem_loss_core_threshold)
        global_batch = self.world * cfg.accum_steps * cfg.batch_size
        self.steps_per_epoch = len(self.entries) // global_batch
        if self.steps_per_epoch < 1:
            raise ConfigError(f"training config: 'batch_size': the manifest has {len(self.entries)} studies, fewer "
                              f"than one global batch of {global_batch}")
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.schedule = CosineSchedule(self.optimizer, cfg.lr, cfg.warmup, self.total_steps)
        self.scaler = None  # fp32 and bf16 need no loss scaling; kept in checkpoints for an fp16 future
        self.step = 0
        self.history: List[dict] = []
        self.eval_entries = read_manifest(cfg.eval_manifest, need_report=False) if cfg.eval_manifest else None
        self.prompt_set = None
        if cfg.prompts:
            from ..prompts import load_prompt_set
            self.prompt_set = load_prompt_set(cfg.prompts)

        path = self._resume_path(resume)
        if path is not None:
            self.load_checkpoint(path)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _resume_path(self, resume) -> Optional[Path]:
        if resume in (None, False):
            return None
        if resume in ("auto", True):
            latest = self.ckpt_dir / "latest.pt"
            return latest if latest.is_file() else None
        return Path(resume)

    def save_checkpoint(self) -> Optional[Path]:
        states = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        path = None
        if self.rank == 0:
            state = {"format": CHECKPOINT_FORMAT, "step": self.step, "epoch": self.step / self.steps_per_epoch,
                     "world_size": self.world, "model": self.model.state_dict(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler else None, "rng": states,
                     "training_heads": self.token_net.heads_state_dict() if self.token_net is not None else None,
                     "config": json.loads(json.dumps(self.cfg.to_dict())), "model_cfg": self.mcfg}
            latest = self.ckpt_dir / "latest.pt"
            if self.cfg.keep_step_checkpoints:
                path = save_torch_atomic(state, self.ckpt_dir / f"step_{self.step:06d}.pt")
                atomic_write(latest, lambda tmp: _link_or_copy(path, tmp))
            else:
                path = save_torch_atomic(state, latest)
        barrier(self.world)
        return path

    def load_checkpoint(self, path: Union[str, Path]) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no checkpoint to resume from")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable training checkpoint ({str(exc).splitlines()[0]})") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a training checkpoint of this program (use it as init_checkpoint)")
        self.model.load_state_dict(state["model"])
        if self.token_net is not None:
            if not state.get("training_heads"):
                raise CheckpointError(f"{path}: trained without token/study losses; resume it with their weights 0")
            self.token_net.load_state_dict({**self.model.state_dict(prefix="model."), **state["training_heads"]})
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        saved = state["config"]
        for key in ("batch_size", "accum_steps", "seed", "train_manifest"):
            if saved.get(key) != self.cfg.to_dict().get(key):
                log.warning("resuming with %s=%r (checkpoint: %r): the data order differs from the original run",
                            key, self.cfg.to_dict().get(key), saved.get(key))
        if state["world_size"] != self.world:
            log.warning("resuming %d process(es) from a %d-process checkpoint: not an exact continuation",
                        self.world, state["world_size"])
        set_rng_state(state["rng"][self.rank % len(state["rng"])])
        if self.rank == 0:
            self._truncate_log(self.step)
            log.info("resumed from %s at step %d of %d", path, self.step, self.total_steps)

    # -- logging --------------------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out / "log.csv"

    def _truncate_log(self, step: int) -> None:
        """Rows logged after the checkpoint (steps redone after a crash) are dropped, so each step appears once."""
        if not self.log_path.is_file():
            return
        with open(self.log_path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
        def write(tmp):
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, LOG_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        atomic_write(self.log_path, write)

    def _log_row(self, row: dict) -> None:
        if self.rank != 0:
            return
        new = not self.log_path.is_file()
        with open(self.log_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, LOG_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    # -- data -----------------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Preprocess every training study once (each process a share), and learn every study's scan count."""
        from tqdm import tqdm
        mine = list(range(self.rank, len(self.entries), self.world))
        counts = {}
        for i in tqdm(mine, desc="preparing studies", disable=not (self.progress and self.rank == 0)):
            counts[self.cache.key(self.entries[i])] = self.cache.num_scans(self.entries[i])
            if self.cache.token_grid:
                self.cache.token_targets(self.entries[i])
            if self.cache.cell_grid:
                self.cache.cell_targets(self.entries[i])
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, counts)
            for part in gathered:
                self.cache._counts.update(part)

    def loader(self):
        sampler = StepBatchSampler(self.dataset, self.cfg.batch_size, self.cfg.accum_steps, self.total_steps,
                                   self.step, self.rank, self.world, self.cfg.seed, self.cfg.max_scans_train)
        # its own generator: a DataLoader draws a base seed when iterated, which must not shift the global RNG
        # (a resumed run creates one more iterator than an uninterrupted one)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                                           num_workers=self.cfg.workers,
                                           generator=torch.Generator().manual_seed(self.cfg.seed))

    # -- one optimiser step ---------------------------------------------------------------------------------------
    def train_step(self, micro_batches) -> float:
        """Accumulation as open_clip: features of all micro-batches are computed without gradients, then each
        micro-batch is recomputed with gradients against the cached rest, so the loss is that of the whole batch.
        The logit scale/bias get their gradient from the last recomputation only (open_clip counts it once per
        micro-batch), which makes accumulation exactly equivalent to a larger batch."""
        cfg, dev = self.cfg, self.device
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        batches = [(mb[0].to(dev, non_blocking=True), self.tokenizer(mb[1]).to(dev),
                    tuple(t.to(dev) for t in mb[2:]) if len(mb) > 2 else None) for mb in micro_batches]
        aux = {name: [] for name in AUX_LOSSES}

        def token_term(out, targets, share):
            """Token, study and attention losses of this micro-batch (its `share` of the batch)."""
            if targets is None:
                return 0.0
            tokens, studies, core = targets[:3]
            normal = self.token_classes.index(cfg.token_normal_class)
            total, terms = 0.0, []
            if cfg.token_loss_weight:
                terms.append(("token_loss", cfg.token_loss_weight,
                              token_class_loss(out["token_logits"], tokens, normal)))
            if cfg.study_loss_weight and bool((studies >= 0).any()):
                terms.append(("study_loss", cfg.study_loss_weight,
                              torch.nn.functional.cross_entropy(out["study_logits"].float(), studies, ignore_index=-1)))
            if cfg.attention_loss_weight:
                terms.append(("attention_loss", cfg.attention_loss_weight,
                              attention_target_loss(out["class_attention"], tokens, normal, core)))
            if cfg.stem_loss_weight:
                terms.append(("stem_loss", cfg.stem_loss_weight, cell_core_loss(out["cell_logits"], targets[3],
                                                                                   cfg.stem_loss_per_scan)))
            for name, weight, value in terms:
                aux[name].append(float(value.detach()) * share)
                total = total + weight * value * share
            return total

        if len(batches) == 1:
            images, texts, targets = batches[0]
            with autocast(dev, cfg.precision):
                out = self.net(images, texts)
                clip_loss = self.loss_fn(**{k: v for k, v in out.items() if k in CLIP_KEYS},
                                         labels=targets[1] if cfg.clip_label_positives else None)
                loss = clip_loss + token_term(out, targets, 1.0)
            loss.backward()
        else:
            cached = []
            with torch.no_grad(), autocast(dev, cfg.precision):
                for images, texts, _ in batches:
                    out = self.net(images, texts)
                    cached.append((out["image_features"], out["text_features"]))
            for j, (images, texts, targets) in enumerate(batches):
                last = j == len(batches) - 1
                sync = contextlib.nullcontext() if last or self.world == 1 else self.net.no_sync()
                with sync:
                    with autocast(dev, cfg.precision):
                        out = self.net(images, texts)
                        feats = {name: torch.cat([c[k] for c in cached[:j]] + [out[name]]
                                                 + [c[k] for c in cached[j + 1:]])
                                 for k, name in enumerate(("image_features", "text_features"))}
                        scalars = {n: out[n] if last else out[n].detach() for n in ("logit_scale", "logit_bias")
                                   if n in out}
                        labels = torch.cat([b[2][1] for b in batches]) if cfg.clip_label_positives else None
                        clip_loss = self.loss_fn(**feats, **scalars, labels=labels)
                        loss = clip_loss + token_term(out, targets, 1.0 / len(batches))
                    loss.backward()
        for name in AUX_LOSSES:
            setattr(self, f"last_{name}", sum(aux[name]) if aux[name] else None)
        if cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
        self.optimizer.step()
        with torch.no_grad():  # as open_clip and the reference: logit scale at most ln 100
            self.model.logit_scale.clamp_(0, math.log(100))
        value = clip_loss.detach().float()
        if self.world > 1:  # the global batch's loss: mean of the processes' losses over their own rows
            dist.all_reduce(value)
            value /= self.world
        return float(value)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(self) -> Optional[dict]:
        """Zero-shot metrics on the eval manifest (process 0; the others wait)."""
        if self.eval_entries is None or self.prompt_set is None:
            return None
        result = None
        if self.rank == 0:
            from .evaluate import evaluate
            with torch.random.fork_rng(devices=[]):
                result = evaluate(self.model, self.tokenizer, self.eval_entries, self.prompt_set, self.cache,
                                  self.cfg.eval_labels, self.device, self.cfg.precision, progress=self.progress,
                                  out_dir=self.out / "eval", tag=f"step_{self.step:06d}")
            self.model.train()
        barrier(self.world)
        return result

    # -- the loop -------------------------------------------------------------------------------------------------
    def train(self, stop_after: Optional[int] = None) -> List[dict]:
        """Run to `total_steps` (or stop after global step `stop_after`, saving a checkpoint, as if interrupted);
        returns the rows logged by this call. The last step also writes `final/`."""
        from tqdm import tqdm
        cfg = self.cfg
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        self.prepare_data()
        if self.step == 0 and cfg.stem_pretrain_steps:  # a resumed run starts from a checkpoint taken after it
            self.pretrain_stem()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", dynamic_ncols=True,
                   disable=not (self.progress and self.rank == 0))
        rows, micro, saved_at = [], [], self.step
        iterator = iter(self.loader())
        try:
            while self.step < end:
                micro = [next(iterator) for _ in range(cfg.accum_steps)]
                started = time.perf_counter()
                lr = self.schedule.step(self.step)
                loss = self.train_step(micro)
                self.step += 1
                row = {"step": self.step, "epoch": f"{self.step / self.steps_per_epoch:.4f}", "lr": f"{lr:.6g}",
                       "loss": repr(loss), "logit_scale": f"{float(self.model.logit_scale.detach().exp()):.4f}",
                       "step_time_s": f"{time.perf_counter() - started:.3f}"}
                for name in AUX_LOSSES:
                    if getattr(self, f"last_{name}", None) is not None:
                        row[name] = f"{getattr(self, f'last_{name}'):.4f}"
                if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0 or self.step == self.total_steps:
                    result = self.evaluate()
                    if result:  # the log keeps the mean over tasks; each task is shown here and in out/eval/
                        row.update({f"eval_{m}": f"{v:.4f}" for m, v in result["mean"].items()})
                        if self.progress and self.rank == 0:
                            from .evaluate import format_table
                            bar.write(f"zero-shot evaluation at step {self.step}:\n{format_table(result)}")
                self._log_row(row)
                rows.append({**row, "loss": loss})
                self.history.append(rows[-1])
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if self.step % cfg.save_every_steps == 0 or self.step == end:
                    self.save_checkpoint()
                    saved_at = self.step
        except KeyboardInterrupt:
            if self.world == 1 and self.step > saved_at:
                log.info("interrupted: saving step %d", self.step)
                self.save_checkpoint()
            raise
        finally:
            bar.close()
        if self.step == self.total_steps:
            self.export_final()
        return rows

    def pretrain_stem(self) -> List[float]:
        """`stem_pretrain_steps` of the stem's first stage and the cell head alone (stem_pretrain.py); every
        process runs the same steps on the same scans, so the weights stay identical across processes."""
        from .stem_pretrain import pretrain_stem
        cfg = self.cfg
        self.stem_pretrain_losses = pretrain_stem(
            self.model.visual.trunk.patch_embed, self.token_net.cell_head, self.dataset, cfg.stem_pretrain_steps,
            cfg.stem_pretrain_lr, cfg.stem_pretrain_batch, cfg.seed, self.device, cfg.precision,
            cfg.intensity_scale if cfg.augment else 0.0, cfg.intensity_shift if cfg.augment else 0.0,
            progress=self.progress and self.rank == 0)
        return self.stem_pretrain_losses

    def export_final(self) -> Optional[Path]:
        """`final/`: model.safetensors + config.json (+ tokenizer) in `hlip convert`'s layout."""
        if self.rank != 0:
            return None
        final = self.out / "final"
        final.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.model, final / "model.safetensors", metadata={"format": "pt"})
        meta = {"model_id": self.cfg.model_id or self.out.name, "source": f"hlip train, step {self.step}",
                "model_cfg": self.mcfg}
        atomic_write(final / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        self.tokenizer.save_pretrained(final)
        return final

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
