"""``vidattn mine-conjugates``: pair each action clip with clips of its context, without it.

Rules (ActX paper, Sec. 4):

- ``same-group`` (ActionThread: the pre-/post-action sequences of the same thread;
  Hollywood2: the sequences before/after the cropped action in the same clip; the sample):
  every conjugate row of the manifest is paired with the action rows of its group; the
  distance is the temporal gap between the two segments (seconds; 0 when unknown).
- ``nearest-negative`` (HACS): the paper takes, for each positive, "the top-3 nearest
  neighbours in the negative pool" of I3D-Res34-RGB embeddings.  vidattn's default is that
  rule: the ``k`` nearest negative training clips of the whole pool by cosine distance.
  What cannot match: no I3D-Res34 is available offline, so the embedding is the store's
  own array ``stream`` (default ``rgb``: Inception I3D, Mixed_5c), mean-pooled over time
  and space and L2-normalised.  Option ``same_video_first`` (not the paper's) takes the
  negatives from the positive's own YouTube video (same group) first, nearest first, then
  the nearest others.

The pair table is written to the store (PAIRS_SCHEMA), replacing the previous one.  For
nearest-negative its ``rule`` column names the embedding used (HACS and HACS-30 alike):
``hacs:nearest-negative[-same-video]:<embedding>``, e.g.
``hacs:nearest-negative:rgb-i3d-mixed5c-meanpool``; ``-same-video`` marks a negative that
``same_video_first`` took from the positive's own video (names: :func:`embedding_name`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from vidattn.extractors.two_stream import MAIN_ENDPOINT, array_name
from vidattn.progress import bar as progress
from vidattn.stores import FeatureStore, open_store
from vidattn.stores.schema import ARRAYS

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
    # nearest-negative: negatives of the positive's own video first (not the paper's rule,
    # which is the k nearest of the whole negative pool: the default)
    same_video_first: bool = False


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


def embedding_name(stream: str) -> str:
    """The features nearest-negative mining compares, as written in the ``rule`` column:
    ``<modality>-<backbone>-<endpoint>-meanpool`` for a store array of the two-stream
    extractor (rgb -> rgb-i3d-mixed5c-meanpool, rgb_mixed_4f -> rgb-i3d-mixed4f-meanpool,
    rgb_r50 -> rgb-i3d-r50-res5-meanpool); any other name -> ``<stream>-meanpool``.
    "meanpool": the (T, H, W, C) map averaged over time and space (:func:`pooled_features`).
    """
    modality, _, rest = stream.partition("_")
    backbone = "inception"
    if rest == "r50" or rest.startswith("r50_"):
        backbone, rest = "r50", rest[len("r50_"):]
    endpoint = rest or MAIN_ENDPOINT[backbone]
    known = stream in ARRAYS and modality in ("rgb", "flow")
    if not known or array_name(modality, backbone, endpoint) != stream:
        return f"{stream.replace('_', '-')}-meanpool"
    net = "i3d" if backbone == "inception" else "i3d-r50"
    return f"{modality}-{net}-{endpoint.replace('_', '').lower()}-meanpool"


def nearest_negative(store: FeatureStore, k: int, stream: str, chunk: int,
                     same_video_first: bool = False) -> pd.DataFrame:
    """Top-k negative training clips per positive training clip by cosine distance of
    pooled ``stream`` features: the k nearest of the whole pool (the paper's rule), or
    with ``same_video_first`` the positive's own video's negatives first, then the nearest
    others.  Rows come per positive in pick order."""
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
    by_group: dict[str, np.ndarray] = {}
    if same_video_first:
        by_group = {g: np.flatnonzero(neg_groups == g) for g in set(pos.group) & set(neg.group)}
    embedding = embedding_name(stream)
    rule = f"hacs:nearest-negative:{embedding}"
    rule_same = f"hacs:nearest-negative-same-video:{embedding}"
    kk = min(k, len(neg))
    rows = []
    for s in range(0, len(pos), chunk):
        dist = 1.0 - fp[s : s + chunk] @ fn.T  # (chunk, N) cosine distances
        top = torch.topk(dist, kk, dim=1, largest=False).indices.numpy()  # nearest first
        for i, (vid, group) in enumerate(zip(pos.video_id.iloc[s : s + chunk],
                                             pos.group.iloc[s : s + chunk])):
            d = dist[i].numpy()
            same = by_group.get(group, np.zeros(0, int))  # empty unless same_video_first
            same = same[np.argsort(d[same], kind="stable")][:kk].tolist()
            taken = set(same)
            picks = same + [int(j) for j in top[i] if int(j) not in taken]
            for n, j in enumerate(picks[:kk]):
                rows.append((vid, neg_ids[j], rule_same if n < len(same) else rule, float(d[j])))
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
        pairs = nearest_negative(store, cfg.k, cfg.stream, cfg.chunk, cfg.same_video_first)
    else:
        pairs = same_group(store.manifest(), dataset)
    store.write_table("pairs", pairs)
    return pairs
