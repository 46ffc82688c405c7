"""The CLIP model: visual tower + text tower + logit scale (and bias for SigLIP).

Parameter names equal open_clip's `CustomTextCLIP` with a timm trunk and an HF text tower:
`visual.trunk.*`, `visual.head.proj.weight`, `text.transformer.*`, `text.proj.weight`, `logit_scale`,
`logit_bias`.
"""
import math
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .text import HFTextEncoder
from .vision import HLIPVisionTransformer


class HLIPVisual(nn.Module):
    """open_clip's TimmModel layout: `trunk` (the ViT, class-token pooled) then `head.proj` (no bias)."""

    def __init__(self, trunk: HLIPVisionTransformer, embed_dim: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Sequential(OrderedDict(proj=nn.Linear(trunk.num_features, embed_dim, bias=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def set_grad_checkpointing(self, enable: bool = True):
        self.trunk.set_grad_checkpointing(enable)


class HLIPModel(nn.Module):
    image_locked = False  # set by lock_image_tower

    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, init_logit_scale: float = math.log(1 / 0.07),
                 init_logit_bias: Optional[float] = None, **_ignored):
        super().__init__()
        vision_cfg = dict(vision_cfg)
        trunk = HLIPVisionTransformer(
            attn_layout=vision_cfg.pop("attn_layout"),
            img_size=tuple(vision_cfg.pop("img_size")),
            patch_size=tuple(vision_cfg.pop("patch_size")),
            max_num_scans=vision_cfg.pop("max_num_scans", 40),
            embed_dim=vision_cfg.pop("width"),
            num_heads=vision_cfg.pop("heads"),
            mlp_ratio=vision_cfg.pop("mlp_ratio", 4.0),
            drop_path_rate=vision_cfg.pop("drop_path", 0.0),
            patch_drop_rate=vision_cfg.pop("patch_dropout", 0.0),
            **vision_cfg,
        )
        self.visual = HLIPVisual(trunk, embed_dim)
        self.text = HFTextEncoder(output_dim=embed_dim, **text_cfg)
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
        self.logit_bias = nn.Parameter(torch.ones([]) * init_logit_bias) if init_logit_bias is not None else None

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[B, N, 1, D, H, W] studies -> [B, embed_dim]."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(input_ids)
        return F.normalize(features, dim=-1) if normalize else features

    def set_grad_checkpointing(self, enable: bool = True):
        self.visual.set_grad_checkpointing(enable)
        if enable:
            self.text.transformer.gradient_checkpointing_enable()
        else:
            self.text.transformer.gradient_checkpointing_disable()

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = False):
        self.text.lock(unlocked_layers, freeze_layer_norm)

    def lock_image_tower(self):
        """Freeze the whole image tower, BatchNorm statistics included (open_clip's `lock_image_tower` with
        `freeze_bn_stats`): a text-only phase then moves the text side against image embeddings, and so against
        attention maps, that stay exactly as they were. The tower stays in eval mode whatever `train()` is asked."""
        for param in self.visual.parameters():
            param.requires_grad_(False)
        self.image_locked = True
        self.visual.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.image_locked:
            self.visual.eval()
        return self

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None,
                return_tokens: bool = False) -> dict:
        """`return_tokens`: also the trunk's patch tokens after its final norm, `image_tokens` [B, L, width]
        (for training losses on tokens; costs the last block's full computation)."""
        out = {"logit_scale": self.logit_scale.exp()}
        if image is not None and return_tokens:
            trunk = self.visual.trunk
            tokens = trunk.forward_features(image)
            out["image_features"] = F.normalize(self.visual.head(trunk.forward_head(tokens)), dim=-1)
            out["image_tokens"] = tokens[:, trunk.num_prefix_tokens:]
        elif image is not None:
            out["image_features"] = self.encode_image(image, normalize=True)
        if text is not None:
            out["text_features"] = self.encode_text(text, normalize=True)
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out
