"""HLIP's visual trunk: a timm VisionTransformer whose blocks attend within a slice, a scan or the whole study.

Input `[B, N, 1, D, H, W]` (N scans per study, all on the same grid). Tokens are kept in (study, scan, slice,
row, column) order, so regrouping them into windows of another level is a reshape; the class token is copied
into every window when a level splits the study into smaller windows, and the copies are averaged when
windows merge (as the reference does). After the last block the tokens return to the study level.
"""
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer
from torch.utils.checkpoint import checkpoint

from .attention import HLIPAttention
from .patch_embed import ConvStem3D, PatchEmbed3D
from .pos_embed import resample_sequential, resample_spatial, sequential_sincos, sincos_3d

LEVELS = ("slice", "scan", "study")


def parse_layout(layout) -> tuple:
    """A layout is one level per block: a list, or a string like 'scan scan study ...'."""
    if isinstance(layout, str):
        layout = layout.replace(",", " ").split()
    layout = tuple(str(level).lower() for level in layout)
    bad = [level for level in layout if level not in LEVELS]
    if bad or not layout:
        raise ValueError(f"attention layout must list one of {LEVELS} per block, got {list(layout)}")
    return layout


class HLIPVisionTransformer(VisionTransformer):
    """ViT over whole studies with per-block attention level (`attn_layout`)."""

    def __init__(self, attn_layout, img_size: Sequence[int] = (48, 224, 224), patch_size: Sequence[int] = (8, 16, 16),
                 max_num_scans: int = 40, stem: Optional[dict] = None, **kwargs):
        """`stem`: None for HLIP's linear patch embedding (the released models), or the arguments of a
        `ConvStem3D` ({"layers": [[channels, stride, kernel], ...], "norm": "batch"})."""
        layout = parse_layout(attn_layout)
        kwargs.setdefault("attn_layer", HLIPAttention)
        embed_layer = PatchEmbed3D if stem is None else partial(ConvStem3D, **stem)
        super().__init__(img_size=img_size, patch_size=patch_size, depth=len(layout), in_chans=1, num_classes=0,
                         global_pool="token", class_token=True, pos_embed="none", no_embed_class=True,
                         embed_layer=embed_layer, **kwargs)
        self.attn_layout = layout
        self.max_num_scans = max_num_scans
        # Frozen, but parameters (not buffers) so that the official checkpoints' keys load strictly.
        self.spatial_posemb = nn.Parameter(sincos_3d(self.embed_dim, self.patch_embed.grid_size), requires_grad=False)
        if max_num_scans > 1:
            self.sequential_posemb = nn.Parameter(sequential_sincos(self.embed_dim, max_num_scans), requires_grad=False)
        else:
            self.sequential_posemb = None

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"cls_token", "spatial_posemb", "sequential_posemb"}

    # -- small named steps ------------------------------------------------------------------------------------
    def study_pos_embed(self, num_scans: int, grid) -> torch.Tensor:
        """[1, N, D', H', W', C]: spatial embedding (resampled to this grid) plus the scan-index embedding."""
        spatial = resample_spatial(self.spatial_posemb, grid)[:, None]
        if self.sequential_posemb is None:
            if num_scans > 1:
                raise ValueError(f"this model takes single-scan studies; got {num_scans} scans")
            return spatial
        sequential = resample_sequential(self.sequential_posemb, num_scans, self.training)
        return spatial + sequential[:, :, None, None, None, :]

    def windows_per_study(self, level: str, num_scans: int, num_slices: int) -> int:
        return {"slice": num_scans * num_slices, "scan": num_scans, "study": 1}[level]

    def regroup(self, x: torch.Tensor, src: str, dst: str, num_scans: int, num_slices: int) -> torch.Tensor:
        """Re-window tokens [W_src, P + L, C] from level `src` to `dst`; class tokens are copied or averaged."""
        if src == dst:
            return x
        w_src = self.windows_per_study(src, num_scans, num_slices)
        w_dst = self.windows_per_study(dst, num_scans, num_slices)
        p, c = self.num_prefix_tokens, x.shape[-1]
        studies = x.shape[0] // w_src
        prefix, tokens = x[:, :p], x[:, p:]
        tokens = tokens.reshape(studies * w_dst, -1, c)
        if w_dst < w_src:  # merge: average the copies of the class token
            prefix = prefix.reshape(studies * w_dst, w_src // w_dst, p, c).mean(dim=1)
        else:  # split: copy the class token into every new window
            prefix = prefix[:, None].expand(-1, w_dst // w_src, -1, -1).reshape(studies * w_dst, p, c)
        return torch.cat([prefix, tokens], dim=1)

    def embed_study(self, x: torch.Tensor):
        """Patch + position embedding, windowed for the first block: -> ([W, 1 + L, C], num_scans, num_slices)."""
        if x.ndim == 5:  # [B, N, D, H, W]: single channel implied
            x = x.unsqueeze(2)
        x = self.patch_embed(x)
        b, n, d, h, w, c = x.shape
        x = x + self.study_pos_embed(n, (d, h, w)).to(x.dtype)
        first = self.attn_layout[0]
        x = x.reshape(b * self.windows_per_study(first, n, d), -1, c)
        x = self.pos_drop(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return x, n, d

    def class_token_block(self, block, x: torch.Tensor) -> torch.Tensor:
        """A timm Block computed for the class token only: [W, 1 + L, C] -> [W, 1, C]."""
        y = x[:, :1] + block.drop_path1(block.ls1(block.attn.forward_class_token(block.norm1(x))))
        return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))

    def forward_features(self, x: torch.Tensor, grad_from_block: Optional[int] = None,
                         class_token_only: bool = False) -> torch.Tensor:
        """Tokens after the final norm, at study level: [B, 1 + N*D'*H'*W', C].

        `class_token_only`: when the last block attends to the whole study, only the class token is computed in
        it (that is all token pooling reads), and [B, 1, C] is returned: 1/depth of the work saved.

        `grad_from_block=k` runs everything before block k without autograd and starts a graph at block k's
        input: attention maps need gradients of the last blocks only, so they cost a small backward pass.
        """
        no_grad_head = grad_from_block is not None
        with torch.set_grad_enabled(torch.is_grad_enabled() and not no_grad_head):
            x, num_scans, num_slices = self.embed_study(x)
            x = self.patch_drop(x)
            x = self.norm_pre(x)
        level = self.attn_layout[0]
        for index, (block, next_level) in enumerate(zip(self.blocks, self.attn_layout)):
            if no_grad_head and index == grad_from_block:
                x = x.detach().requires_grad_(True)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not (no_grad_head and index < grad_from_block)):
                x = self.regroup(x, level, next_level, num_scans, num_slices)
                level = next_level
                if class_token_only and level == "study" and index == len(self.blocks) - 1:
                    x = self.class_token_block(block, x)
                elif self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        x = self.regroup(x, level, "study", num_scans, num_slices)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, class_token_only=True))
