"""CLIP and SigLIP losses against brute-force formulas written element by element."""
import math

import torch
import torch.nn.functional as F

from HLIPCore.losses import ClipLoss, SigLipLoss


def _features(b=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(b, d, generator=g), dim=-1), F.normalize(torch.randn(b, d, generator=g), dim=-1))


def test_clip_loss_equals_brute_force():
    img, txt = _features()
    scale = torch.tensor(14.3)
    b = img.shape[0]
    total = 0.0
    for i in range(b):  # image -> text and text -> image cross-entropy, positives on the diagonal
        row = [float(scale * img[i] @ txt[j]) for j in range(b)]
        col = [float(scale * txt[i] @ img[j]) for j in range(b)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    expected = total / (2 * b)
    assert abs(ClipLoss()(img, txt, scale).item() - expected) < 1e-5


def test_siglip_loss_equals_brute_force():
    img, txt = _features(seed=1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    b = img.shape[0]
    total = 0.0
    for i in range(b):
        for j in range(b):
            z = 1.0 if i == j else -1.0
            logit = float(scale * img[i] @ txt[j] + bias)
            total += math.log(1 + math.exp(-z * logit))
    expected = total / b
    assert abs(SigLipLoss()(img, txt, scale, bias).item() - expected) < 1e-4


def test_clip_loss_is_lower_for_matching_pairs():
    img, _ = _features(seed=2)
    scale = torch.tensor(20.0)
    assert ClipLoss()(img, img, scale) < ClipLoss()(img, img.roll(1, dims=0), scale)
