"""The one metrics module: cases worked out by hand, and scikit-learn as the reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from vidattn.metrics import (
    auroc,
    average_precision,
    box_iou,
    frame_map,
    mean_ap,
    mean_class_accuracy,
    per_class_ap,
    refava_metrics,
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


def test_average_precision_ties_are_one_threshold():
    # equal scores are one operating point: the row order does not matter
    assert average_precision(np.zeros(3), [1, 0, 0]) == pytest.approx(1 / 3)
    assert average_precision(np.zeros(3), [0, 0, 1]) == pytest.approx(1 / 3)
    assert average_precision([0.9, 0.5, 0.5], [0, 1, 0]) == pytest.approx(1 / 3)


def test_average_precision_and_auroc_match_scikit_learn_with_ties():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is in the test extra")
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 80))
        levels = int(rng.integers(1, 6)) if trial % 2 else 10**6  # many ties, or almost none
        s = rng.integers(0, levels, n) / levels
        y = rng.random(n) < rng.uniform(0.05, 0.9)
        if not y.any():
            y[0] = True
        assert abs(average_precision(s, y) - sk.average_precision_score(y, s)) < 1e-9
        if not y.all():
            assert abs(auroc(s, y) - sk.roc_auc_score(y, s)) < 1e-9


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


def test_auroc_brute_force_and_order_free_ap():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, 40) / 4  # many ties
        y = rng.random(40) < 0.3
        pairs = s[y][:, None] - s[~y][None]
        brute = ((pairs > 0) + 0.5 * (pairs == 0)).mean()
        assert auroc(s, y) == pytest.approx(brute)
        # order-free under ties: reversing the rows changes nothing
        assert average_precision(s, y) == pytest.approx(average_precision(s[::-1], y[::-1]))
        u = rng.random(40)  # no ties: the mean precision at the rank of each positive
        hits = y[np.argsort(-u)]
        at_hits = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        assert average_precision(u, y) == pytest.approx(at_hits.mean())
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert average_precision([0.5, 0.5, 0.5], [True, False, False]) == pytest.approx(1 / 3)
    assert np.isnan(auroc([0.1, 0.2], [True, True]))


def test_refava_metrics():
    gt = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.2, 0.9, 0.1], [0.1, 0.2, 0.4]])
    perfect = refava_metrics(scores, targets, gt, gt)
    assert perfect == {"mIoU": 1.0, "mAP": 1.0, "AUROC": 1.0, "mAP_gated": 1.0,
                       "AUROC_gated": 1.0, "n_classes": 2}
    # row 1's box misses (IoU 0).  mAP and AUROC are on the raw scores (the paper's I3D
    # baseline has mIoU 0 and mAP 44), so they stay 1; the gated figures zero row 1's
    # scores, below every other row's.  class 0: positives rows 0, 1; ranks .9 (+), .2, .1,
    # 0 (+) -> AP (1 + 2/4) / 2 = .75, AUROC (2 + 0) / 4 = .5.  class 1: the same.
    pred = gt.copy()
    pred[1] = [0, 0, 0.4, 0.4]
    res = refava_metrics(scores, targets, pred, gt)
    assert res["mIoU"] == pytest.approx(0.75)
    assert res["mAP"] == 1.0 and res["AUROC"] == 1.0
    assert res["mAP_gated"] == pytest.approx(0.75) and res["AUROC_gated"] == pytest.approx(0.5)
    # weighting by positives: class 1 with 3 positives counts three times class 0's one
    t2 = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    s2 = np.array([[0.9, 0.1, 0], [0.9, 0.9, 0], [0, 0.8, 0], [0, 0.7, 0]])
    ap0, ap1 = average_precision(s2[:, 0], t2[:, 0]), average_precision(s2[:, 1], t2[:, 1])
    assert ap0 == pytest.approx(0.5) and ap1 == pytest.approx((1 + 1 + 3 / 4) / 3)
    res2 = refava_metrics(s2, t2, gt, gt)
    assert res2["mAP"] == pytest.approx((ap0 + 3 * ap1) / 4) and res2["n_classes"] == 2
    # an IoU of exactly the threshold keeps the scores
    half = np.array([[0, 0, 1, 1]] * 4, float)
    half[:, 2] = 0.5
    res3 = refava_metrics(scores, targets, half, np.array([[0, 0, 1, 1]] * 4))
    assert res3["mAP_gated"] == 1.0
    with pytest.raises(ValueError, match="probabilities"):
        refava_metrics(scores - 1, targets, gt, gt)
    with pytest.raises(ValueError, match="multi-hot"):
        refava_metrics(scores, targets * 2, gt, gt)
    with pytest.raises(ValueError, match="need scores and targets"):
        refava_metrics(scores, targets[:3], gt, gt)


def test_box_iou_paired_and_matrix():
    a = np.array([[0, 0, 0.5, 1], [0, 0, 1, 1]])
    b = np.array([[0.25, 0, 0.75, 1], [0, 0, 1, 1]])
    assert box_iou(a, b).tolist() == [pytest.approx(1 / 3), 1.0]
    m = box_iou(a[:1, None], np.array([[0.25, 0, 0.75, 1], [0.6, 0, 1, 1]])[None])
    assert m.shape == (1, 2) and m.tolist() == [[pytest.approx(1 / 3), 0.0]]
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]]).tolist() == [0.0]  # empty union


def boxes_df(rows, score: bool) -> pd.DataFrame:
    cols = ["video", "timestamp", "x1", "y1", "x2", "y2", "label"] + (["score"] if score else [])
    return pd.DataFrame(rows, columns=cols)


GT = boxes_df([("v", 1, 0.0, 0.0, 0.5, 0.5, 0), ("v", 1, 0.5, 0.5, 1.0, 1.0, 0),
               ("v", 2, 0.0, 0.0, 1.0, 1.0, 0), ("v", 2, 0.0, 0.0, 1.0, 1.0, 1)], False)


def test_frame_map_duplicates_and_interpolation():
    # class 0 has 3 boxes; ranked TP, duplicate (FP), TP, TP -> precision 1, .5, .67, .75 at
    # recall 1/3, 1/3, 2/3, 1.  All-point interpolation: (1 + .75 + .75) / 3, where the
    # non-interpolated mean of precisions at hits would give (1 + .67 + .75) / 3.
    pred = boxes_df([("v", 1, 0.0, 0.0, 0.5, 0.5, 0, 0.9), ("v", 1, 0.0, 0.0, 0.5, 0.5, 0, 0.8),
                     ("v", 1, 0.5, 0.5, 1.0, 1.0, 0, 0.7), ("v", 2, 0.0, 0.0, 1.0, 1.0, 0, 0.6)],
                    True)
    res = frame_map(pred, GT)
    assert res["per_class"][0] == pytest.approx(2.5 / 3)
    assert res["per_class"][1] == 0.0 and res["mAP"] == pytest.approx(2.5 / 6)
    # the top detection moved to a frame without ground truth is a FP ranked first: the
    # rest are TPs (the duplicate now finds its box free), precision .75 at every recall
    moved = pred.assign(timestamp=[3, 1, 1, 2])
    assert frame_map(moved, GT)["per_class"][0] == pytest.approx(0.75)
    # unless that keyframe is excluded: then it is not evaluated at all
    assert frame_map(moved, GT, excluded=[("v", 3)])["per_class"][0] == 1.0
    # excluding frame 2 drops class 1 entirely; class 0 keeps TP, duplicate, TP
    assert frame_map(pred, GT, excluded={("v", 2)})["per_class"] == {0: pytest.approx(5 / 6)}


def test_frame_map_iou_threshold():
    gt = boxes_df([("v", 1, 0.0, 0.0, 1.0, 1.0, 0)], False)
    for width, ap in ((0.49, 0.0), (0.51, 1.0)):  # IoU with the full frame = width
        pred = boxes_df([("v", 1, 0.0, 0.0, width, 1.0, 0, 1.0)], True)
        assert frame_map(pred, gt)["mAP"] == ap
    with pytest.raises(ValueError, match="pred lacks columns"):
        frame_map(gt, gt)
