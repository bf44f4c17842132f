"""Where a head looks versus where the action is: a pointing-game style score.

For a video with ground-truth boxes of the acting region (the sample has them), each
feature cell (t, h, w) gets the fraction of its extent covered by the box: cell t spans
frames 8t .. 8t+7 at the extraction rate, cell (h, w) a 1/H x 1/W patch of the kept
(cropped) frame.  The *mass share* of an attention map A is sum(A * cover) / sum(A): the
share of attention that falls on the action.  Uniform attention scores the box's mean
coverage (reported as ``area``), so a map localises when its share clearly exceeds that.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

FRAMES_PER_STEP = 8  # I3D's temporal stride to Mixed_5c


def cell_cover(boxes: pd.DataFrame, shape: tuple[int, int, int], box_crop, fps: float,
               src_fps: float, start: float = 0.0) -> np.ndarray:
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
        for j in range(FRAMES_PER_STEP * t, FRAMES_PER_STEP * (t + 1)):
            src = int(math.floor((start + j / fps) * src_fps + 1e-6))
            if src not in by_frame:
                continue
            x1, y1, x2, y2 = by_frame[src]
            ox = np.clip(np.minimum(xs[1:], x2) - np.maximum(xs[:-1], x1), 0, None)
            oy = np.clip(np.minimum(ys[1:], y2) - np.maximum(ys[:-1], y1), 0, None)
            cover[t] += np.outer(oy / np.diff(ys), ox / np.diff(xs))
    return cover / FRAMES_PER_STEP


def mass_share(attn: np.ndarray, cover: np.ndarray) -> float:
    """Share of a (T, H, W) map's mass on the covered cells.

    Only the positive part counts: some maps (attentional pooling's bottom-up X b) are not
    constrained to be non-negative, and negative "attention" is not mass.
    """
    attn = np.clip(attn, 0, None)
    total = float(attn.sum())
    return float((attn * cover).sum() / total) if total > 0 else float("nan")


def video_covers(store, shapes: dict[str, tuple[int, int, int]]) -> dict[str, np.ndarray]:
    """Coverage (T, H, W) of every video in ``shapes`` that has ground-truth boxes.

    The store's tables are read once for all videos; each video file is probed for its
    native size and rate (the crop box and the box frame indices depend on them).
    """
    from vidattn.video import DecodeConfig, crop_box, probe

    boxes = store.boxes()
    if boxes is None:
        return {}
    by_video = {v: g for v, g in boxes.groupby("video_id") if v in shapes}
    if not by_video:
        return {}
    manifest = store.manifest().set_index("video_id")
    prep = store.provenance("rgb")["preprocessing"]
    cfg = DecodeConfig(prep["fps"], prep["short_side"], prep["crop"])
    root = Path(store.group.attrs.get("dataset", {}).get("root", "."))
    covers = {}
    for vid, vboxes in by_video.items():
        row = manifest.loc[vid]
        path = Path(row.path) if Path(row.path).is_absolute() else root / row.path
        info = probe(path)
        start = segment_start(row.start_sec)
        covers[vid] = cell_cover(vboxes, shapes[vid], crop_box(info["height"], info["width"], cfg),
                                 prep["fps"] or info["fps"], info["fps"], start or 0.0)
    return covers


def segment_start(value) -> float | None:
    """A manifest bound as a float, or None when it is null (NaN once read by pandas)."""
    return None if value is None or value != value else float(value)
