"""Stem pretraining: the conv stem's first stage learns where lesion cores are before the joint training starts.

Why (README, "Training and the demo model", run 23): a 1 x 1 head on the stem layer the refined maps read finds
no metastasis core in the bundled model, not even on its training studies (a probe trained on its frozen features
put its hottest cell in a core for 1 of 20 held-out contrast T1s). The same layers trained alone on the stem loss,
on every sequence of the training studies, find 16 of 20. Jointly, CLIP and the token losses shape those 32
channels first (FLAIR oedema tells a metastasis apart well enough) and the rings are never learned. So a short
phase trains only the stem up to that layer, with the training-only cell head, on random single scans, each
scan's lesion weighing the same (`cell_core_loss(per_scan=True)`), before the first joint step.

It reads the study cache and the cell targets of the joint training (lesion cells of series that do not show the
finding get no target), draws scans from its own seeded generator and leaves the global RNG alone, so runs stay
reproducible and a resumed run (which starts from a checkpoint taken after this phase) never repeats it.
"""
import logging

import torch

from ..attention_maps import refine_layer
from ..losses import cell_core_loss
from ..model.precision import autocast
from .dataset import augment_study

log = logging.getLogger("HLIPCore.training")


def stem_layers(stem) -> torch.nn.Sequential:
    """The stem's modules up to and including the layer the refined maps read (shared, not copied)."""
    convs = list(stem.convs)
    return torch.nn.Sequential(*convs[:convs.index(refine_layer(stem)) + 1])


def pretrain_stem(stem, cell_head, dataset, steps: int, lr: float, batch: int, seed: int, device,
                  precision: str = "fp32", scale: float = 0.0, shift: float = 0.0, progress: bool = False) -> list:
    """Train `stem` (its first stage) and `cell_head` for `steps` steps of `batch` random scans with AdamW and a
    one-cycle schedule; returns the loss of every step. `dataset` is the training's TrainDataset with cell
    targets enabled; `scale`/`shift` the training's intensity augmentation."""
    from tqdm import tqdm
    layers = stem_layers(stem)
    params = list(layers.parameters()) + list(cell_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    counts = [dataset.num_scans(i) for i in range(len(dataset))]
    pairs = [(i, j) for i, n in enumerate(counts) for j in range(n)]
    layers.train()
    losses = []
    for _ in tqdm(range(steps), desc="stem pretraining", disable=not progress):
        picks = [pairs[int(k)] for k in torch.randint(len(pairs), (batch,), generator=gen)]
        images, targets = [], []
        for study, scan in picks:
            entry = dataset.entries[study]
            order = torch.tensor([scan])
            images.append(dataset.cache.load(entry)[order])
            targets.append(dataset.cell_item(entry, order, 1))
        # the training's per-scan intensity augmentation, the scans kept in their order
        x = augment_study(torch.cat(images), batch, gen, scale, shift, shuffle=False).to(device)
        y = torch.cat(targets).to(device)
        with autocast(device, precision):
            logits = cell_head(layers(x))[:, 0]
        d, h, w = y.shape[-3:]
        loss = cell_core_loss(logits.float()[:, None, :d, :h, :w], y[:, None], per_scan=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    log.info("stem pretraining: %d steps of %d scans, loss %.4f -> %.4f (mean of the first and last 10 steps)",
             steps, batch, sum(losses[:10]) / len(losses[:10]), sum(losses[-10:]) / len(losses[-10:]))
    return losses
