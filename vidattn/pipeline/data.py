"""Reading cached maps for training and evaluation.

Maps are read once, top to bottom, into memory as channels-first float16 tensors
(D, T, H, W) -- the layout heads take, so a batch is a few slice copies into one
preallocated float32 tensor rather than a gather, a cast and a transpose per step.
Batches are random temporal crops of a fixed length (the paper's "temporal cropping",
e.g. 10 steps for ActionThread, 6 for Hollywood2).  At test time whole maps are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vidattn.progress import bar as progress
from vidattn.stores import FeatureStore


@dataclass
class Split:
    """One split of action clips with their targets and conjugates.

    maps[i]: (D, T, H, W) float16 tensor; targets: (N,) int64 class index (single-label) or
    (N, K) float32 multi-hot; conjugates[i]: indices into ``conj_maps`` for sample i.
    """

    ids: list[str]
    maps: list[np.ndarray]
    targets: np.ndarray
    conjugates: list[list[int]] = field(default_factory=list)
    conj_maps: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def is_multilabel(store: FeatureStore) -> bool:
    """As the dataset declares it (recorded at extraction), else: any clip with 2+ labels."""
    declared = store.group.attrs.get("dataset", {}).get("multilabel")
    if declared is not None:
        return bool(declared)
    manifest = store.manifest()
    actions = manifest[manifest.role == "action"]
    return bool(actions.labels.map(len).gt(1).any())


def targets_for(labels, num_classes: int, multilabel: bool) -> np.ndarray:
    if multilabel:
        t = np.zeros((len(labels), num_classes), np.float32)
        for i, lab in enumerate(labels):
            t[i, list(lab)] = 1.0
        return t
    return np.array([int(lab[0]) for lab in labels], np.int64)


def one_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) indices or (N, K) multi-hot -> (N, K) bool."""
    if targets.ndim == 2:
        return targets > 0.5
    return np.eye(num_classes, dtype=bool)[targets]


def load_split(store: FeatureStore, ids: list[str], stream: str, multilabel: bool,
               with_conjugates: bool, desc: str = "read") -> Split:
    """Read the maps (and conjugate maps) of ``ids`` from the store."""
    man = store.manifest().set_index("video_id")
    done = set(store.video_ids(stream))
    ids = [v for v in ids if v in done]
    maps = [channels_first(store.read(v, stream)) for v in progress(ids, desc=desc, leave=False)]
    labels = [man.at[v, "labels"] for v in ids]
    split = Split(ids, maps, targets_for(labels, len(store.classes), multilabel))
    if with_conjugates:
        pairs = store.pairs()
        pairs = pairs[pairs.conjugate_id.isin(done)]
        by_action = pairs.groupby("video_id").conjugate_id.apply(list).to_dict()
        cid: dict[str, int] = {}
        for v in ids:
            row = []
            for c in by_action.get(v, []):
                if c not in cid:
                    cid[c] = len(split.conj_maps)
                    split.conj_maps.append(channels_first(store.read(c, stream)))
                row.append(cid[c])
            split.conjugates.append(row)
    return split


def channels_first(fmap: np.ndarray) -> torch.Tensor:
    """A stored (T, H, W, D) map -> contiguous (D, T, H, W) float16 tensor."""
    return torch.from_numpy(np.ascontiguousarray(fmap)).permute(3, 0, 1, 2).half().contiguous()


def crop(m: torch.Tensor, length: int, hw: tuple[int, int],
         rng: np.random.Generator | None) -> torch.Tensor:
    """(D, T, H, W) -> (D, length, h, w): a random (or centred, rng=None) temporal window;
    maps shorter than ``length`` are looped; spatially centre-cropped to ``hw`` so maps of
    different aspect ratios can share a batch.  A view when no looping is needed."""
    t = m.shape[1]
    h, w = hw
    y0, x0 = (m.shape[2] - h) // 2, (m.shape[3] - w) // 2
    m = m[:, :, y0 : y0 + h, x0 : x0 + w]
    if t >= length:
        start = int(rng.integers(0, t - length + 1)) if rng is not None else (t - length) // 2
        return m[:, start : start + length]
    return m[:, torch.arange(length) % t]


def batch(maps: list[torch.Tensor], length: int, hw: tuple[int, int],
          rng: np.random.Generator | None, device: str) -> torch.Tensor:
    """Crops of ``maps`` -> (B, D, length, h, w) float32 on ``device``."""
    out = torch.empty((len(maps), maps[0].shape[0], length, *hw), dtype=torch.float32,
                      pin_memory=device.startswith("cuda"))
    for i, m in enumerate(maps):
        out[i].copy_(crop(m, length, hw, rng))
    return out.to(device, non_blocking=True)


def to_tensor(maps: list[torch.Tensor], device: str) -> torch.Tensor:
    """Whole (D, T, H, W) maps of one size -> (B, D, T, H, W) float32 on ``device``."""
    return torch.stack(maps).float().to(device)


def common_hw(*splits: Split) -> tuple[int, int]:
    """Smallest (H, W) over all maps: the spatial size training batches are cropped to."""
    ms = [m for s in splits for m in (s.maps + s.conj_maps)]
    return min(m.shape[2] for m in ms), min(m.shape[3] for m in ms)
