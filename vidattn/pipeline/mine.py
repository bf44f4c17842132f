"""``vidattn mine-conjugates``: pair each action clip with clips of its context, without it.

Rules (ActX paper, Sec. 4):

- ``same-group`` (ActionThread: the pre-/post-action sequences of the same thread;
  Hollywood2: the sequences before/after the cropped action in the same clip; the sample):
  every conjugate row of the manifest is paired with the action rows of its group; the
  distance is the temporal gap between the two segments (seconds; 0 when unknown).
- ``nearest-negative`` (HACS): for each positive training clip, the ``k`` nearest negative
  clips by cosine distance of mean-pooled features read from the store, taking negatives
  from the same YouTube video (same group) first when there are any.

The pair table is written to the store (PAIRS_SCHEMA), replacing the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from vidattn.progress import bar as progress
from vidattn.stores import FeatureStore, open_store

# Datasets whose conjugates come from features (negatives), not from the manifest's groups.
NEAREST_NEGATIVE = {"hacs", "hacs30"}
RULES = ("auto", "same-group", "nearest-negative")


@dataclass(frozen=True)
class MineConfig:
    store: str
    rule: str = "auto"
    k: int = 3  # conjugates per positive (nearest-negative; the paper used 3)
    stream: str = "rgb"
    chunk: int = 4096  # positives scored per matrix product (bounds memory on big datasets)


def _dataset(store: FeatureStore) -> str:
    return store.group.attrs.get("dataset", {}).get("name", "")


def same_group(manifest: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Action rows x conjugate rows of the same group -> pairs with the temporal gap."""
    actions = manifest[manifest.role == "action"]
    conj = manifest[(manifest.role == "conjugate") & (manifest.status != "missing")]
    m = actions.merge(conj, on="group", suffixes=("", "_c"))
    gap = np.maximum(m.start_sec_c - m.end_sec, m.start_sec - m.end_sec_c)
    return pd.DataFrame({
        "video_id": m.video_id, "conjugate_id": m.video_id_c,
        "rule": f"{dataset or 'manifest'}:same-group",
        "distance": np.nan_to_num(np.maximum(gap, 0.0).astype(np.float32), nan=0.0),
    })


def pooled_features(store: FeatureStore, ids: list[str], stream: str) -> torch.Tensor:
    """(N, D) L2-normalised mean-pooled maps (float32: never reduce in float16)."""
    rows = [torch.from_numpy(store.read(v, stream).mean(axis=(0, 1, 2), dtype=np.float32))
            for v in progress(ids, desc="pool", leave=False)]
    return torch.nn.functional.normalize(torch.stack(rows), dim=1)


def nearest_negative(store: FeatureStore, k: int, stream: str, chunk: int) -> pd.DataFrame:
    """Top-k negatives per positive training clip by cosine distance, same video first."""
    man = store.manifest()
    done = set(store.video_ids(stream))
    pos = man[(man.role == "action") & (man.split == "train") & man.video_id.isin(done)]
    neg = man[(man.role == "background") & (man.split == "train") & man.video_id.isin(done)]
    if not len(pos) or not len(neg):
        raise RuntimeError(f"{store.url}: nearest-negative mining needs extracted positive and "
                           f"negative training clips (have {len(pos)} and {len(neg)})")
    fp = pooled_features(store, pos.video_id.tolist(), stream)
    fn = pooled_features(store, neg.video_id.tolist(), stream)
    neg_ids, neg_groups = neg.video_id.to_numpy(), neg.group.to_numpy()
    by_group: dict[str, np.ndarray] = {g: np.flatnonzero(neg_groups == g)
                                       for g in set(pos.group) & set(neg.group)}
    kk = min(k, len(neg))
    rows = []
    for s in range(0, len(pos), chunk):
        dist = 1.0 - fp[s : s + chunk] @ fn.T  # (chunk, N) cosine distances
        top = torch.topk(dist, kk, dim=1, largest=False).indices.numpy()
        for i, (vid, group) in enumerate(zip(pos.video_id.iloc[s : s + chunk],
                                             pos.group.iloc[s : s + chunk])):
            d = dist[i].numpy()
            same = by_group.get(group, np.zeros(0, int))
            same = same[np.argsort(d[same], kind="stable")][:kk].tolist()
            picks = same + [int(j) for j in top[i] if int(j) not in set(same)]
            for n, j in enumerate(picks[:kk]):
                rule = "hacs:nearest-negative" + ("-same-video" if n < len(same) else "")
                rows.append((vid, neg_ids[j], rule, float(d[j])))
    return pd.DataFrame(rows, columns=["video_id", "conjugate_id", "rule", "distance"])


def run(cfg: MineConfig) -> pd.DataFrame:
    """Mine with ``cfg.rule`` (auto: by dataset) and write the store's pair table."""
    if cfg.rule not in RULES:
        raise ValueError(f"unknown mining rule {cfg.rule!r}; known: {', '.join(RULES)}")
    store = open_store(cfg.store, mode="a")
    dataset = _dataset(store)
    rule = cfg.rule
    if rule == "auto":
        rule = "nearest-negative" if dataset in NEAREST_NEGATIVE else "same-group"
    if rule == "nearest-negative":
        pairs = nearest_negative(store, cfg.k, cfg.stream, cfg.chunk)
    else:
        pairs = same_group(store.manifest(), dataset)
    store.write_table("pairs", pairs)
    return pairs
