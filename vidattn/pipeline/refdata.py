"""Reading the referring streams for RefAtomNet: maps, sentence tokens, detection tokens.

A referring sample is one manifest row (one person at one keyframe, as in RefAVA) with
three stored arrays -- the I3D map (``stream``), the sentence tokens (``text``...) and the
detection tokens (``detections``) -- plus the person's ground-truth box.  Everything is
read once into memory (a few KB per row besides the map), then batched as the dict
RefAtomNet's ``forward`` takes (see vidattn/heads/refatomnet.py):

- visual (B, D, T, H, W); text (B, L, E) with text_mask (B, L), padded to the batch's
  longest sentence;
- det_boxes (B, M, 8), det_emb (B, M, E) (the class name's embedding, looked up in the
  store's label_text table), det_scores (B, M), det_mask (B, M): True for person queries
  scoring at least ``min_score`` -- the paper masks non-person queries; the score
  threshold drops DETR's low-confidence person guesses among its 100 queries;
- labels (B, K) multi-hot and box (B, 4) [x1, y1, x2, y2], the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vidattn.pipeline import data
from vidattn.pipeline.referring import box_tracks, gt_box
from vidattn.progress import bar as progress
from vidattn.stores.schema import ARRAYS, PERSON

# Person queries below this score are masked (DETR's post-processing keeps > 0.7 for
# display; 0.5 keeps a little more recall).  Annotated boxes score 1.
DEFAULT_MIN_SCORE = 0.5


@dataclass
class RefSplit:
    """maps[i] (D, T, H, W) float16; text[i] (L_i, E); dets[i] (M_i, 10) float32 tokens;
    boxes (N, 4) ground truth; targets (N, K) multi-hot."""

    ids: list[str]
    maps: list[torch.Tensor]
    text: list[torch.Tensor]
    dets: list[torch.Tensor]
    boxes: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


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


def load_ref_split(store, ids: list[str], stream: str, text: str, num_classes: int,
                   desc: str = "read") -> RefSplit:
    """Rows of ``ids`` that have all three arrays and a ground-truth box."""
    man = store.manifest().set_index("video_id")
    have = set(store.video_ids(stream)) & set(store.video_ids(text))
    have &= set(store.video_ids("detections"))
    tracks = box_tracks(store.boxes())
    keep, gts = [], []
    for v in ids:
        box = gt_box(man.at[v, "extra"], tracks.get(v)) if v in have else None
        if box is not None:
            keep.append(v)
            gts.append(box)
    maps, texts, dets = [], [], []
    for v in progress(keep, desc=desc, leave=False):
        maps.append(data.channels_first(store.read(v, stream)))
        texts.append(torch.from_numpy(store.read(v, text).reshape(-1, ARRAYS[text].channels)))
        dets.append(torch.from_numpy(store.read(v, "detections").reshape(-1, 10)))
    labels = [man.at[v, "labels"] for v in keep]
    return RefSplit(keep, maps, texts, dets, np.asarray(gts, np.float32).reshape(-1, 4),
                    data.targets_for(labels, num_classes, multilabel=True))


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (L_i, C) -> (B, max L, C) zero-padded and (B, max L) bool validity."""
    n = max(len(r) for r in rows)
    out = torch.zeros(len(rows), n, rows[0].shape[1])
    valid = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        valid[i, : len(r)] = True
    return out, valid


def tokens(split: RefSplit, idx, label_emb: torch.Tensor, min_score: float) -> dict:
    """The text and detection entries of a batch of rows ``idx`` (CPU tensors)."""
    text, text_mask = _pad([split.text[i] for i in idx])
    det, det_valid = _pad([split.dets[i] for i in idx])
    cls = det[..., 8].round().long().clamp(0, len(label_emb) - 1)
    return {
        "text": text, "text_mask": text_mask,
        "det_boxes": det[..., :8], "det_emb": label_emb[cls], "det_scores": det[..., 9],
        "det_mask": det_valid & (cls == PERSON) & (det[..., 9] >= min_score),
        "labels": torch.from_numpy(split.targets[idx]),
        "box": torch.from_numpy(split.boxes[idx]),
    }


def train_batch(split: RefSplit, idx, label_emb: torch.Tensor, length: int,
                hw: tuple[int, int], rng: np.random.Generator, device: str,
                min_score: float) -> dict:
    """A training batch: random temporal crops of the maps, tokens as they are."""
    out = tokens(split, idx, label_emb, min_score)
    out = {k: v.to(device) for k, v in out.items()}
    out["visual"] = data.batch([split.maps[i] for i in idx], length, hw, rng, device)
    return out


@torch.no_grad()
def predict(head, split: RefSplit, label_emb: torch.Tensor, device: str, min_score: float,
            batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Whole maps (batched by map shape) -> (N, K) probabilities and (N, 4) boxes."""
    head.eval()
    scores = np.zeros((len(split), split.targets.shape[1]), np.float32)
    boxes = np.zeros((len(split), 4), np.float32)
    by_shape: dict[tuple, list[int]] = {}
    for i, m in enumerate(split.maps):
        by_shape.setdefault(tuple(m.shape), []).append(i)
    for group in by_shape.values():
        for s in range(0, len(group), batch_size):
            idx = group[s : s + batch_size]
            batch = {k: v.to(device) for k, v in tokens(split, idx, label_emb, min_score).items()}
            batch["visual"] = data.to_tensor([split.maps[i] for i in idx], device)
            out = head(batch)
            scores[idx] = out["logits"].float().sigmoid().cpu().numpy()
            boxes[idx] = out["box"].float().cpu().numpy()
    return scores, boxes
