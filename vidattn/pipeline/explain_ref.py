"""``vidattn explain RUN_DIR VIDEO_ID`` for referring runs: who the head found, and where
it looked.

One PNG: the keyframe with the person detections the location stream kept (grey,
dashed), the ground-truth box of the referred person (green) and the predicted box (red),
the sentence and the top actions; beside it the head's ``visual_attn`` (the visual
resampler's attention over the I3D cells, summed over time) upsampled onto the frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vidattn.pipeline import refdata
from vidattn.pipeline.localize import segment_start


def _rect(ax, box, size: tuple[int, int], **style) -> None:
    from matplotlib.patches import Rectangle

    h, w = size
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                           **style))


def run(cfg, head, config: dict, store, device: str) -> tuple[str, None]:
    """cfg: an ExplainConfig; head and config: the loaded referring run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vidattn.pipeline.explain import upsample
    from vidattn.video import DecodeConfig, crop_box, load_clip

    man = store.manifest().set_index("video_id")
    if cfg.video_id not in man.index:
        raise KeyError(f"{store.url}: video {cfg.video_id!r} is not in the manifest")
    split = refdata.load_ref_split(store, [cfg.video_id], config["stream"],
                                   config["text_stream"], len(config["classes"]), "read")
    if not len(split):
        raise KeyError(f"{store.url}: {cfg.video_id!r} lacks a stored referring stream or "
                       f"a ground-truth box")
    label_emb = refdata.label_embeddings(store)
    batch = {k: v.to(device) for k, v in refdata.tokens(split, [0], label_emb,
                                                        config["det_min_score"]).items()}
    batch["visual"] = split.maps[0][None].float().to(device)
    with torch.no_grad():
        out = head(batch)
    probs = out["logits"][0].float().sigmoid().cpu().numpy()
    pred_box = out["box"][0].float().cpu().numpy()
    attn = out["visual_attn"][0].float().sum(0).cpu().numpy()  # (H, W)

    row = man.loc[cfg.video_id]
    extra = json.loads(row.extra) if isinstance(row.extra, str) else {}
    root = Path(store.group.attrs.get("dataset", {}).get("root", "."))
    path = Path(row.path) if Path(row.path).is_absolute() else root / row.path
    start, end = segment_start(row.start_sec), segment_start(row.end_sec)
    t = extra.get("keyframe_sec")
    if t is None:  # the segment's middle, as the extractor took it
        clip = load_clip(path, DecodeConfig(fps=None, short_side=256, crop=None), start, end)
        frame = clip.frames[len(clip.frames) // 2]
    else:
        frame = load_clip(path, DecodeConfig(fps=2.0, short_side=256, crop=None), t,
                          t + 0.5).frames[0]
    size = frame.shape[:2]

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    for ax in axes:
        ax.imshow(frame)
        ax.set_xticks([])
        ax.set_yticks([])
    det = batch["det_boxes"][0].cpu().numpy()
    for box in det[batch["det_mask"][0].cpu().numpy()]:
        _rect(axes[0], box[4:8], size, edgecolor="0.8", lw=1, ls="--")
    for ax in axes:
        _rect(ax, split.boxes[0], size, edgecolor="lime", lw=1.5)
        _rect(ax, pred_box, size, edgecolor="red", lw=1.5)
    # The I3D cells cover the region the store's decoding kept (a centre crop, or all).
    prep = store.provenance(config["stream"])["preprocessing"]
    x1, y1, x2, y2 = crop_box(*size, DecodeConfig(prep["fps"], prep["short_side"], prep["crop"]))
    h, w = size
    box_px = (round(y2 * h) - round(y1 * h), round(x2 * w) - round(x1 * w))
    heat = upsample(attn / max(float(attn.max()), 1e-12), box_px)
    axes[1].imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1,
                   extent=(x1 * w, x2 * w, y2 * h, y1 * h))
    axes[1].set_xlim(0, w)
    axes[1].set_ylim(h, 0)
    axes[0].set_title("detections (grey), truth (green), predicted (red)", fontsize=8)
    axes[1].set_title("visual attention, summed over time", fontsize=8)
    classes = config["classes"]
    top = np.argsort(-probs)[:3]
    truth = ", ".join(classes[i] for i in row.labels) or "none"
    from vidattn.datasets.refava import box_iou

    iou = float(box_iou(pred_box[None], split.boxes[:1])[0])
    fig.suptitle(f"{cfg.video_id}: \"{extra.get('description', '')}\"\npredicted "
                 + ", ".join(f"{classes[i]} {probs[i]:.2f}" for i in top)
                 + f" (label: {truth}); box IoU {iou:.2f} - {config['head']}", fontsize=9)
    fig.tight_layout()
    out_path = Path(cfg.out) if cfg.out else Path(cfg.run_dir) / f"explain-{cfg.video_id}.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return str(out_path), None
