"""Where a head looks versus where the action is: a pointing-game style score.

For a video with ground-truth boxes of the acting region (the sample has them), each
feature cell (t, h, w) gets the fraction of its extent covered by the box: cell t spans
frames f t .. f t + f - 1 at the extraction rate (f: the array's frames per step from its
spec in stores/schema.py: 8 for Mixed_5c, 4 for Mixed_4f, 2 for the R50), cell (h, w) a
1/H x 1/W patch of the kept (cropped) frame.  The *mass share* of an attention map A is
sum(A * cover) / sum(A): the share of attention that falls on the action.  Uniform attention
scores the box's mean coverage (reported as ``area``), so a map localises when its share
clearly exceeds that.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vidattn import rows
from vidattn.stores.schema import ARRAYS


def cell_cover(boxes: pd.DataFrame, shape: tuple[int, int, int], box_crop, fps: float,
               src_fps: float, start: float = 0.0, frames_per_step: int = 8) -> np.ndarray:
    """(T, H, W) fraction of each feature cell covered by the ground-truth boxes.

    boxes: rows (frame, x1, y1, x2, y2) of one video, normalised to the source frame;
    box_crop: the kept region (x1, y1, x2, y2), normalised to the source frame.
    """
    t_steps, h_cells, w_cells = shape
    by_frame = {int(r.frame): (r.x1, r.y1, r.x2, r.y2) for r in boxes.itertuples()}
    cx1, cy1, cx2, cy2 = box_crop
    # cell edges in source-normalised coordinates
    xs = cx1 + (cx2 - cx1) * np.arange(w_cells + 1) / w_cells
    ys = cy1 + (cy2 - cy1) * np.arange(h_cells + 1) / h_cells
    cover = np.zeros(shape, np.float64)
    for t in range(t_steps):
        for j in range(frames_per_step * t, frames_per_step * (t + 1)):
            src = int(math.floor((start + j / fps) * src_fps + 1e-6))
            if src not in by_frame:
                continue
            x1, y1, x2, y2 = by_frame[src]
            ox = np.clip(np.minimum(xs[1:], x2) - np.maximum(xs[:-1], x1), 0, None)
            oy = np.clip(np.minimum(ys[1:], y2) - np.maximum(ys[:-1], y1), 0, None)
            cover[t] += np.outer(oy / np.diff(ys), ox / np.diff(xs))
    return cover / frames_per_step


def mass_share(attn: np.ndarray, cover: np.ndarray) -> float:
    """Share of a (T, H, W) map's mass on the covered cells.

    Only the positive part counts: some maps (attentional pooling's bottom-up X b) are not
    constrained to be non-negative, and negative "attention" is not mass.
    """
    attn = np.clip(attn, 0, None)
    total = float(attn.sum())
    return float((attn * cover).sum() / total) if total > 0 else float("nan")


def video_covers(store, shapes: dict[str, tuple[int, int, int]],
                 stream: str = "rgb") -> dict[str, np.ndarray]:
    """Coverage (T, H, W) of every video in ``shapes`` (maps of array ``stream``) that has
    ground-truth boxes.

    The store's tables are read once for all videos; each video file is probed for its
    native size and rate (the crop box and the box frame indices depend on them).
    """
    from vidattn.video import crop_box, decode_of, probe

    boxes = store.boxes()
    if boxes is None:
        return {}
    by_video = {v: g for v, g in boxes.groupby("video_id") if v in shapes}
    if not by_video:
        return {}
    manifest = store.manifest().set_index("video_id")
    prep = store.provenance(stream)["preprocessing"]
    step = ARRAYS[stream].frames_per_step
    cfg = decode_of(prep)
    covers = {}
    for vid, vboxes in by_video.items():
        row = manifest.loc[vid]
        info = probe(rows.video_path(row.path, store.dataset_root))
        covers[vid] = cell_cover(vboxes, shapes[vid], crop_box(info["height"], info["width"], cfg),
                                 prep["fps"] or info["fps"], info["fps"],
                                 rows.bound(row.start_sec) or 0.0, step)
    return covers

