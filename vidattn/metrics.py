"""Every metric vidattn reports, defined once (numpy only; scikit-learn is not needed).

- :func:`average_precision`: non-interpolated AP with tied scores taken as one threshold,
  scikit-learn's ``average_precision_score`` (asserted to 1e-9 in the tests), so a score
  does not depend on row order;
- :func:`auroc`: ROC AUC by the rank-sum formula, a tie counting one half;
- :func:`box_iou`: IoU of [x1, y1, x2, y2] boxes, broadcast over leading dimensions;
- protocol summaries built from those: :func:`mean_ap` (ActX/W3 tables),
  :func:`refava_metrics` (RefAtomNet), :func:`frame_map` (AVA's frame-mAP, whose official
  evaluation interpolates AP the PASCAL VOC way: :func:`voc_ap`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


def average_precision(scores, positives) -> float:
    """AP of one class: sum over distinct score thresholds of (recall step) x precision.

    scores (N,) float, positives (N,) bool.  Without ties this is the mean precision at the
    rank of each positive.  NaN when the class has no positive.
    """
    pos = np.asarray(positives, bool)
    if not pos.any():
        return float("nan")
    x = np.asarray(scores, np.float64)
    order = np.argsort(-x, kind="stable")
    s, p = x[order], pos[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each run of equal scores
    tp = np.cumsum(p)[last]
    precision = tp / (np.flatnonzero(last) + 1)
    return float(np.sum(np.diff(np.r_[0.0, tp / pos.sum()]) * precision))


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """scores (N, K), targets (N, K) multi-hot -> (K,) AP, NaN for classes without positives."""
    return np.array([average_precision(scores[:, c], targets[:, c])
                     for c in range(scores.shape[1])])


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean AP over the classes that have at least one positive."""
    ap = per_class_ap(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def auroc(scores, positives) -> float:
    """ROC AUC = (sum of positive ranks - P (P + 1) / 2) / (P N), average ranks for ties:
    the chance that a random positive outscores a random negative.  NaN without both."""
    x, pos = np.asarray(scores, np.float64), np.asarray(positives, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(x)])
    ranks = np.empty(len(x))
    ranks[order] = (first + (counts + 1) / 2)[np.cumsum(starts) - 1]  # 1-based mean rank
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def box_iou(a, b) -> np.ndarray:
    """IoU of boxes [x1, y1, x2, y2] (..., 4), broadcast: paired rows give (N,), and
    ``box_iou(a[:, None], b[None])`` the (n, m) matrix.  0 where the union is empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label (N,) is among the k highest scores."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the per-class top-1 accuracy (ActX Table 3's mAcc)."""
    pred = scores.argmax(1)
    return float(np.mean([float((pred[labels == c] == c).mean()) for c in np.unique(labels)]))


def refava_metrics(scores: np.ndarray, targets: np.ndarray, pred_boxes: np.ndarray,
                   gt_boxes: np.ndarray, iou: float = 0.5) -> dict:
    """RefAVA's metrics as fractions in [0, 1] (the paper prints percentages).

    scores (N, K) class probabilities; targets (N, K) multi-hot; boxes (N, 4).  mIoU: mean
    IoU of each predicted box with its ground truth.  mAP: per-class AP weighted by the
    class's positive count; AUROC: macro mean over classes with a positive and a negative.
    ``mAP_gated``/``AUROC_gated``: the same with a row's scores zeroed where its box has
    IoU < ``iou`` (recognition counted only for the right person).
    """
    s, t = np.asarray(scores, np.float64), np.asarray(targets)
    pb, gb = np.asarray(pred_boxes, np.float64), np.asarray(gt_boxes, np.float64)
    if s.ndim != 2 or t.shape != s.shape or pb.shape != gb.shape or pb.shape != (len(s), 4):
        raise ValueError(f"refava_metrics: need scores and targets (N, K), boxes (N, 4); got "
                         f"{s.shape}, {t.shape}, {pb.shape}, {gb.shape}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("refava_metrics: targets must be multi-hot 0/1")
    if not (np.isfinite(s).all() and s.min(initial=0) >= 0 and s.max(initial=0) <= 1):
        raise ValueError("refava_metrics: scores must be probabilities in [0, 1]")
    t = t.astype(bool)
    ious = box_iou(pb, gb)
    n_pos = t.sum(0)
    has = np.flatnonzero(n_pos)

    def ranking(x: np.ndarray) -> tuple[float, float]:
        ap = np.array([average_precision(x[:, c], t[:, c]) for c in has])
        auc = np.array([auroc(x[:, c], t[:, c]) for c in has])
        auc = auc[np.isfinite(auc)]
        return (float(np.sum(ap * n_pos[has]) / n_pos[has].sum()) if len(has) else float("nan"),
                float(auc.mean()) if len(auc) else float("nan"))

    m_ap, m_auc = ranking(s)
    g_ap, g_auc = ranking(np.where((ious >= iou)[:, None], s, 0.0))
    return {"mIoU": float(ious.mean()) if len(ious) else float("nan"), "mAP": m_ap,
            "AUROC": m_auc, "mAP_gated": g_ap, "AUROC_gated": g_auc, "n_classes": int(len(has))}


def voc_ap(tp: np.ndarray, n_gt: int) -> float:
    """AP from TP flags in descending score order: PASCAL VOC 2010+ all-point interpolation
    (precision made non-increasing, area under the recall steps), as AVA's evaluation."""
    if n_gt == 0:
        return float("nan")
    hits = np.cumsum(np.asarray(tp, bool))
    recall = np.concatenate([[0.0], hits / n_gt])
    precision = hits / np.arange(1, len(tp) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope))


FRAME_COLUMNS = ("video", "timestamp", "x1", "y1", "x2", "y2", "label")


def _frame_keyed(df: pd.DataFrame, what: str, cols: tuple[str, ...],
                 excluded: set[tuple[str, int]]) -> pd.DataFrame:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"frame_map: {what} lacks columns {missing}")
    df = df.assign(video=df.video.astype(str), timestamp=df.timestamp.astype(np.int64),
                   label=df.label.astype(np.int64))
    return df[np.array([(v, t) not in excluded for v, t in zip(df.video, df.timestamp)],
                       bool)] if excluded else df


def frame_map(pred: pd.DataFrame, gt: pd.DataFrame, iou: float = 0.5,
              excluded: Iterable[tuple[str, int]] | None = None) -> dict:
    """AVA frame-mAP: ``{"mAP", "per_class": {label: AP}, "n_classes"}``.

    pred: video, timestamp, x1, y1, x2, y2, label, score; gt: the same without score.
    AVA's official (PASCAL) rules: per class, detections in descending score order each take
    the ground-truth box of their class and frame they overlap most: a true positive when
    that IoU >= ``iou`` and the box is not matched yet, else a false positive.  AP:
    :func:`voc_ap`; the mean runs over classes with a ground-truth box (no detection: AP 0).
    Keyframes in ``excluded`` are dropped from both tables.
    """
    skip = {(str(v), int(t)) for v, t in (excluded or ())}
    gt = _frame_keyed(gt, "gt", FRAME_COLUMNS, skip)
    pred = _frame_keyed(pred, "pred", FRAME_COLUMNS + ("score",), skip)
    corners = list(FRAME_COLUMNS[2:6])
    gt_boxes = {k: g[corners].to_numpy()
                for k, g in gt.groupby(["label", "video", "timestamp"], sort=False)}
    n_gt = gt.label.value_counts().to_dict()
    ap: dict[int, float] = {}
    for c in sorted(n_gt):
        scores, flags = [], []
        for (video, ts), d in pred[pred.label == c].groupby(["video", "timestamp"], sort=False):
            order = np.argsort(-d.score.to_numpy(np.float64), kind="stable")
            tp = np.zeros(len(d), bool)
            g = gt_boxes.get((c, video, ts))
            if g is not None:
                ious = box_iou(d[corners].to_numpy()[order][:, None], g[None])
                best, taken = ious.argmax(1), np.zeros(len(g), bool)
                for i, j in enumerate(best):
                    if ious[i, j] >= iou and not taken[j]:
                        tp[i] = taken[j] = True
            scores.append(d.score.to_numpy(np.float64)[order])
            flags.append(tp)
        order = np.argsort(-np.concatenate(scores or [[]]), kind="stable")
        ap[int(c)] = voc_ap(np.concatenate(flags or [[]])[order].astype(bool), int(n_gt[c]))
    m = float(np.mean(list(ap.values()))) if ap else float("nan")
    return {"mAP": m, "per_class": ap, "n_classes": len(ap)}
