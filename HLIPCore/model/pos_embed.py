"""Fixed sin-cos position embeddings of HLIP and their resampling to other grids / scan counts.

HLIP stores both embeddings in its checkpoints (frozen parameters); these functions build them for new models
and resample the stored ones when a study's grid or scan count differs from the training grid.
"""
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE-style 1D sin-cos embedding: [M] positions -> [M, embed_dim] (first half sin, second half cos)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float32) / (embed_dim / 2.0))
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float32), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(embed_dim: int, grid_size: Sequence[int]) -> torch.Tensor:
    """[1, D, H, W, embed_dim]: a third of the channels each for w, h and d (in that order, as HLIP does)."""
    if embed_dim % 6:
        raise ValueError(f"3D sin-cos embedding needs a width divisible by 6, got {embed_dim}")
    d, h, w = (int(s) for s in grid_size)
    grid_d, grid_h, grid_w = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    third = embed_dim // 3
    emb = np.concatenate([sincos_1d(third, grid_w), sincos_1d(third, grid_h), sincos_1d(third, grid_d)], axis=1)
    return torch.from_numpy(emb).float().reshape(1, d, h, w, embed_dim)


def sequential_sincos(embed_dim: int, max_num_scans: int) -> torch.Tensor:
    """[1, max_num_scans, embed_dim]: the scan-index embedding added to every token of a scan."""
    return torch.from_numpy(sincos_1d(embed_dim, np.arange(max_num_scans))).float()[None]


def resample_spatial(posemb: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of a [1, D, H, W, C] embedding to another token grid (e.g. 144 slices at test time)."""
    grid_size = tuple(int(s) for s in grid_size)
    if tuple(posemb.shape[1:4]) == grid_size:
        return posemb
    out = F.interpolate(posemb.float().permute(0, 4, 1, 2, 3), size=grid_size, mode="trilinear")
    return out.permute(0, 2, 3, 4, 1)


def resample_sequential(posemb: torch.Tensor, num_scans: int, training: bool) -> torch.Tensor:
    """Scan-index embeddings for `num_scans` scans.

    Training draws random scan positions (augmentation, as the reference does); evaluation always takes the
    first `num_scans` positions so that a study's output does not depend on the batch it is in. Studies with
    more scans than the table holds get a linear interpolation.
    """
    available = posemb.shape[1]
    if num_scans > available:
        return F.interpolate(posemb.float().permute(0, 2, 1), size=num_scans, mode="linear").permute(0, 2, 1)
    if training:
        index = torch.randperm(available, device=posemb.device)[:num_scans]
    else:
        index = torch.arange(num_scans, device=posemb.device)
    return posemb[:, index]
