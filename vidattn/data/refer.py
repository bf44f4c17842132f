"""The referring rows of a store: sentence tokens, detection tokens, the person's box.

A referring sample is one manifest row (one person at one keyframe, as in RefAVA) with
three stored arrays -- the I3D map, the sentence tokens (``text``...) and the detection
tokens (``detections``) -- plus the person's ground-truth box.  Batches are the dict
RefAtomNet's ``forward`` takes (vidattn/heads/refatomnet.py):

- visual (B, D, T, H, W); text (B, L, E) with text_mask (B, L), padded to the batch's
  longest sentence;
- det_boxes (B, M, 8), det_emb (B, M, E) (the class name's embedding, looked up in the
  store's label_text table), det_scores (B, M), det_mask (B, M): True for person queries
  scoring at least ``min_score`` -- the paper masks non-person queries; the score
  threshold drops DETR's low-confidence person guesses among its 100 queries;
- labels (B, K) multi-hot and box (B, 4) [x1, y1, x2, y2], the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from vidattn import rows
from vidattn.data import maps as M
from vidattn.stores.schema import ARRAYS, PERSON

# Person queries below this score are masked (DETR's post-processing keeps > 0.7 for
# display; 0.5 keeps a little more recall).  Annotated boxes score 1.
DEFAULT_MIN_SCORE = 0.5


def text_stream(store) -> str:
    """The store's sentence-token array (text, text_768...): the one with provenance."""
    names = [n for n in ARRAYS if n.startswith("text") and store.provenance(n)]
    if len(names) != 1:
        raise RuntimeError(f"{store.url}: expected one stored text array, found "
                           f"{names or 'none'}; extract with --detector detr or --boxes "
                           f"annotations on a dataset with referring sentences")
    return names[0]


def label_embeddings(store) -> torch.Tensor:
    """(C, E) float32 class-name embeddings, row = class id (store's label_text)."""
    table = store.label_text()
    if table is None or not len(table):
        raise RuntimeError(f"{store.url}: no label_text.parquet; extract detections first")
    table = table.sort_values("class_id")
    if list(table.class_id) != list(range(len(table))):
        raise RuntimeError(f"{store.url}: label_text class ids are not 0..{len(table) - 1}")
    return torch.from_numpy(np.stack(table.embedding.map(np.asarray)).astype(np.float32))


def box_tracks(boxes) -> dict[str, dict[int, list[float]]]:
    """A BOXES_SCHEMA table as video_id -> {frame: [x1, y1, x2, y2]} ({} for None)."""
    tracks: dict[str, dict[int, list[float]]] = {}
    if boxes is not None:
        for r in boxes.itertuples(index=False):
            tracks.setdefault(r.video_id, {})[int(r.frame)] = [
                float(r.x1), float(r.y1), float(r.x2), float(r.y2)]
    return tracks


def gt_box(row, track: dict | None, root: str = ".") -> list[float] | None:
    """The referred person's ground-truth [x1, y1, x2, y2] at the keyframe: ``extra.box``
    when recorded, else the track's box at the keyframe by the rule the extractor uses
    (:func:`vidattn.rows.keyframe_sec`, :func:`vidattn.rows.track_box`); None without either.

    row: a manifest row (attributes extra, start_sec, end_sec, fps, n_frames, path).  The
    file is probed only when the manifest lacks what the rule needs.
    """
    ex = rows.extra(row.extra)
    if ex.get("box") is not None:
        return [float(v) for v in ex["box"]]
    if not track:
        return None
    fps, n = rows.bound(row.fps), rows.bound(row.n_frames)
    info: dict = {}

    def probed() -> dict:
        if not info:
            from vidattn.video import probe

            info.update(probe(rows.video_path(row.path, root)))
        return info

    def duration() -> float:  # asked only for a segment without an end
        return (rows.bound(row.start_sec) or 0.0) + n / fps if fps and n else probed()["duration"]

    t = rows.keyframe_sec(row.extra, row.start_sec, row.end_sec, duration)
    return rows.track_box(track, t, fps or probed()["fps"])


@dataclass
class RefRows:
    """Per row: its sentence and detection tokens (read on demand, or held) and box."""

    ids: list[str]
    text: M.StoreMaps | M.MemoryMaps
    dets: M.StoreMaps | M.MemoryMaps
    boxes: np.ndarray  # (N, 4)
    label_emb: torch.Tensor  # (C, E)
    min_score: float
    text_name: str

    @classmethod
    def build(cls, store, manifest, ids: list[str], min_score: float) -> RefRows:
        """Rows of ``ids`` with sentence and detection tokens stored and a ground-truth box."""
        name = text_stream(store)
        text = M.StoreMaps(store.url, name, M.entries(store, name, ids), ARRAYS[name].channels)
        dets = M.StoreMaps(store.url, "detections", M.entries(store, "detections", ids),
                           ARRAYS["detections"].channels)
        man = manifest.set_index("video_id")
        tracks = box_tracks(store.boxes())
        root = store.group.attrs.get("dataset", {}).get("root", ".")
        keep, gts = [], []
        for v in ids:
            if v in text and v in dets:
                box = gt_box(man.loc[v], tracks.get(v), root)
                if box is not None:
                    keep.append(v)
                    gts.append(box)
        return cls(keep, text, dets, np.asarray(gts, np.float32).reshape(-1, 4),
                   label_embeddings(store), min_score, name)

    def held(self) -> RefRows:
        """The same rows with their tokens read into memory once."""
        return replace(self, text=M.MemoryMaps.load(self.text, self.ids, "read text"),
                       dets=M.MemoryMaps.load(self.dets, self.ids, "read detections"))

    def item(self, i: int) -> dict:
        vid = self.ids[i]
        return {"text": self.text.read(vid).reshape(self.text_channels, -1).T.float(),
                "dets": self.dets.read(vid).reshape(10, -1).T.float(),
                "box": self.boxes[i]}

    @property
    def text_channels(self) -> int:
        return ARRAYS[self.text_name].channels

    def collate(self, items: list[dict]) -> dict:
        """The text and detection entries and targets of RefAtomNet's batch dict."""
        text, text_mask = _pad([it["text"] for it in items])
        det, det_valid = _pad([it["dets"] for it in items])
        cls = det[..., 8].round().long().clamp(0, len(self.label_emb) - 1)
        return {
            "text": text, "text_mask": text_mask,
            "det_boxes": det[..., :8], "det_emb": self.label_emb[cls], "det_scores": det[..., 9],
            "det_mask": det_valid & (cls == PERSON) & (det[..., 9] >= self.min_score),
            "labels": torch.from_numpy(np.stack([it["target"] for it in items])),
            "box": torch.from_numpy(np.stack([it["box"] for it in items])),
        }


def _pad(rows_: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (L_i, C) -> (B, max L, C) zero-padded and (B, max L) bool validity."""
    n = max(len(r) for r in rows_)
    out = torch.zeros(len(rows_), n, rows_[0].shape[1])
    valid = torch.zeros(len(rows_), n, dtype=torch.bool)
    for i, r in enumerate(rows_):
        out[i, : len(r)] = r
        valid[i, : len(r)] = True
    return out, valid
