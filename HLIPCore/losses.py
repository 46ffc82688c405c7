"""Contrastive losses: symmetric CLIP (InfoNCE) and SigLIP (pairwise sigmoid).

Under torch.distributed each process scores its own images and texts against the features of all processes
(gathered with gradients), so N processes with batch B give the same loss and gradients as one process with
batch N*B.
"""
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


class ClipLoss(nn.Module):
    """mean of cross-entropy over image->text and text->image logits; positives on the diagonal."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias=None) -> torch.Tensor:
        rank, _ = _world()
        all_text, all_image = gather_with_grad(text_features), gather_with_grad(image_features)
        logits_per_image = logit_scale * image_features @ all_text.T
        logits_per_text = logit_scale * text_features @ all_image.T
        labels = torch.arange(image_features.shape[0], device=image_features.device) + rank * image_features.shape[0]
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class SigLipLoss(nn.Module):
    """-sum log sigmoid(z_ij * (scale * <x_i, y_j> + bias)) / B, z = +1 on matching pairs and -1 elsewhere."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
        rank, _ = _world()
        all_text = gather_with_grad(text_features)
        logits = logit_scale * image_features @ all_text.T + logit_bias
        b = image_features.shape[0]
        signs = -torch.ones_like(logits)
        signs[torch.arange(b), torch.arange(b) + rank * b] = 1.0
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


def attention_target_loss(class_attention: torch.Tensor, targets: torch.Tensor, normal_index: int) -> torch.Tensor:
    """Cross-entropy between the class token's attention over the patch tokens [B, L] (probabilities, mean over
    heads) and the uniform distribution over each study's lesion tokens (targets [B, ...] as for
    `token_class_loss`: lesion tokens are those >= 0 and != normal_index). Studies without a lesion token are left
    out. Minimal when all attention lies on the lesion, spread evenly over it."""
    t = targets.reshape(targets.shape[0], -1)
    lesion = ((t >= 0) & (t != normal_index)).float()
    has = lesion.sum(dim=1) > 0
    if not bool(has.any()):
        return class_attention.sum() * 0.0
    target = lesion[has] / lesion[has].sum(dim=1, keepdim=True)
    return -(target * torch.log(class_attention[has].float().clamp(min=1e-12))).sum(dim=1).mean()
