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


def test_label_positives_spread_the_target_over_same_label_pairs():
    """UniCL: row i's target is uniform over the texts of its label (itself included); unlabelled rows (-1) keep
    the matching pair only. Checked against a brute-force sum over rows."""
    torch.manual_seed(0)
    img = F.normalize(torch.randn(5, 8), dim=-1)
    txt = F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(7.0)
    labels = torch.tensor([0, 1, 0, -1, 0])
    total = 0.0
    for logits in (scale * img @ txt.T, scale * txt @ img.T):
        logp = torch.log_softmax(logits, dim=1)
        for i in range(5):
            pos = [j for j in range(5) if j == i or (labels[i] >= 0 and labels[j] == labels[i])]
            total = total - sum(logp[i, j] for j in pos) / len(pos) / 5
    torch.testing.assert_close(ClipLoss()(img, txt, scale, labels=labels), total / 2)
    # all labels different: plain CLIP
    torch.testing.assert_close(ClipLoss()(img, txt, scale, labels=torch.arange(5)), ClipLoss()(img, txt, scale))
    # SigLIP: same-label pairs get +1
    bias = torch.tensor(-2.0)
    logits = scale * img @ txt.T + bias
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) | torch.eye(5, dtype=torch.bool)
    expected = -F.logsigmoid(torch.where(same, logits, -logits)).sum() / 5
    torch.testing.assert_close(SigLipLoss()(img, txt, scale, bias, labels=labels), expected)
