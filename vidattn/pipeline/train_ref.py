"""``vidattn train-head refatomnet``: train a referring head on the three cached streams.

The same plain loop as train.py (read everything once, random temporal crops, keep the
best validation epoch, test it), over RefAtomNet's inputs (pipeline/refdata.py).  The
selection metric is the RefAVA protocol's validation mAP (class scores zeroed where the
predicted box has IoU < 0.5, so it rewards finding the right person and naming their
actions), ties broken by mIoU.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from vidattn.datasets.refava import refava_metrics
from vidattn.options import parse_options
from vidattn.pipeline import data, refdata
from vidattn.pipeline.runs import build_head, pick_device, save_json, save_weights
from vidattn.progress import bar as progress
from vidattn.registry import head_config_class
from vidattn.stores import open_store
from vidattn.stores.schema import ARRAYS


def evaluate_ref(head, split: refdata.RefSplit, label_emb: torch.Tensor, device: str,
                 min_score: float, classes: list[str] | None = None) -> dict:
    """RefAVA metrics (mIoU, IoU-gated weighted mAP, AUROC) of ``head`` on ``split``."""
    scores, boxes = refdata.predict(head, split, label_emb, device, min_score)
    out = refava_metrics(scores, split.targets, boxes, split.boxes)
    out["n"] = len(split)
    if classes is not None:
        from vidattn.metrics import per_class_ap

        ap = per_class_ap(scores, split.targets > 0.5)
        out["per_class_AP_ungated"] = {c: (None if np.isnan(a) else float(a))
                                       for c, a in zip(classes, ap)}
    return out


def fit(cfg, head, train: refdata.RefSplit, val: refdata.RefSplit, label_emb: torch.Tensor,
        device: str, rng: np.random.Generator, min_score: float):
    """The training loop; leaves the best-validation weights in ``head``.

    Returns (history, selected epoch, the (H, W) training maps were cropped to).
    """
    hw = data.common_hw(data.Split(train.ids, train.maps, train.targets))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, best, best_state = [], None, None
    bar = progress(range(cfg.epochs), desc=f"train {cfg.head}", unit="epoch")
    for epoch in bar:
        head.train()
        perm = rng.permutation(len(train))
        sums: dict[str, float] = {}
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            batch = refdata.train_batch(train, idx, label_emb, cfg.crop_t, hw, rng, device,
                                        min_score)
            loss, parts = head.loss(head(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        record = {"epoch": epoch + 1, **{k: v / len(perm) for k, v in sums.items()}}
        if len(val):
            m = evaluate_ref(head, val, label_emb, device, min_score)
            record.update(val_mAP=m["mAP"], val_mIoU=m["mIoU"], val_AUROC=m["AUROC"])
        history.append(record)
        key = (record.get("val_mAP", 0.0), record.get("val_mIoU", 0.0), -record["loss"])
        if best is None or key > best[0]:
            best = (key, epoch + 1)
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        bar.set_postfix(loss=f"{record['loss']:.3f}", val_mAP=f"{record.get('val_mAP', 0):.3f}",
                        val_mIoU=f"{record.get('val_mIoU', 0):.3f}")
    head.load_state_dict(best_state)
    return history, best[1], hw


def run(cfg) -> dict:
    """Train, select, test a referring head (cfg: train.TrainConfig); write the run dir."""
    from vidattn.pipeline.train import plot_curves, split_ids

    t0 = time.time()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    store = open_store(cfg.store)
    classes = store.classes
    text = refdata.text_stream(store)
    label_emb = refdata.label_embeddings(store)
    head_cfg = parse_options(
        head_config_class(cfg.head), cfg.options, num_classes=len(classes), multilabel=True,
        in_channels=ARRAYS[cfg.stream].channels, text_dim=ARRAYS[text].channels,
    )
    head = build_head(cfg.head, head_cfg).to(device)
    ids = split_ids(store.manifest(), cfg.val_fraction, cfg.seed)
    splits = {s: refdata.load_ref_split(store, ids[s], cfg.stream, text, len(classes),
                                        f"read {s}") for s in ("train", "val", "test")}
    if len(splits["train"]) == 0:
        raise RuntimeError(f"{cfg.store}: no train rows with {cfg.stream}, {text} and "
                           f"detections stored and a ground-truth box")
    min_score = cfg.det_min_score
    history, selected, hw = fit(cfg, head, splits["train"], splits["val"], label_emb, device,
                                rng, min_score)
    out = Path(cfg.out)
    save_weights(out, head)
    metrics: dict = {"history": history, "selected_epoch": selected,
                     **{f"n_{s}": len(v) for s, v in splits.items()},
                     "n_params": sum(p.numel() for p in head.parameters())}
    if len(splits["test"]):
        metrics["test"] = evaluate_ref(head, splits["test"], label_emb, device, min_score,
                                       classes)
    metrics["seconds"] = round(time.time() - t0, 2)
    config = {"head": cfg.head, "head_config": dataclasses.asdict(head.cfg),
              "train": dataclasses.asdict(cfg), "store": store.url, "classes": classes,
              "stream": cfg.stream, "text_stream": text, "multilabel": True,
              "spatial": list(hw), "referring": True, "det_min_score": min_score,
              "detections": (store.provenance("detections") or {}).get("extractor"),
              "splits": {k: len(v) for k, v in ids.items()}}
    save_json(out, config, metrics)
    plot_curves(history, out / "curves.png", cfg.head)
    return metrics
