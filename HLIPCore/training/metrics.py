"""Classification metrics for zero-shot evaluation, without scikit-learn.

AUC is the Mann-Whitney statistic from average ranks (ties count one half), equal to the probability that a random
positive scores above a random negative. Conventions follow scikit-learn's defaults: balanced accuracy averages
recall over the classes present in the truth; macro F1 averages over classes present in truth or prediction, an
undefined F1 (no true, no predicted) counting 0; an AUC with no positive or no negative is NaN and left out of the
macro average.
"""
import math
from typing import Dict, Sequence

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_vals[end + 1] == sorted_vals[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def binary_auc(positive: Sequence[bool], scores: Sequence[float]) -> float:
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def macro_auc_ovr(y_true: Sequence[int], probs: np.ndarray) -> float:
    """One-vs-rest AUC per class (classes present and absent in y_true), averaged."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    return _nanmean([binary_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])])


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.unique(y_true)
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def f1_per_class(y_true: Sequence[int], y_pred: Sequence[int], cls: int) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = int(np.sum((y_pred == cls) & (y_true == cls)))
    fp = int(np.sum((y_pred == cls) & (y_true != cls)))
    fn = int(np.sum((y_pred != cls) & (y_true == cls)))
    return 2.0 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    classes = np.union1d(np.asarray(y_true), np.asarray(y_pred))
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([f1_per_class(y_true, y_pred, c) for c in classes]))


def multiclass_metrics(y_true: Sequence[int], probs: np.ndarray) -> Dict[str, float]:
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    return {"auc": macro_auc_ovr(y_true, probs), "balanced_accuracy": balanced_accuracy(y_true, y_pred),
            "f1": macro_f1(y_true, y_pred), "n": int(len(y_true))}


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> Dict[str, float]:
    """targets/probs [S, C]: per class AUC, balanced accuracy and F1 at `threshold`, macro-averaged."""
    targets, probs = np.asarray(targets, dtype=bool), np.asarray(probs, dtype=np.float64)
    preds = probs >= threshold
    aucs, baccs, f1s = [], [], []
    for c in range(targets.shape[1]):
        aucs.append(binary_auc(targets[:, c], probs[:, c]))
        baccs.append(balanced_accuracy(targets[:, c].astype(int), preds[:, c].astype(int)))
        f1s.append(f1_per_class(targets[:, c].astype(int), preds[:, c].astype(int), 1))
    return {"auc": _nanmean(aucs), "balanced_accuracy": _nanmean(baccs), "f1": float(np.mean(f1s)) if f1s else
            float("nan"), "n": int(targets.shape[0])}
