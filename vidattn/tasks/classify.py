"""The classify task: a cached feature map -> class scores (ActX, W3, their baselines).

Heads take fmap (B, D, T, H, W) and return "logits" (B, K) and, for heads with attention,
one (B, T, H, W) map per name in ``map_names`` (heads/common.py).  Training crops maps in
time; evaluation scores whole maps: mAP (per-class AP, vidattn.metrics), and for
single-label datasets top-1, mean class accuracy (ActX Table 3's mAcc) and top-5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from vidattn import metrics as M
from vidattn import rows
from vidattn.data.dataset import StoreDataset, is_multilabel, labelled_ids
from vidattn.heads.common import mature_feature_loss
from vidattn.stores.schema import ARRAYS
from vidattn.tasks.classify_explain import attention_maps, draw
from vidattn.tasks.fit import Predictions, eval_batches

NAME = "classify"


def head_fields(store, stream: str) -> dict:
    return {"num_classes": len(store.classes), "multilabel": is_multilabel(store),
            "in_channels": ARRAYS[stream].channels}


def dataset(store, ids, stream: str, **kw) -> StoreDataset:
    kw.pop("min_score", None)
    return StoreDataset(store, ids=list(ids), stream=stream, task=NAME, **kw)


def _subset(out: dict, mask: torch.Tensor) -> dict:
    return {k: v[mask] for k, v in out.items()}


def loss(head, batch: dict, teacher=None, mfr_weight: float = 1.0, mfr_rms: bool = False):
    """L of one batch; rows without a conjugate get the classification loss only.

    With a ``teacher`` (a frozen run of the same head), the student's attended map also
    regresses onto the teacher's: W3's mature-feature-guided regularisation (eq. 9).
    """
    fmap, targets = batch["fmap"], batch["target"]
    out = head(fmap)
    conj, m = batch.get("conj"), batch.get("has_conj")
    if conj is not None and m.all():
        total, parts = head.loss(out, fmap, targets, conj)
    elif conj is not None and m.any():
        l1, parts = head.loss(_subset(out, m), fmap[m], targets[m], conj)
        l2, _ = head.loss(_subset(out, ~m), fmap[~m], targets[~m])
        frac = m.float().mean()
        total = frac * l1 + (1 - frac) * l2
    else:
        total, parts = head.loss(out, fmap, targets)
    if teacher is not None:
        with torch.no_grad():
            target_map = teacher(fmap)["attended"]
        l_fm = mature_feature_loss(out["attended"], target_map, rms=mfr_rms)
        total = total + mfr_weight * l_fm
        parts = {**parts, "L_fm": l_fm.item()}
    return total, parts


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Logits (B, K) -> class probabilities: sigmoid per class (multi-label) or softmax."""
    logits = logits.float()
    return logits.sigmoid() if multilabel else logits.softmax(-1)


@torch.no_grad()
def predict(head, ds: StoreDataset, device: str, workers: int = 0) -> Predictions:
    """Whole maps -> probabilities (softmax, or sigmoid for a head trained multi-label)."""
    head.eval()
    multilabel = head.cfg.multilabel
    scores = np.zeros((len(ds), len(ds.classes)), np.float32)
    for batch in eval_batches(ds, workers):
        logits = head(batch["fmap"].to(device).float())["logits"]
        scores[batch["index"].numpy()] = probabilities(logits, multilabel).cpu().numpy()
    return Predictions(list(ds.ids), scores)


def summarize_scores(scores: np.ndarray, targets: np.ndarray, classes: list[str],
                     multilabel: bool) -> dict:
    """scores (N, K), targets (N,) or (N, K) -> mAP, per-class AP and accuracies."""
    hot = targets > 0.5 if targets.ndim == 2 else np.eye(len(classes), dtype=bool)[targets]
    ap = M.per_class_ap(scores, hot)
    out = {"mAP": M.mean_ap(scores, hot),
           "per_class_AP": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, ap)},
           "n": int(len(scores))}
    if not multilabel:
        out["top1"] = M.topk_accuracy(scores, targets, 1)
        out["mAcc"] = M.mean_class_accuracy(scores, targets)
        if len(classes) > 5:  # top-5 of five classes or fewer is trivially 1
            out["top5"] = M.topk_accuracy(scores, targets, 5)
    return out


def summarize(pred: Predictions, ds: StoreDataset) -> dict:
    return summarize_scores(pred.scores, ds.targets, ds.classes, ds.multilabel)


def val_record(summary: dict) -> dict:
    return {"val_mAP": summary["mAP"]}


def selection_key(record: dict) -> tuple:
    return (record.get("val_mAP", 0.0),)


def run_fields(store, ds: StoreDataset) -> dict:
    return {}


def score_check(run) -> None:
    """Classify runs need nothing but maps: every one can be re-scored."""


def localization(head, store, ds: StoreDataset, device: str) -> dict | None:
    """Mean share of the head's first map on the ground-truth region (see localize.py)."""
    from vidattn.tasks.localize import mass_share, video_covers

    names = getattr(head, "map_names", ())
    if not names:
        return None
    covers = video_covers(store, {v: ds.shape(i) for i, v in enumerate(ds.ids)}, ds.stream)
    shares, areas = [], []
    for vid in ds.ids:
        cover = covers.get(vid)
        if cover is not None:
            maps, _ = attention_maps(head, ds.maps.read(vid), device)
            shares.append(mass_share(maps[names[0]], cover))
            areas.append(float(cover.mean()))
    if not shares:
        return None
    return {"map": names[0], "mass_share": float(np.nanmean(shares)),
            "area": float(np.mean(areas)), "n": len(shares)}


def ava_frame_map(manifest, ids: list[str], scores: np.ndarray) -> dict:
    """AVA's frame-mAP@0.5 with the ground-truth person boxes as detections (the "GT boxes"
    setting): each person row contributes its box with every class score, so the metric
    measures the action classification the heads do, localisation being given."""
    from vidattn.datasets.ava import ground_truth

    man = manifest.set_index("video_id").loc[ids].reset_index()
    detections = []
    for i, (group, extra) in enumerate(zip(man.group, man.extra)):
        e = rows.extra(extra)
        detections += [(group, e["timestamp"], *e["box"], k, float(scores[i, k]))
                       for k in range(scores.shape[1])]
    pred = pd.DataFrame(detections, columns=[*M.FRAME_COLUMNS, "score"])
    res = M.frame_map(pred, ground_truth(man))
    return {"protocol": "AVA frame-mAP@0.5, ground-truth person boxes", "frame_mAP": res["mAP"]}


def _scored(run, store, split: str, device: str, workers: int, in_memory: bool):
    ids = labelled_ids(store.manifest(), split)
    ds = dataset(store, ids, run.config["stream"], in_memory=in_memory, desc=f"read {split}")
    if len(ds) == 0:
        raise RuntimeError(f"{store.url}: no extracted action clips in split {split!r}")
    head = run.load_head(device)
    return head, ds, predict(head, ds, device, workers)


def evaluate(run, store, split: str, device: str, fuse_with=None, workers: int = 0,
             in_memory: bool = False) -> dict:
    """Scores of ``split``; with ``fuse_with`` (a second classify run, e.g. the flow
    stream), the average of both runs' scores on the clips both have (late fusion)."""
    head, ds, pred = _scored(run, store, split, device, workers, in_memory)
    scores, targets, name = pred.scores, ds.targets, run.head_name
    if fuse_with is not None:
        if fuse_with.task.NAME != NAME:
            raise ValueError(f"{fuse_with.path}: late fusion needs two classify runs")
        if fuse_with.config["classes"] != run.config["classes"]:
            raise ValueError(f"{fuse_with.path}: its classes differ from {run.path}'s")
        from vidattn.stores import open_store

        _, ds2, pred2 = _scored(fuse_with, open_store(fuse_with.config["store"]), split,
                                device, workers, in_memory)
        common = [v for v in ds.ids if v in set(ds2.ids)]
        i1 = [ds.ids.index(v) for v in common]
        i2 = [ds2.ids.index(v) for v in common]
        scores, targets = (scores[i1] + pred2.scores[i2]) / 2, ds.targets[i1]
        c1, c2 = run.config, fuse_with.config
        name = f"{c1['head']}({c1['stream']})+{c2['head']}({c2['stream']})"
    summary = summarize_scores(scores, targets, run.config["classes"], run.config["multilabel"])
    summary.update(split=split, head=name, store=store.url)
    if fuse_with is None:
        if store.group.attrs.get("dataset", {}).get("name") == "ava":
            summary.update(ava_frame_map(store.manifest(), ds.ids, scores))
        loc = localization(head, store, ds, device)
        if loc is not None:
            summary["localization"] = loc
    return summary


def format_table(summary: dict) -> str:
    """A markdown table: one row per class, then the mean."""
    lines = ["| class | AP |", "|---|---|"]
    for c, a in summary["per_class_AP"].items():
        lines.append(f"| {c} | {'n/a' if a is None else f'{100 * a:.1f}'} |")
    lines.append(f"| **mAP** | **{100 * summary['mAP']:.1f}** |")
    if "top1" in summary:
        lines.append(f"| top-1 | {100 * summary['top1']:.1f} |")
    loc = summary.get("localization")
    if loc:
        lines.append(f"| {loc['map']} mass on the action | {100 * loc['mass_share']:.1f}% "
                     f"(uniform: {100 * loc['area']:.1f}%) |")
    return "\n".join(lines)


def headline(summary: dict) -> str:
    return f"mAP: {100 * summary['mAP']:.1f}"


def compare_row(summary: dict) -> dict:
    row = {k: summary[k] for k in ("mAP", "mAcc", "top1", "top5") if k in summary}
    loc = summary.get("localization")
    row["attention on action"] = loc["mass_share"] if loc else None
    return row


def yardsticks(runs: list, split: str) -> list[dict]:
    """No extra rows: classify tables compare heads with the average-pooling baseline."""
    return []


def explain(run, head, store, video_id: str, out, device: str):
    return draw(run, head, store, video_id, out, device)
