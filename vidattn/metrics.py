"""Ranking metrics for action recognition (no sklearn dependency)."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: mean of the precision at the rank of each positive (ties by order).

    scores (N,) float, positives (N,) bool.  NaN when the class has no positive.
    """
    positives = np.asarray(positives, bool)
    if not positives.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = positives[order]
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hit.mean())


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """scores (N, K), targets (N, K) multi-hot -> (K,) AP, NaN for classes without positives."""
    k = scores.shape[1]
    return np.array([average_precision(scores[:, c], targets[:, c]) for c in range(k)])


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean AP over the classes that have at least one positive."""
    ap = per_class_ap(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label (N,) is among the k highest scores."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the per-class top-1 accuracy (ActX Table 3's mAcc)."""
    pred = scores.argmax(1)
    accs = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return float(np.mean(accs))
