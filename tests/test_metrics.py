"""Ranking metrics on cases small enough to work out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vidattn.metrics import (
    average_precision,
    mean_ap,
    mean_class_accuracy,
    per_class_ap,
    topk_accuracy,
)


def test_average_precision_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # hits at ranks 1 and 3: precisions 1/1 and 2/3
    assert average_precision(scores, np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    # hits at ranks 2 and 4: 1/2 and 2/4
    assert average_precision(scores, np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    # the order of the input does not matter, only the ranking by score
    assert average_precision(scores[::-1], np.array([0, 1, 0, 1])) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    # one positive ranked last of 5: 1/5
    assert average_precision(np.arange(5.0, 0, -1), [0, 0, 0, 0, 1]) == pytest.approx(0.2)


def test_average_precision_perfect_and_worst():
    rng = np.random.default_rng(0)
    scores = rng.random(50)
    positives = scores > 0.7
    assert average_precision(scores, positives) == pytest.approx(1.0)
    assert average_precision(-scores, positives) < 0.5
    assert average_precision(scores, np.ones(50, bool)) == pytest.approx(1.0)


def test_average_precision_ties_keep_input_order():
    # equal scores: the stable sort keeps the first-listed item first
    assert average_precision(np.zeros(3), [1, 0, 0]) == pytest.approx(1.0)
    assert average_precision(np.zeros(3), [0, 0, 1]) == pytest.approx(1 / 3)


def test_average_precision_nan_without_positives():
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_mean_ap_ignores_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.4], [0.7, 0.3, 0.3], [0.6, 0.4, 0.2]])
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    ap = per_class_ap(scores, targets)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(ap[1])
    assert ap[2] == pytest.approx(0.5)  # positives at ranks 2 and 4
    assert mean_ap(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert math.isnan(mean_ap(scores, np.zeros_like(targets)))


def test_topk_accuracy():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 0, 2])
    assert topk_accuracy(scores, labels, k=1) == pytest.approx(0.25)
    assert topk_accuracy(scores, labels, k=2) == pytest.approx(0.5)  # rows 0 and 1
    assert topk_accuracy(scores, labels, k=3) == pytest.approx(1.0)


def test_mean_class_accuracy_weights_classes_equally():
    # class 0: 3 of 4 right; class 1: 0 of 1 right -> mean (0.75 + 0) / 2, not 3/5
    scores = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 0]], float)
    labels = np.array([0, 0, 0, 0, 1])
    assert mean_class_accuracy(scores, labels) == pytest.approx(0.375)
    assert topk_accuracy(scores, labels) == pytest.approx(0.6)
    # classes absent from labels are not counted
    assert mean_class_accuracy(np.array([[0, 0, 1.0]]), np.array([2])) == pytest.approx(1.0)
