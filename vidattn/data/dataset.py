"""``StoreDataset``: one split of a store as a ``torch.utils.data.Dataset``.

An item is one clip: a temporal crop of its map (or the whole map) and its targets, plus,
where the task needs them, a conjugate clip's crop (ActX, ACF) or the referring tokens
(RefAtomNet: sentence, detections, the person's box).  Only the crop's rows are read from
the store (see maps.py), so a split larger than memory trains as fast as the reads allow::

    ds = StoreDataset("stores/hollywood2", "train", crop_t=6, conjugates=True)
    loader = DataLoader(ds, batch_size=36, shuffle=True, num_workers=4, collate_fn=ds.collate)
    for batch in loader:
        out = head(batch["fmap"])
        loss, _ = head.loss(out, batch["fmap"], batch["target"], batch["conj"])

``ds[i]`` draws the crop (and conjugate) with torch's generator, which DataLoader seeds per
worker; ``ds[Draw(...)]`` takes them as given: vidattn's own loop draws every batch in the
main process (:func:`epoch_draws`), so a run is the same whatever the number of workers and
whether maps are streamed or held (``in_memory=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from vidattn.data import maps as M
from vidattn.data import refer as R
from vidattn.stores.schema import ARRAYS


def is_multilabel(store) -> bool:
    """As the dataset declares it (recorded at extraction), else: any clip with 2+ labels."""
    declared = store.group.attrs.get("dataset", {}).get("multilabel")
    if declared is not None:
        return bool(declared)
    manifest = store.manifest()
    return bool(manifest[manifest.role == "action"].labels.map(len).gt(1).any())


def targets_for(labels, num_classes: int, multilabel: bool) -> np.ndarray:
    """Label lists -> (N, K) float32 multi-hot, or (N,) int64 class indices (-1 for a row
    without a label, e.g. a conjugate clip scored by ``vidattn score``)."""
    if multilabel:
        t = np.zeros((len(labels), num_classes), np.float32)
        for i, lab in enumerate(labels):
            t[i, list(lab)] = 1.0
        return t
    return np.array([int(lab[0]) if len(lab) else -1 for lab in labels], np.int64)


def labelled_ids(manifest, split: str) -> list[str]:
    """Ids of the clips of ``split`` that carry a class (actions, and background clips with
    one, as in HACS-30); conjugates never."""
    keep = (manifest.role != "conjugate") & (manifest.labels.map(len) > 0)
    return manifest.loc[keep & (manifest.split == split), "video_id"].tolist()


def split_ids(manifest, val_fraction: float = 0.25, seed: int = 0) -> dict[str, list[str]]:
    """:func:`labelled_ids` of train, val and test; a val split is carved out of train
    (stratified by first label) when the dataset has none."""
    ids = {s: labelled_ids(manifest, s) for s in ("train", "val", "test")}
    if not ids["val"] and val_fraction > 0:
        ids["train"], ids["val"] = _hold_out(manifest, ids["train"], val_fraction, seed)
    return ids


def protocol_ids(manifest, val_fraction: float = 0.25, seed: int = 0
                 ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The splits a training run uses, such that checkpoint selection never sees the
    reported split: ({"train", "val" (selection), "test" (reported)}, names).

    The reported split is test, or val where the dataset has no test (HACS-30, AVA: the
    papers report val).  Selection uses val only when test is the reported split; else a
    stratified ``val_fraction`` of train, held out.  names: {"selected_on", "reported"}.
    """
    real = {s: labelled_ids(manifest, s) for s in ("train", "val", "test")}
    reported = "test" if real["test"] else "val"
    if reported == "test" and real["val"]:
        return real, {"selected_on": "val", "reported": "test"}
    train, held = _hold_out(manifest, real["train"], val_fraction, seed)
    where = f"train-holdout ({val_fraction:g} of train)"
    return ({"train": train, "val": held, "test": real[reported]},
            {"selected_on": where, "reported": reported})


def _hold_out(manifest, train_ids: list[str], fraction: float, seed: int
              ) -> tuple[list[str], list[str]]:
    """(kept, held out): ``fraction`` of each first-label group of ``train_ids``."""
    if fraction <= 0:
        return list(train_ids), []
    rng = np.random.default_rng(seed)
    train = manifest[manifest.video_id.isin(set(train_ids))]
    first = train.labels.map(lambda x: int(x[0]) if len(x) else -1)
    held: set[str] = set()
    for _, group in train.groupby(first):
        g = group.video_id.tolist()
        n = int(round(len(g) * fraction))
        held |= {g[i] for i in sorted(rng.permutation(len(g))[:n])}
    return [v for v in train_ids if v not in held], [v for v in train_ids if v in held]


@dataclass(frozen=True)
class Draw:
    """A determined item: row ``index`` cropped from step ``start``; for conjugate tasks,
    ``conj`` the position in the row's conjugate list (-1: none) cropped from ``conj_start``."""

    index: int
    start: int = 0
    conj: int = -1
    conj_start: int = 0


class StoreDataset(Dataset):
    """Clips of one split of a store (module docstring).

    store: a path, fsspec URL or open FeatureStore; split: "train" | "val" | "test" (val is
    carved out of train with ``val_fraction`` and ``seed`` when the dataset has none), or
    ``ids`` to pick rows yourself.  crop_t: steps per crop (None: whole maps, no spatial
    crop); hw: spatial crop (default: the smallest (H, W) among the split's maps and
    conjugates).  conjugates: False, True (alias "pairs": a clip's conjugates are the
    clips pairs.parquet names), or "around": the clip's own steps right before or right
    after each crop (Hollywood2 as ActX trains it: one crop_t-step window on either side,
    chosen at random among those that fit; none when the clip is shorter than 2 crop_t).
    task: "classify" or "refer" (then also sentence and detection tokens).
    Rows without a done map (or, for refer, without every stream and a ground-truth box) are
    left out.
    """

    def __init__(self, store, split: str | None = "train", *, stream: str = "rgb",
                 task: str = "classify", crop_t: int | None = None, conjugates: bool | str = False,
                 in_memory: bool = False, ids: list[str] | None = None,
                 val_fraction: float = 0.25, seed: int = 0, hw: tuple[int, int] | None = None,
                 min_score: float = R.DEFAULT_MIN_SCORE, desc: str | None = None):
        from vidattn.stores import open_store

        store = store if hasattr(store, "manifest") else open_store(store)  # path, URL or store
        if task not in ("classify", "refer"):
            raise ValueError(f"task must be 'classify' or 'refer', got {task!r}")
        if stream not in ARRAYS:
            raise ValueError(f"unknown stream {stream!r}; the store's arrays: {', '.join(ARRAYS)}")
        manifest = store.manifest()
        if ids is None:
            if split not in ("train", "val", "test"):
                raise ValueError(f"split must be train, val or test (or pass ids=), got {split!r}")
            ids = split_ids(manifest, val_fraction, seed)[split]
        self.url, self.stream, self.task, self.crop_t = store.url, stream, task, crop_t
        self.channels = ARRAYS[stream].channels
        self.classes = store.classes
        self.multilabel = True if task == "refer" else is_multilabel(store)
        source = M.StoreMaps(store.url, stream, M.entries(store, stream, ids),
                             ARRAYS[stream].channels)
        ids = [v for v in ids if v in source]
        self.refer = None
        if task == "refer":
            self.refer = R.RefRows.build(store, manifest, ids, min_score)
            ids = self.refer.ids
        labels = manifest.set_index("video_id").loc[ids, "labels"] if ids else []
        self.ids = list(ids)
        self.targets = targets_for(list(labels), len(self.classes), self.multilabel)
        if conjugates not in (False, True, "pairs", "around"):
            raise ValueError(f"conjugates must be False, True, 'pairs' or 'around', "
                             f"got {conjugates!r}")
        self.around = conjugates == "around"
        self.conjugates: list[list[str]] = [[] for _ in self.ids]
        if self.around:
            self.conjugates = [[v] for v in self.ids]
        elif conjugates:
            self.conjugates = _conjugates(store, stream, self.ids)
            conj_ids = {c for row in self.conjugates for c in row}
            source = M.StoreMaps(store.url, stream, M.entries(store, stream, set(ids) | conj_ids),
                                 ARRAYS[stream].channels)
        self.uses_conjugates = bool(conjugates)
        self.in_memory = in_memory
        wanted = self.ids + [c for row in self.conjugates for c in row]
        self.maps = M.MemoryMaps.load(source, wanted, desc or f"read {split or 'rows'}") \
            if in_memory else source
        if in_memory and self.refer is not None:
            self.refer = self.refer.held()
        self.hw = hw or (self._smallest_hw(wanted) if crop_t else None)

    def _smallest_hw(self, vids: list[str]) -> tuple[int, int] | None:
        shapes = [self.maps.shape(v) for v in vids]
        return (min(s[1] for s in shapes), min(s[2] for s in shapes)) if shapes else None

    def __len__(self) -> int:
        return len(self.ids)

    def shape(self, i: int) -> tuple[int, int, int]:
        """(T, H, W) of row i's whole map, from the index (nothing is read)."""
        return self.maps.shape(self.ids[i])

    def __getitem__(self, key) -> dict:
        draw = key if isinstance(key, Draw) else self._random_draw(int(key))
        i, vid = draw.index, self.ids[draw.index]
        if self.crop_t is None:
            fmap = self.maps.read(vid)
        else:
            fmap = M.read_crop(self.maps, vid, draw.start, self.crop_t, self.hw)
        item = {"index": i, "video_id": vid, "map": fmap, "target": self.targets[i]}
        if self.uses_conjugates:
            item["conj"] = None
            if draw.conj >= 0 and self.crop_t is not None:
                c = self.conjugates[i][draw.conj]
                item["conj"] = M.read_crop(self.maps, c, draw.conj_start, self.crop_t, self.hw)
        if self.refer is not None:
            item.update(self.refer.item(i))
        return item

    def _random_draw(self, i: int) -> Draw:
        if self.crop_t is None:
            return Draw(i)
        def start(vid: str) -> int:
            t = self.maps.shape(vid)[0]
            return int(torch.randint(t - self.crop_t + 1, ())) if t >= self.crop_t else 0
        conj = self.conjugates[i]
        if not (self.uses_conjugates and conj):
            return Draw(i, start(self.ids[i]))
        s0 = start(self.ids[i])
        if self.around:
            sides = around(self.shape(i)[0], s0, self.crop_t)
            if not sides:
                return Draw(i, s0)
            return Draw(i, s0, 0, sides[int(torch.randint(len(sides), ()))])
        k = int(torch.randint(len(conj), ()))
        return Draw(i, s0, k, start(conj[k]))

    def collate(self, items: list[dict], dtype: torch.dtype = torch.float32) -> dict:
        """Items -> a batch: "fmap" (B, D, L, h, w) in ``dtype``, "target", "index", and
        "conj" (n, D, L, h, w) of the n items that have one with "has_conj" (B,) (else None);
        refer: RefAtomNet's input dict instead (see refer.py), "visual" being the maps.
        (vidattn's loop collates float16 in its reader processes, half the bytes to pass.)"""
        fmap = _stack([it["map"] for it in items], dtype)
        target = torch.from_numpy(np.stack([it["target"] for it in items]))
        batch = {"fmap": fmap, "target": target,
                 "index": torch.tensor([it["index"] for it in items])}
        if self.uses_conjugates:
            conj = [it["conj"] for it in items if it["conj"] is not None]
            batch["has_conj"] = torch.tensor([it["conj"] is not None for it in items])
            batch["conj"] = _stack(conj, dtype) if conj else None
        if self.refer is not None:
            batch = {**self.refer.collate(items), "visual": fmap, "index": batch["index"]}
        return batch


def _stack(maps: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Same-shape maps (views, any strides) -> one contiguous (B, ...) tensor: one pass.
    In a DataLoader worker it is made in shared memory, so handing it over copies nothing."""
    out = torch.empty((len(maps), *maps[0].shape), dtype=dtype)
    if get_worker_info() is not None:
        out.share_memory_()
    for row, m in zip(out, maps):
        row.copy_(m)
    return out


def _conjugates(store, stream: str, ids: list[str]) -> list[list[str]]:
    """Per row, its conjugates (pairs.parquet order) whose ``stream`` map is done."""
    done = set(store.video_ids(stream))
    pairs = store.pairs()
    pairs = pairs[pairs.conjugate_id.isin(done)]
    by_action = pairs.groupby("video_id", sort=False).conjugate_id.apply(list).to_dict()
    return [list(by_action.get(v, [])) for v in ids]


def around(t: int, start: int, crop_t: int) -> list[int]:
    """Starts of the crop_t-step windows right before and right after the crop
    ``[start, start + crop_t)`` of a T-step map that fit inside it."""
    return [s for s in (start - crop_t, start + crop_t) if 0 <= s and s + crop_t <= t]


def epoch_draws(ds: StoreDataset, batch_size: int, rng: np.random.Generator) -> list[list[Draw]]:
    """One epoch's batches: a permutation of the rows, each cropped at random, and for
    rows with conjugates one of them (uniformly) cropped at random, all from ``rng``;
    with ``around`` conjugates, the window before or after the crop (uniformly among those
    that fit)."""
    perm = rng.permutation(len(ds))
    batches = []
    for s in range(0, len(perm), batch_size):
        idx = [int(j) for j in perm[s : s + batch_size]]
        starts = [M.crop_start(ds.shape(j)[0], ds.crop_t, rng) for j in idx]
        if ds.around:
            sides = {j: around(ds.shape(j)[0], s0, ds.crop_t) for j, s0 in zip(idx, starts)}
            picks = {j: 0 for j in idx if sides[j]}
            conj_starts = {j: int(sides[j][rng.integers(len(sides[j]))]) for j in picks}
        else:
            picks = {j: int(rng.choice(len(ds.conjugates[j]))) for j in idx
                     if ds.uses_conjugates and ds.conjugates[j]}
            conj_starts = {j: M.crop_start(ds.maps.shape(ds.conjugates[j][k])[0], ds.crop_t,
                                           rng) for j, k in picks.items()}
        batches.append([Draw(j, s0, picks.get(j, -1), conj_starts.get(j, 0))
                        for j, s0 in zip(idx, starts)])
    return batches


def shape_batches(ds: StoreDataset, batch_size: int) -> list[list[int]]:
    """Rows grouped by map shape into batches (whole maps of one shape stack), in row order
    within a shape."""
    groups: dict[tuple, list[int]] = {}
    for i in range(len(ds)):
        groups.setdefault(ds.shape(i), []).append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]
