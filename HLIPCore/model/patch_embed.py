"""3D patch embedding of HLIP: one token per (pd, ph, pw) block of every scan."""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _triple(value) -> Tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"expected a 3-tuple (depth, height, width), got {value}")
    return value


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = patch size, stored as `proj` (the official checkpoint's key names).

    The forward pass computes the same thing as a matrix product over unfolded patches: on CPU that is one
    large GEMM (fast under bf16 autocast) instead of a 3D convolution. Voxels beyond a whole number of
    patches are dropped, exactly as the convolution would.
    """

    def __init__(self, img_size: Sequence[int] = (48, 224, 224), patch_size: Sequence[int] = (8, 16, 16),
                 in_chans: int = 1, embed_dim: int = 768, bias: bool = True, norm_layer=None, **_ignored):
        super().__init__()
        self.img_size = _triple(img_size)
        self.patch_size = _triple(patch_size)
        self.grid_size = tuple(i // p for i, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def feat_ratio(self, as_scalar: bool = True):
        return max(self.patch_size) if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C, D, H, W] -> [B, N, D', H', W', embed_dim]."""
        b, n, c, d, h, w = x.shape
        pd, ph, pw = self.patch_size
        gd, gh, gw = d // pd, h // ph, w // pw
        if (gd, gh, gw) != (d / pd, h / ph, w / pw):
            x = x[..., : gd * pd, : gh * ph, : gw * pw]
        patches = x.reshape(b * n, c, gd, pd, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        patches = patches.reshape(b * n * gd * gh * gw, c * pd * ph * pw)
        tokens = F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)
        return self.norm(tokens.reshape(b, n, gd, gh, gw, -1))
