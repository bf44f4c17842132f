"""``vidattn evaluate RUN_DIR``: mAP and a per-class AP table on a split of the store.

Referring runs (RefAtomNet) report the RefAVA protocol instead: mIoU of the predicted
box, mAP weighted by class frequency over classes with a positive and macro AUROC, class
scores zeroed where the box has IoU < 0.5 (vidattn.datasets.refava.refava_metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vidattn import metrics as M
from vidattn.pipeline import data
from vidattn.pipeline.runs import load_run, pick_device, predict
from vidattn.stores import open_store


@dataclass(frozen=True)
class EvaluateConfig:
    run_dir: str
    fuse_with: str | None = None  # a second run (e.g. the flow stream): late fusion
    split: str = "test"
    store: str | None = None  # default: the store the run was trained on
    device: str = "auto"


def summarize(scores: np.ndarray, targets: np.ndarray, classes: list[str],
              multilabel: bool) -> dict:
    """scores (N, K), targets (N,) or (N, K) -> mAP, per-class AP and accuracies."""
    hot = data.one_hot(targets, len(classes))
    ap = M.per_class_ap(scores, hot)
    out = {
        "mAP": M.mean_ap(scores, hot),
        "per_class_AP": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, ap)},
        "n": int(len(scores)),
    }
    if not multilabel:
        out["top1"] = M.topk_accuracy(scores, targets, 1)
        out["mAcc"] = M.mean_class_accuracy(scores, targets)
        if len(classes) > 5:  # top-5 of five classes or fewer is trivially 1
            out["top5"] = M.topk_accuracy(scores, targets, 5)
    return out


def format_table(summary: dict) -> str:
    """A markdown table: one row per class, then the mean."""
    if "mIoU" in summary:  # referring: the RefAVA metrics, then ungated per-class AP
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {100 * summary[k]:.1f} |" for k in ("mIoU", "mAP", "AUROC")]
        for c, a in summary.get("per_class_AP_ungated", {}).items():
            lines.append(f"| AP {c} (ungated) | {'n/a' if a is None else f'{100 * a:.1f}'} |")
        return "\n".join(lines)
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


def _scores(run_dir: str, store_url: str | None, split: str, device: str):
    """One run's scores on the action clips of ``split`` -> (head, config, store, Split, scores)."""
    head, config = load_run(run_dir, device)
    store = open_store(store_url or config["store"])
    if store.classes != config["classes"]:
        raise ValueError(f"{store.url}: its classes differ from those {run_dir} was trained on")
    manifest = store.manifest()
    labelled = (manifest.role != "conjugate") & (manifest.labels.map(len) > 0)
    ids = manifest.loc[labelled & (manifest.split == split), "video_id"]
    data_split = data.load_split(store, ids.tolist(), config["stream"], config["multilabel"],
                                 False, f"read {split}")
    if len(data_split) == 0:
        raise RuntimeError(f"{store.url}: no extracted action clips in split {split!r}")
    return head, config, store, data_split, predict(head, data_split.maps,
                                                    config["multilabel"], device)


def localization(head, store, split: data.Split, device: str) -> dict | None:
    """Mean share of the head's first map on the ground-truth region (see localize.py)."""
    from vidattn.pipeline.explain import attention_maps
    from vidattn.pipeline.localize import mass_share, video_covers

    names = getattr(head, "map_names", ())
    if not names:
        return None
    covers = video_covers(store, {v: tuple(m.shape[1:]) for v, m in zip(split.ids, split.maps)})
    shares, areas = [], []
    for vid, fmap in zip(split.ids, split.maps):
        cover = covers.get(vid)
        if cover is None:
            continue
        maps, _ = attention_maps(head, fmap, device)
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
    from vidattn.datasets.ava import frame_map, ground_truth

    man = manifest.set_index("video_id").loc[ids].reset_index()
    rows = []
    for i, (group, extra) in enumerate(zip(man.group, man.extra)):
        e = json.loads(extra)
        rows += [(group, e["timestamp"], *e["box"], k, float(scores[i, k]))
                 for k in range(scores.shape[1])]
    pred = pd.DataFrame(rows, columns=["video", "timestamp", "x1", "y1", "x2", "y2", "label",
                                       "score"])
    res = frame_map(pred, ground_truth(man))
    return {"protocol": "AVA frame-mAP@0.5, ground-truth person boxes", "frame_mAP": res["mAP"]}


def run_referring(cfg: EvaluateConfig, device: str) -> dict:
    """The RefAVA metrics of a referring run on ``cfg.split`` (module docstring)."""
    from vidattn.pipeline import refdata
    from vidattn.pipeline.train_ref import evaluate_ref

    if cfg.fuse_with:
        raise ValueError(f"{cfg.run_dir}: late fusion of referring runs is not defined "
                         f"(their boxes cannot be averaged meaningfully)")
    head, config = load_run(cfg.run_dir, device)
    store = open_store(cfg.store or config["store"])
    if store.classes != config["classes"]:
        raise ValueError(f"{store.url}: its classes differ from those {cfg.run_dir} was "
                         f"trained on")
    manifest = store.manifest()
    labelled = (manifest.role != "conjugate") & (manifest.labels.map(len) > 0)
    ids = manifest.loc[labelled & (manifest.split == cfg.split), "video_id"].tolist()
    split = refdata.load_ref_split(store, ids, config["stream"], config["text_stream"],
                                   len(config["classes"]), f"read {cfg.split}")
    if len(split) == 0:
        raise RuntimeError(f"{store.url}: no rows of split {cfg.split!r} with all three "
                           f"referring streams stored")
    summary = evaluate_ref(head, split, refdata.label_embeddings(store), device,
                           config["det_min_score"], config["classes"])
    summary.update(split=cfg.split, head=config["head"], store=store.url,
                   protocol="RefAVA: mIoU; mAP and AUROC with scores zeroed at IoU < 0.5")
    return summary


def run(cfg: EvaluateConfig) -> dict:
    """Score the action clips of ``cfg.split``; with ``fuse_with``, average two runs' scores
    (two-stream late fusion).  Writes eval-<split>[-fusion].json into the (first) run dir."""
    device = pick_device(cfg.device)
    run_config = Path(cfg.run_dir) / "config.json"
    if run_config.is_file() and json.loads(run_config.read_text()).get("referring"):
        summary = run_referring(cfg, device)
        out = Path(cfg.run_dir) / f"eval-{cfg.split}.json"
        out.write_text(json.dumps(summary, indent=2))
        summary["path"] = str(out)
        return summary
    head, config, store, split, scores = _scores(cfg.run_dir, cfg.store, cfg.split, device)
    targets, name = split.targets, config["head"]
    if cfg.fuse_with:
        _, config2, _, split2, scores2 = _scores(cfg.fuse_with, None, cfg.split, device)
        if config2["classes"] != config["classes"]:
            raise ValueError(f"{cfg.fuse_with}: its classes differ from {cfg.run_dir}'s")
        common = [v for v in split.ids if v in set(split2.ids)]
        i1 = [split.ids.index(v) for v in common]
        i2 = [split2.ids.index(v) for v in common]
        scores, targets = (scores[i1] + scores2[i2]) / 2, split.targets[i1]
        name = f"{config['head']}({config['stream']})+{config2['head']}({config2['stream']})"
    summary = summarize(scores, targets, config["classes"], config["multilabel"])
    summary.update(split=cfg.split, head=name, store=store.url)
    if store.group.attrs.get("dataset", {}).get("name") == "ava" and not cfg.fuse_with:
        summary.update(ava_frame_map(store.manifest(), split.ids, scores))
    if not cfg.fuse_with:
        loc = localization(head, store, split, device)
        if loc is not None:
            summary["localization"] = loc
    suffix = "-fusion" if cfg.fuse_with else ""
    out = Path(cfg.run_dir) / f"eval-{cfg.split}{suffix}.json"
    out.write_text(json.dumps(summary, indent=2))
    summary["path"] = str(out)
    return summary
