"""The refer task: a map + a sentence + detections -> the referred person's actions and box.

RefAtomNet and its ablations (heads/refatomnet.py) take the batch dict of
vidattn/data/refer.py and return "logits" (B, K) and "box" (B, 4).  Metrics are RefAVA's
(vidattn.metrics.refava_metrics): mIoU of the box; mAP (weighted by class frequency) and
macro AUROC on the raw scores, as the paper reports them; and the same two with a row's
scores zeroed where its box has IoU < 0.5 (``mAP_gated``, ``AUROC_gated``).

Selection: the validation epoch with the best gated mAP (it rewards finding the right
person *and* naming their actions), ties broken by mIoU.
"""

from __future__ import annotations

import numpy as np
import torch

from vidattn import metrics as M
from vidattn.data import refer as R
from vidattn.data.dataset import StoreDataset, labelled_ids
from vidattn.stores.schema import ARRAYS
from vidattn.tasks.fit import Predictions, eval_batches, to_device

NAME = "refer"
PROTOCOL = ("RefAVA: mIoU; mAP and AUROC on the raw scores; *_gated: scores zeroed where "
            "the box has IoU < 0.5")


def head_fields(store, stream: str) -> dict:
    return {"num_classes": len(store.classes), "multilabel": True,
            "in_channels": ARRAYS[stream].channels,
            "text_dim": ARRAYS[R.text_stream(store)].channels}


def dataset(store, ids, stream: str, **kw) -> StoreDataset:
    kw.pop("conjugates", None)  # no referring head uses conjugates
    return StoreDataset(store, ids=list(ids), stream=stream, task=NAME, **kw)


def loss(head, batch: dict, teacher=None, mfr_weight: float = 1.0, mfr_rms: bool = False):
    if teacher is not None:
        raise ValueError("--teacher (W3's MFR) applies to classify heads with an attended map")
    return head.loss(head(batch), batch)


@torch.no_grad()
def predict(head, ds: StoreDataset, device: str, workers: int = 0) -> Predictions:
    """Whole maps (batched by map shape) -> (N, K) probabilities and (N, 4) boxes."""
    head.eval()
    scores = np.zeros((len(ds), len(ds.classes)), np.float32)
    boxes = np.zeros((len(ds), 4), np.float32)
    for batch in eval_batches(ds, workers, 32):
        idx = batch["index"].numpy()
        out = head(to_device(batch, device))
        scores[idx] = out["logits"].float().sigmoid().cpu().numpy()
        boxes[idx] = out["box"].float().cpu().numpy()
    return Predictions(list(ds.ids), scores, boxes)


def summarize(pred: Predictions, ds: StoreDataset) -> dict:
    out = M.refava_metrics(pred.scores, ds.targets, pred.boxes, ds.refer.boxes)
    ap = M.per_class_ap(pred.scores, ds.targets > 0.5)
    out["per_class_AP"] = {c: (None if np.isnan(a) else float(a))
                           for c, a in zip(ds.classes, ap)}
    out["n"] = len(ds)
    return out


def val_record(summary: dict) -> dict:
    return {"val_mAP_gated": summary["mAP_gated"], "val_mIoU": summary["mIoU"],
            "val_mAP": summary["mAP"], "val_AUROC": summary["AUROC"]}


def selection_key(record: dict) -> tuple:
    return (record.get("val_mAP_gated", 0.0), record.get("val_mIoU", 0.0))


def run_fields(store, ds: StoreDataset) -> dict:
    return {"text_stream": ds.refer.text_name, "det_min_score": ds.refer.min_score,
            "detections": (store.provenance("detections") or {}).get("extractor"),
            "referring": True}


def score_check(run) -> None:
    raise ValueError(f"{run.path}: {run.head_name} is a referring run; score re-scores "
                     f"map-only heads (use evaluate on a referring store)")


def evaluate(run, store, split: str, device: str, fuse_with=None, workers: int = 0,
             in_memory: bool = False) -> dict:
    if fuse_with is not None:
        raise ValueError(f"{run.path}: late fusion of referring runs is not defined "
                         f"(their boxes cannot be averaged meaningfully)")
    ds = dataset(store, labelled_ids(store.manifest(), split), run.config["stream"],
                 in_memory=in_memory, min_score=run.config["det_min_score"],
                 desc=f"read {split}")
    if len(ds) == 0:
        raise RuntimeError(f"{store.url}: no rows of split {split!r} with all three "
                           f"referring streams stored")
    summary = summarize(predict(run.load_head(device), ds, device, workers), ds)
    summary.update(split=split, head=run.head_name, store=store.url, protocol=PROTOCOL)
    return summary


def format_table(summary: dict) -> str:
    """The RefAVA metrics, then per-class AP (raw scores)."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {100 * summary[k]:.1f} |"
              for k in ("mIoU", "mAP", "AUROC", "mAP_gated", "AUROC_gated") if k in summary]
    for c, a in summary.get("per_class_AP", summary.get("per_class_AP_ungated", {})).items():
        lines.append(f"| AP {c} | {'n/a' if a is None else f'{100 * a:.1f}'} |")
    return "\n".join(lines)


def headline(summary: dict) -> str:
    return (f"mAP: {100 * summary['mAP']:.1f}, mIoU {100 * summary['mIoU']:.1f}, "
            f"AUROC {100 * summary['AUROC']:.1f}")


def compare_row(summary: dict) -> dict:
    return {k: summary[k] for k in ("mIoU", "mAP", "AUROC", "mAP_gated") if k in summary}


def yardsticks(runs: list, split: str) -> list[dict]:
    """compare's reference rows for refer runs on one store: a sentence-blind linear probe
    and a box-oracle one (vidattn/tasks/yardsticks.py)."""
    from vidattn.stores import open_store
    from vidattn.tasks.yardsticks import probe_rows

    c = runs[0].config
    if any(r.config["store"] != c["store"] for r in runs):
        return []  # runs of several stores: no one yardstick fits them all
    return probe_rows(open_store(c["store"]), c["stream"], split, c["det_min_score"])


def explain(run, head, store, video_id: str, out, device: str):
    from vidattn.tasks.refer_explain import draw

    return draw(run, head, store, video_id, out, device)
