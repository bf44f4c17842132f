"""``vidattn explain RUN_DIR VIDEO_ID`` for referring runs: who the head found, and where
it looked.

One PNG: the keyframe with the person detections the location stream kept (grey,
dashed), the ground-truth box of the referred person (green) and the predicted box (red),
the sentence and the top actions; beside it the head's ``visual_attn`` (the visual
resampler's attention over the I3D cells, summed over time) upsampled onto the frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vidattn import rows
from vidattn.data.dataset import StoreDataset
from vidattn.metrics import box_iou


def _rect(ax, box, size: tuple[int, int], **style) -> None:
    from matplotlib.patches import Rectangle

    h, w = size
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                           **style))


def draw(run, head, store, video_id: str, out: str | None, device: str) -> tuple[str, None]:
    """The keyframe picture of ``video_id`` -> (its path, None: no animation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vidattn.tasks.classify_explain import upsample
    from vidattn.video import DecodeConfig, crop_box, decode_of, load_clip, probe

    config = run.config
    man = store.manifest().set_index("video_id")
    if video_id not in man.index:
        raise LookupError(f"{store.url}: video {video_id!r} is not in the manifest")
    ds = StoreDataset(store, ids=[video_id], stream=config["stream"], task="refer",
                      min_score=config["det_min_score"])
    if not len(ds):
        raise LookupError(f"{store.url}: {video_id!r} lacks a stored referring stream or "
                          f"a ground-truth box")
    batch = {k: v.to(device) for k, v in ds.collate([ds[0]]).items()}
    with torch.no_grad():
        out_ = head(batch)
    probs = out_["logits"][0].float().sigmoid().cpu().numpy()
    pred_box = out_["box"][0].float().cpu().numpy()
    attn = out_["visual_attn"][0].float().sum(0).cpu().numpy()  # (H, W)
    gt = ds.refer.boxes[0]

    row = man.loc[video_id]
    extra = rows.extra(row.extra)
    path = rows.video_path(row.path, store.dataset_root)
    # the keyframe by the extractor's rule; half a second at 2 fps is the frame on screen
    t = rows.keyframe_sec(row.extra, row.start_sec, row.end_sec,
                          lambda: probe(path)["duration"])
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
        _rect(ax, gt, size, edgecolor="lime", lw=1.5)
        _rect(ax, pred_box, size, edgecolor="red", lw=1.5)
    # The I3D cells cover the region the store's decoding kept (a centre crop, or all).
    prep = store.provenance(config["stream"])["preprocessing"]
    x1, y1, x2, y2 = crop_box(*size, decode_of(prep))
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
    iou = float(box_iou(pred_box, gt))
    fig.suptitle(f"{video_id}: \"{extra.get('description', '')}\"\npredicted "
                 + ", ".join(f"{classes[i]} {probs[i]:.2f}" for i in top)
                 + f" (label: {truth}); box IoU {iou:.2f} - {config['head']}", fontsize=9)
    fig.tight_layout()
    out_path = Path(out) if out else run.path / f"explain-{video_id}.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return str(out_path), None
