"""Evaluation metrics against brute force: AUC by counting pairs (ties = 1/2), balanced accuracy, F1, labels."""
import itertools

import numpy as np
import pytest

from HLIPCore.training.metrics import (average_ranks, balanced_accuracy, binary_auc, macro_auc_ovr, macro_f1,
                                       multiclass_metrics, multilabel_metrics)


def pair_count_auc(positive, scores):
    pos = [s for p, s in zip(positive, scores) if p]
    neg = [s for p, s in zip(positive, scores) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auc_equals_pair_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    positive = rng.random(n) < 0.4
    positive[0], positive[1] = True, False
    scores = rng.integers(0, 5, n) / 4.0  # few distinct values: many ties
    assert binary_auc(positive, scores) == pytest.approx(pair_count_auc(positive, scores), abs=1e-12)


def test_auc_edge_cases():
    assert binary_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert binary_auc([1, 1, 0, 0], [0.1, 0.2, 0.9, 0.8]) == 0.0
    assert binary_auc([1, 0], [0.5, 0.5]) == 0.5
    assert np.isnan(binary_auc([1, 1], [0.2, 0.3]))
    assert list(average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]


def test_macro_auc_skips_classes_without_positives():
    y = [0, 0, 1, 1]
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    expected = np.mean([pair_count_auc(np.array(y) == c, probs[:, c]) for c in (0, 1)])
    assert macro_auc_ovr(y, probs) == pytest.approx(expected)


def brute_balanced_accuracy(y, p):
    classes = sorted(set(y))
    return np.mean([sum(1 for a, b in zip(y, p) if a == c and b == c) / sum(1 for a in y if a == c)
                    for c in classes])


def brute_macro_f1(y, p):
    scores = []
    for c in sorted(set(y) | set(p)):
        tp = sum(a == c and b == c for a, b in zip(y, p))
        precision = tp / max(1, sum(b == c for b in p))
        recall = tp / max(1, sum(a == c for a in y))
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return np.mean(scores)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_and_f1_against_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    y = list(rng.integers(0, 4, 30))
    p = list(rng.integers(0, 5, 30))  # class 4 only ever predicted
    assert balanced_accuracy(y, p) == pytest.approx(brute_balanced_accuracy(y, p))
    assert macro_f1(y, p) == pytest.approx(brute_macro_f1(y, p))


def test_multiclass_and_multilabel_summaries():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    m = multiclass_metrics([0, 1, 2, 1], probs)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3) and m["n"] == 4
    targets = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=bool)
    scores = np.array([[0.9, 0.2], [0.1, 0.6], [0.7, 0.8], [0.4, 0.4]])
    ml = multilabel_metrics(targets, scores)
    assert ml["auc"] == pytest.approx(np.mean([1.0, pair_count_auc(targets[:, 1], scores[:, 1])]))
    assert ml["f1"] == pytest.approx(np.mean([1.0, 0.5]))  # class 1: tp 1, fp 1, fn 1


def test_study_targets_follow_labels_mapping_and_names():
    from HLIPCore.prompts import load_prompt_set
    from HLIPCore.training.dataset import ManifestEntry
    from HLIPCore.training.evaluate import study_target
    ps = load_prompt_set("pub_brain_5")
    disease, tumor = ps.task("disease"), ps.task("tumor")
    glioma = ManifestEntry([], label="glioma")
    assert study_target(glioma, disease) == 2 and study_target(glioma, tumor) == 0
    assert study_target(ManifestEntry([], label="normal"), tumor) is None  # not a tumour: not in the task
    assert study_target(ManifestEntry([], label="gbm"), disease, {"disease": {"gbm": "Glioma"}}) == 2
    assert study_target(ManifestEntry([], label="x", labels={"disease": "Stroke"}), disease) == 1
    rad = load_prompt_set("rad_chestct")
    task = rad.tasks[0]
    first = task.classes[0].name
    assert study_target(ManifestEntry([], labels={task.name: [first]}), task) == {0}
    assert study_target(ManifestEntry([], label="healthy"), task) == set()  # multilabel: all negative
