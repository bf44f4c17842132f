"""``vidattn evaluate RUN_DIR``: mAP and a per-class AP table on a split of the store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidattn import metrics as M
from vidattn.pipeline import data
from vidattn.pipeline.runs import load_run, pick_device, predict
from vidattn.stores import open_store


@dataclass(frozen=True)
class EvaluateConfig:
    run_dir: str
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
        out["top5"] = M.topk_accuracy(scores, targets, min(5, len(classes)))
        out["mAcc"] = M.mean_class_accuracy(scores, targets)
    return out


def format_table(summary: dict) -> str:
    """A markdown table: one row per class, then the mean."""
    lines = ["| class | AP |", "|---|---|"]
    for c, a in summary["per_class_AP"].items():
        lines.append(f"| {c} | {'n/a' if a is None else f'{100 * a:.1f}'} |")
    lines.append(f"| **mAP** | **{100 * summary['mAP']:.1f}** |")
    if "top1" in summary:
        lines.append(f"| top-1 | {100 * summary['top1']:.1f} |")
    return "\n".join(lines)


def run(cfg: EvaluateConfig) -> dict:
    """Score every action clip of ``cfg.split`` with the run's head; write eval-<split>.json."""
    device = pick_device(cfg.device)
    head, config = load_run(cfg.run_dir, device)
    store = open_store(cfg.store or config["store"])
    if store.classes != config["classes"]:
        raise ValueError(f"{store.url}: its classes differ from those the run was trained on")
    manifest = store.manifest()
    ids = manifest.loc[(manifest.role == "action") & (manifest.split == cfg.split), "video_id"]
    split = data.load_split(store, ids.tolist(), config["stream"], config["multilabel"], False,
                            f"read {cfg.split}")
    if len(split) == 0:
        raise RuntimeError(f"{store.url}: no extracted action clips in split {cfg.split!r}")
    scores = predict(head, split.maps, config["multilabel"], device)
    summary = summarize(scores, split.targets, config["classes"], config["multilabel"])
    summary.update(split=cfg.split, head=config["head"], store=store.url)
    out = Path(cfg.run_dir) / f"eval-{cfg.split}.json"
    out.write_text(json.dumps(summary, indent=2))
    summary["path"] = str(out)
    return summary
