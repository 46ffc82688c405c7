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


class ConvStem3D(nn.Module):
    """A convolutional tokenizer in place of the linear patch embedding (same input and output as PatchEmbed3D).

    "Early convolutions help transformers see better" (Xiao et al. 2021): a few strided convolutions before the
    first block make a ViT train far faster and more stably from scratch. The released HLIP models start from MAE
    weights and keep the linear embedding; a small model trained from scratch on a few hundred studies (the demo)
    does not learn a lesion's look through a 2048-voxel linear projection in any affordable time (README,
    "Training and the demo model"). Layers are `[out_channels, stride, kernel]` (stride/kernel an int or a
    (d, h, w) triple), each conv -> norm -> ReLU, then a 1x1x1 projection to the width; the strides must multiply
    to the patch size, so the token grid is unchanged. A kernel equal to its stride is a patchify layer (no
    padding); odd kernels are padded to keep the size.

    Norm: BatchNorm by default. Measured on the phantoms (single scans, 200 steps): with BatchNorm the stem's
    tokens name the lesion class 0.70 of the time and the class token 0.57; with GroupNorm 0.43 and chance. In
    evaluation BatchNorm uses its running statistics, so a study's output never depends on its batch; in training
    under DDP the statistics are per process (buffers are broadcast from process 0), as torchvision's models do.
    """

    def __init__(self, img_size: Sequence[int] = (48, 224, 224), patch_size: Sequence[int] = (8, 16, 16),
                 in_chans: int = 1, embed_dim: int = 768, layers: Sequence = (), norm: str = "batch",
                 groups: int = 8, **_ignored):
        super().__init__()
        self.img_size = _triple(img_size)
        self.patch_size = _triple(patch_size)
        self.grid_size = tuple(i // p for i, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        if not layers:
            raise ValueError("conv stem needs at least one layer [out_channels, stride, kernel]")
        total, modules, channels = [1, 1, 1], [], in_chans
        for layer in layers:
            out, stride, kernel = int(layer[0]), _triple(layer[1]), _triple(layer[2] if len(layer) > 2 else 3)
            padding = tuple(k // 2 if k % 2 else max(0, (k - s) // 2) for k, s in zip(kernel, stride))
            modules += [nn.Conv3d(channels, out, kernel, stride, padding, bias=False), _norm(norm, out, groups),
                        nn.ReLU(inplace=True)]
            total = [t * s for t, s in zip(total, stride)]
            channels = out
        if tuple(total) != self.patch_size:
            raise ValueError(f"conv stem strides multiply to {tuple(total)}, not the patch size {self.patch_size}")
        self.convs = nn.Sequential(*modules)
        self.proj = nn.Conv3d(channels, embed_dim, kernel_size=1)

    def feat_ratio(self, as_scalar: bool = True):
        return max(self.patch_size) if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C, D, H, W] -> [B, N, D', H', W', embed_dim]."""
        b, n = x.shape[:2]
        gd, gh, gw = (s // p for s, p in zip(x.shape[3:], self.patch_size))
        y = self.proj(self.convs(x.flatten(0, 1)))[..., :gd, :gh, :gw]
        return y.permute(0, 2, 3, 4, 1).reshape(b, n, gd, gh, gw, -1)


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"conv stem norm must be 'group' or 'batch', not {kind!r}")
