"""Zero-shot classification of studies from a prompt set.

A class embedding is the mean of the L2-normalised text embeddings of all its prompt x template texts,
renormalised (the reference's ensembling). Multiclass tasks take a softmax of `logit_scale * cos` over their
classes; multilabel tasks take, per class, a softmax over its [negative, positive] pair and report
P(positive). Text embeddings are cached on disk per (model, tokenizer, prompt set), so a second analysis with
the same prompts does not run the text tower.
"""
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .paths import cache_dir

log = logging.getLogger("HLIPCore.zeroshot")


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """[len(texts), D] L2-normalised text embeddings (fp32, on the model's device)."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[start:start + batch_size])).to(device)
        chunks.append(F.normalize(model.encode_text(ids).float(), dim=-1))
    return torch.cat(chunks)


def ensemble(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of normalised embeddings, renormalised."""
    return F.normalize(F.normalize(embeddings, dim=-1).mean(dim=0), dim=-1)


def _task_texts(prompt_set, task) -> List[List[str]]:
    """Per class the texts to ensemble: multiclass [class], multilabel [negative, positive] per class."""
    templates = task.effective_templates(prompt_set.templates)
    groups = []
    for cls in task.classes:
        own = cls.effective_templates(templates)  # a class may override the task's templates
        if task.kind == "multilabel":
            groups.append(cls.negative_texts(own))
        groups.append(cls.texts(own))
    return groups


@dataclass
class ZeroShotClassifier:
    """Class embeddings of every task plus the model's logit scale: all that scoring needs."""
    prompt_set: object
    weights: Dict[str, torch.Tensor]  # task -> [C, D] (multiclass) or [C, 2, D] (multilabel: negative, positive)
    logit_scale: float

    def logits(self, image_features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """task -> [B, C] (multiclass) or [B, C, 2] (multilabel); image features need not be normalised."""
        feats = F.normalize(image_features.float(), dim=-1)
        out = {}
        for task in self.prompt_set.tasks:
            w = self.weights[task.name].to(feats.device)
            out[task.name] = self.logit_scale * torch.einsum("bd,...d->b...", feats, w)
        return out

    def probabilities(self, image_features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """task -> [B, C]: softmax over classes (multiclass) or P(positive) per class (multilabel)."""
        logits = self.logits(image_features)
        return {task.name: logits[task.name].softmax(-1) if task.kind == "multiclass"
                else logits[task.name].softmax(-1)[..., 1] for task in self.prompt_set.tasks}

    def scores(self, image_features: torch.Tensor) -> List[Dict[str, Dict[str, float]]]:
        """Per study: task -> class -> probability, as plain floats."""
        probs = self.probabilities(image_features)
        result = []
        for b in range(image_features.shape[0]):
            result.append({task.name: {cls.name: float(probs[task.name][b, i]) for i, cls in enumerate(task.classes)}
                           for task in self.prompt_set.tasks})
        return result

    def score_signature(self, task_name: str, class_name: str) -> bytes:
        """Equal for two (task, class) pairs whose class_score is the same function of the image features (e.g.
        'Glioma' in a 5-way and in a 2-way task with the same prompts), so their maps are computed once."""
        task = self.prompt_set.task(task_name)
        index = task.class_index(class_name)
        if task.kind == "multiclass":  # the score reads every class of the task (log-softmax or log-odds)
            reference = self._reference(task, class_name)
            return (b"multiclass%d/%d:" % (index, -1 if reference is None else reference)
                    + self.weights[task_name].detach().cpu().numpy().tobytes())
        return task.kind.encode() + self.weights[task_name][index].detach().cpu().numpy().tobytes()

    def class_score(self, image_features: torch.Tensor, task_name: str, class_name: str) -> torch.Tensor:
        """[B] differentiable score to explain, so that the map shows evidence for this finding rather than for
        what raises every prompt's similarity alike:
        - multiclass with a `reference` class (e.g. Normal): the class's log-odds against it - what makes the
          study this finding rather than normal. The log-probability of a confidently recognised class is
          dominated by its runner-up (the gradient is (1 - p) x (this class - the others, weighted)), so its map
          shows what tells, say, a stroke from a metastasis, not where the stroke is;
        - multiclass without one: the class's log-probability among the task's classes;
        - multilabel: the log-odds positive vs negative.
        (Refined maps of the phantom demo model, 160 held-out lesion studies, peak inside the lesion core: raw
        logit 0.41, log-probability 0.41-0.59, log-odds against Normal 0.53-0.65; README, "Training and the demo
        model".)"""
        task = self.prompt_set.task(task_name)
        index = task.class_index(class_name)
        logits = self.logits(image_features)[task_name]
        if task.kind == "multiclass":
            reference = self._reference(task, class_name)
            if reference is not None:
                return logits[:, index].float() - logits[:, reference].float()
            return torch.log_softmax(logits.float(), dim=-1)[:, index]
        return logits[:, index][..., 1] - logits[:, index][..., 0]

    @staticmethod
    def _reference(task, class_name: str):
        """Index of the task's reference class, None when it has none or `class_name` is the reference."""
        if not task.reference or task.reference == class_name:
            return None
        return task.class_index(task.reference)


def text_cache_key(model_fingerprint: str, tokenizer, prompt_set) -> str:
    parts = [model_fingerprint, getattr(tokenizer, "name_or_path", ""), str(getattr(tokenizer, "context_length", "")),
             prompt_set.fingerprint()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def model_fingerprint(model, checkpoint: Optional[Path] = None) -> str:
    """Identifies the text tower's weights: the checkpoint file (path, size, mtime), else the projection."""
    if checkpoint is not None and Path(checkpoint).exists():
        st = Path(checkpoint).resolve().stat()
        return f"{Path(checkpoint).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    proj = model.text.proj.weight.detach().float().cpu().contiguous()
    return hashlib.sha256(proj.numpy().tobytes()).hexdigest()


def build_classifier(model, tokenizer, prompt_set, checkpoint: Optional[Path] = None,
                     cache: Optional[Path] = None, use_cache: bool = True) -> ZeroShotClassifier:
    """Encode the prompt set's texts (or read them from the on-disk cache) into a ZeroShotClassifier."""
    from safetensors.torch import load_file, save_file

    from .model.checkpoint import atomic_write
    key = text_cache_key(model_fingerprint(model, checkpoint), tokenizer, prompt_set)
    path = Path(cache or cache_dir() / "text_embeddings") / f"{key}.safetensors"
    weights = None
    if use_cache and path.is_file():
        try:
            weights = load_file(str(path))
            log.debug("text embeddings from cache %s", path.name)  # a detail: --debug shows it
        except Exception as exc:  # a damaged cache file is rebuilt, never fatal
            log.warning("ignoring unreadable text-embedding cache %s (%s)", path, exc)
    if weights is None or set(weights) != {t.name for t in prompt_set.tasks}:
        weights = {}
        for task in prompt_set.tasks:
            groups = _task_texts(prompt_set, task)
            flat = [text for group in groups for text in group]
            emb = encode_texts(model, tokenizer, flat)
            bounds = torch.tensor([0] + [len(g) for g in groups]).cumsum(0)
            classes = torch.stack([ensemble(emb[bounds[i]:bounds[i + 1]]) for i in range(len(groups))])
            weights[task.name] = classes.reshape(len(task.classes), 2, -1) if task.kind == "multilabel" else classes
        if use_cache:
            try:
                atomic_write(path, lambda tmp: save_file({k: v.cpu().contiguous() for k, v in weights.items()}, tmp,
                                                         metadata={"prompt_set": prompt_set.name}))
            except OSError as exc:  # a read-only cache only costs speed
                log.warning("cannot write text-embedding cache %s (%s)", path, exc)
    return ZeroShotClassifier(prompt_set, weights, float(model.logit_scale.detach().exp()))
