"""Where the model looked: per-class relevance maps on the token grid of every scan of a study.

`gradcam` (the reference's `--interpret`): the class-token row of mean_heads(clamp(grad * attn, 0)) of the last
study-level block, where grad is the gradient of the class score. Only the blocks from that one on are run
with autograd, so a map costs a small backward pass.

`rollout`: class-agnostic attention rollout, r <- r (0.5 I + 0.5 mean_heads(A)) from the last block to the
first, following the class token through the hierarchy (its copies in windows are averaged when windows merge,
so relevance splits evenly among them going backwards). No backward pass, but every block computes its
attention explicitly.

`refined` (models with a convolutional stem): the gradcam map, a value per token (for the demo model a token is
40 x 26 x 26 mm, larger than a metastasis), multiplied by a LayerCAM map (Jiang et al. 2021) of the conv stem at
a finer stride: sum over channels of relu(d score / d a) * a, for the activations a of `refine_layer(stem)`.
As in Guided Grad-CAM, the coarse map says which token explains the class and the fine map which voxels inside
it; both come from one backward pass, now through the whole trunk.

Smoothing (`smooth`, on by default for `refined` only): a Gaussian of 8 mm on the model grid. The refined map is
the product of two noisy factors at a 10 x 6.4 x 6.4 mm cell size, and its single hottest voxel, which the
pointing game and the overview's peak take, often sits on one cell at the rim of the abnormality; smoothed, the
peak moves to where the evidence is dense. Held-out phantoms (160 lesion studies), peak in the lesion core:
run 15 0.650 -> 0.688, run 22 0.537 -> 0.650, run 23 (today's hlip-demo) 0.769 -> 0.844 (README, "Training and
the demo model"). The coarse
`gradcam` and `rollout` maps are left as the reference computes them.

Maps come back as [N_scans, d, h, w] on the token grid (or the stem layer's finer grid); `upsample_to_grid`
brings them to the model input grid, from where each scan's preprocessing record maps them onto the original
voxels.
"""
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("auto", "gradcam", "refined", "rollout")  # auto: refined for a conv-stem model, else gradcam
SMOOTHING_MM = {"refined": 8.0}  # default Gaussian sigma per method (module docstring); others: none


def has_conv_stem(model) -> bool:
    return hasattr(model.visual.trunk.patch_embed, "convs")


def resolve_method(model, method: str) -> str:
    """The map method a request means for this model ('auto' -> the finest it supports)."""
    if method not in METHODS:
        raise ValueError(f"attention method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "auto":
        return "refined" if has_conv_stem(model) else "gradcam"
    if method == "refined" and not has_conv_stem(model):
        raise ValueError("attention method 'refined' needs a model with a convolutional stem; this one embeds "
                         "patches linearly (use gradcam)")
    return method


def _finest_stage_output(stem):
    """(module, channels, stride in input voxels) of the last activation (ReLU) of the stem's first stage, before
    any further striding. When the first stage holds stride-1 convolutions after its patchify layer, this is the
    last of them, whose cells have seen their neighbours: a lone 2 x 4 x 4 patchify cell cannot tell an enhancing
    ring from scalp fat (README, "Training and the demo model")."""
    chosen, channels, stride = None, None, (1, 1, 1)
    for module in stem.convs:
        if isinstance(module, torch.nn.Conv3d):
            if channels is not None and tuple(module.stride) != (1, 1, 1):
                break  # the grid coarsens from here on
            channels, stride = module.out_channels, tuple(a * b for a, b in zip(stride, module.stride))
        elif isinstance(module, torch.nn.ReLU):
            chosen = (module, channels, stride)
    return chosen


def refine_layer(stem):
    """The layer whose activations the refined map reads: the finest grid (1/4 of the token size per axis in the
    demo model), see `_finest_stage_output`."""
    return _finest_stage_output(stem)[0]


def refine_geometry(stem) -> Tuple[int, Tuple[int, int, int]]:
    """(channels, stride in input voxels) of `refine_layer(stem)`'s output: its cells, which the stem loss of
    training labels."""
    return _finest_stage_output(stem)[1:]


def explained_block(trunk) -> int:
    """The last study-level block (the reference's choice), else the last block."""
    study = [i for i, level in enumerate(trunk.attn_layout) if level == "study"]
    return study[-1] if study else len(trunk.blocks) - 1


def token_grid(trunk, x: torch.Tensor) -> Tuple[int, Tuple[int, int, int]]:
    """(num_scans, (D', H', W')) of a study tensor [1, N, 1, D, H, W]."""
    pd, ph, pw = trunk.patch_embed.patch_size
    d, h, w = x.shape[-3:]
    return x.shape[1], (d // pd, h // ph, w // pw)


def _class_token_rows(cam: torch.Tensor, num_scans: int, grid) -> torch.Tensor:
    """[W, 1+L, 1+L] per-window maps -> class-token row without prefix, in token order -> [N, D', H', W']."""
    return cam[:, 0, 1:].reshape(num_scans, *grid).float()


def gradcam(model, classifier, study: torch.Tensor, choose_targets: Callable[[torch.Tensor], List[Tuple[str, str]]],
            refine: bool = False):
    """(image features [1, E] detached, {(task, class): relevance [N, D', H', W']}).

    `choose_targets(features)` names the classes to explain once the features (hence the scores) are known,
    so one forward pass serves both scoring and the maps. `refine`: the `refined` method (module docstring)."""
    trunk = model.visual.trunk
    index = explained_block(trunk)
    attn = trunk.blocks[index].attn
    num_scans, grid = token_grid(trunk, study)
    attn.record = "probs"
    fine, hook = [], None
    if refine:  # the graph must reach the stem: start it at the input, whatever the weights' requires_grad
        hook = refine_layer(trunk.patch_embed).register_forward_hook(lambda module, inp, out: fine.append(out))
        study = study.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            tokens = trunk.forward_features(study, grad_from_block=None if refine else index, class_token_only=True)
            features = model.visual.head(trunk.forward_head(tokens))
            probs = attn.attn_probs
            targets = choose_targets(features.detach())
            maps, by_signature = {}, {}
            for i, (task, cls) in enumerate(targets):
                signature = classifier.score_signature(task, cls) if hasattr(classifier, "score_signature") else i
                if signature not in by_signature:  # the same score function gives the same map: compute it once
                    score = classifier.class_score(features, task, cls).sum()
                    grads = torch.autograd.grad(score, [probs] + fine[:1], retain_graph=True)
                    cam = (grads[0].float() * probs.detach().float()).clamp(min=0).mean(dim=1)
                    relevance = _class_token_rows(cam, num_scans, grid)
                    if refine:
                        layer = (grads[1].float().clamp(min=0) * fine[0].detach().float()).sum(dim=1)
                        relevance = upsample_to_grid(relevance, layer.shape[-3:]) * layer
                    by_signature[signature] = relevance
                maps[(task, cls)] = by_signature[signature]
    finally:
        attn.record, attn.attn_probs = None, None
        if hook is not None:
            hook.remove()
    return features.detach(), maps


def _windows(level: str, num_scans: int, num_slices: int) -> int:
    return {"slice": num_scans * num_slices, "scan": num_scans, "study": 1}[level]


@torch.no_grad()
def rollout(model, study: torch.Tensor):
    """(image features [1, E], relevance [N, D', H', W']) by attention rollout through the hierarchy."""
    trunk = model.visual.trunk
    num_scans, grid = token_grid(trunk, study)
    for block in trunk.blocks:
        block.attn.record = "mean"
    try:
        features = model.visual(study)
        means = [block.attn.attn_probs for block in trunk.blocks]
    finally:
        for block in trunk.blocks:
            block.attn.record, block.attn.attn_probs = None, None
    layout = trunk.attn_layout
    windows = _windows(layout[-1], num_scans, grid[0])
    r_cls = torch.full((windows,), 1.0 / windows)  # the final merge averages the class-token copies
    r_tok = torch.zeros(num_scans * grid[0] * grid[1] * grid[2])
    for index in range(len(layout) - 1, -1, -1):
        a = means[index].float()  # [W, 1+L, 1+L]
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1])
        a = a / a.sum(dim=-1, keepdim=True)
        v = torch.cat([r_cls[:, None], r_tok.reshape(a.shape[0], -1)], dim=1)
        v = torch.bmm(v[:, None, :], a)[:, 0]
        r_cls, r_tok = v[:, 0], v[:, 1:].reshape(-1)
        if index > 0:  # undo the regroup that fed this block: its class tokens came from the previous level
            src = _windows(layout[index - 1], num_scans, grid[0])
            if src > r_cls.numel():  # forward merged src copies by averaging
                r_cls = (r_cls / (src // r_cls.numel())).repeat_interleave(src // r_cls.numel())
            elif src < r_cls.numel():  # forward copied each src token into several windows
                r_cls = r_cls.reshape(src, -1).sum(dim=1)
    return features, r_tok.reshape(num_scans, *grid)


def default_smoothing(method: str) -> float:
    return SMOOTHING_MM.get(method, 0.0)


def smooth(volume: np.ndarray, spacing_mm, sigma_mm: float) -> np.ndarray:
    """A map [D, H, W] on a grid of `spacing_mm` (d, h, w) blurred by an isotropic Gaussian of `sigma_mm`; zero
    beyond the grid, so padding does not pull the peak to the border."""
    if not sigma_mm:
        return volume
    from scipy import ndimage
    sigma = [sigma_mm / float(s) for s in spacing_mm]
    return ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), sigma, mode="constant")


def upsample_to_grid(relevance: torch.Tensor, size) -> torch.Tensor:
    """[N, D', H', W'] token-grid map -> [N, D, H, W] on the model input grid (trilinear, as the reference)."""
    return F.interpolate(relevance[:, None].float(), size=tuple(int(s) for s in size), mode="trilinear",
                         align_corners=False)[:, 0]


def normalise(maps: Dict[object, torch.Tensor]) -> Dict[object, torch.Tensor]:
    """Min-max to [0, 1] per map over the whole study, so scans of one study stay comparable."""
    out = {}
    for key, m in maps.items():
        lo, hi = m.min(), m.max()
        out[key] = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    return out
