"""Contrastive losses: symmetric CLIP (InfoNCE) and SigLIP (pairwise sigmoid).

Under torch.distributed each process scores its own images and texts against the features of all processes
(gathered with gradients), so N processes with batch B give the same loss and gradients as one process with
batch N*B.
"""
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All processes' features, concatenated in rank order; gradients flow back to each process's part."""
    rank, world = _world()
    if world == 1:
        return features
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(features), dim=0)


def gather_labels(labels: torch.Tensor) -> torch.Tensor:
    """All processes' labels [B] (no gradient), concatenated in rank order like the features."""
    _, world = _world()
    if world == 1:
        return labels
    parts = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


def positive_pairs(labels: Optional[torch.Tensor], rows: int, columns: int, offset: int, device) -> torch.Tensor:
    """[rows, columns] bool: which image-text pairs are positives. Without labels the matching pair only (CLIP);
    with labels ([rows] this process's, -1 = unlabelled) also every pair whose two studies share a label
    (UniCL, Yang et al. 2022): two glioma studies in one batch are then not pushed apart as negatives."""
    eye = torch.zeros(rows, columns, dtype=torch.bool, device=device)
    eye[torch.arange(rows, device=device), torch.arange(rows, device=device) + offset] = True
    if labels is None:
        return eye
    everyone = gather_labels(labels)
    same = (labels[:, None] == everyone[None, :]) & (labels[:, None] >= 0)
    return eye | same


class ClipLoss(nn.Module):
    """mean of cross-entropy over image->text and text->image logits; positives on the diagonal (or, with
    `labels`, spread evenly over every same-label pair: `positive_pairs`)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias=None, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        rank, _ = _world()
        all_text, all_image = gather_with_grad(text_features), gather_with_grad(image_features)
        logits_per_image = logit_scale * image_features @ all_text.T
        logits_per_text = logit_scale * text_features @ all_image.T
        b = image_features.shape[0]
        if labels is None:
            targets = torch.arange(b, device=image_features.device) + rank * b
        else:
            positive = positive_pairs(labels, b, all_text.shape[0], rank * b, image_features.device).float()
            targets = positive / positive.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


class SigLipLoss(nn.Module):
    """-sum log sigmoid(z_ij * (scale * <x_i, y_j> + bias)) / B, z = +1 on matching pairs (with `labels`, on
    every same-label pair) and -1 elsewhere."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        rank, _ = _world()
        all_text = gather_with_grad(text_features)
        logits = logit_scale * image_features @ all_text.T + logit_bias
        b = image_features.shape[0]
        positive = positive_pairs(labels, b, all_text.shape[0], rank * b, logits.device)
        signs = positive.float() * 2 - 1
        return -F.logsigmoid(signs * logits).sum() / b


def create_loss(siglip: bool = False) -> nn.Module:
    return SigLipLoss() if siglip else ClipLoss()


def token_class_loss(logits: torch.Tensor, targets: torch.Tensor, normal_index: int) -> torch.Tensor:
    """Cross-entropy of per-token class logits [B, L, C] against targets [B, ...] (L values per study; -1 =
    ignore), averaged over lesion tokens and over normal tokens separately, then the two means averaged: lesions
    are a few percent of the tokens and would otherwise hardly count."""
    t = targets.reshape(targets.shape[0], -1)
    valid = t >= 0
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), t.clamp(min=0).reshape(-1),
                         reduction="none").view_as(t)
    parts = [ce[m].mean() for m in (valid & (t != normal_index), valid & (t == normal_index)) if bool(m.any())]
    return torch.stack(parts).mean() if parts else logits.sum() * 0.0


def cell_core_loss(logits: torch.Tensor, targets: torch.Tensor, per_scan: bool = False) -> torch.Tensor:
    """Binary cross-entropy of per-cell core logits against targets (1 core, 0 not, -1 ignore; same shape),
    averaged over core cells and over the others separately, then the two means averaged (the core is well under
    1 % of the cells).

    `per_scan` (logits [B, k, ...]): the core cells are averaged within each scan first, then over the scans that
    have any. Pooled, a 5 cm meningioma brings a hundred times the core cells of a 1 cm metastasis, and the head
    learns the large lesions' look; per scan every lesion weighs the same."""
    x = logits.float()
    bce = F.binary_cross_entropy_with_logits(x, targets.clamp(min=0).float(), reduction="none")
    negatives = bce[targets == 0]
    if per_scan:
        core = (targets == 1).flatten(2).float()
        count = core.sum(-1)
        has = count > 0
        positive = ((bce.flatten(2) * core).sum(-1)[has] / count[has]).mean() if bool(has.any()) else None
    else:
        positive = bce[targets == 1].mean() if bool((targets == 1).any()) else None
    parts = [p for p in (positive, negatives.mean() if negatives.numel() else None) if p is not None]
    return torch.stack(parts).mean() if parts else logits.sum() * 0.0


def attention_target_loss(class_attention: torch.Tensor, targets: torch.Tensor, normal_index: int,
                          weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy between the class token's attention over the patch tokens [B, L] (probabilities, mean over
    heads) and a target distribution over each study's lesion: `weights` [B, ...] (L values per study, e.g. the
    fraction of each token the lesion core fills) normalised per study, or, for a study whose weights are all
    zero or without weights, uniform over its lesion tokens (targets [B, ...] as for `token_class_loss`: lesion
    tokens are those >= 0 and != normal_index). Studies with neither are left out. Minimal when the attention
    equals the target."""
    t = targets.reshape(targets.shape[0], -1)
    target = ((t >= 0) & (t != normal_index)).float()
    if weights is not None:
        w = weights.reshape(weights.shape[0], -1).float()
        target = torch.where(w.sum(dim=1, keepdim=True) > 0, w, target)
    has = target.sum(dim=1) > 0
    if not bool(has.any()):
        return class_attention.sum() * 0.0
    target = target[has] / target[has].sum(dim=1, keepdim=True)
    return -(target * torch.log(class_attention[has].float().clamp(min=1e-12))).sum(dim=1).mean()
