"""StoreDataset: crops read straight from the store equal crops of maps held in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from vidattn.data.dataset import Draw, StoreDataset, epoch_draws, shape_batches, split_ids
from vidattn.data.maps import StoreMaps, entries
from vidattn.stores import open_store

D = 1024  # the rgb array's channels
# (video, split, T, H, W, label); c_* are conjugates of the action with the same suffix
CLIPS = [("a0", "train", 7, 3, 4, 0), ("a1", "train", 2, 3, 4, 1), ("a2", "train", 5, 4, 5, 0),
         ("a3", "train", 9, 3, 4, 1), ("t0", "test", 4, 3, 4, 0), ("t1", "test", 4, 3, 4, 1),
         ("t2", "test", 6, 4, 5, 1)]
CONJ = [("c_a0", "a0", 3, 3, 4), ("c_a2", "a2", 6, 4, 5), ("c2_a2", "a2", 4, 3, 4)]


def planted(vid: str, t: int, h: int, w: int) -> np.ndarray:
    """(T, H, W, D) whose channel 0 encodes (t, y, x) and channel 1 the video."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    m = np.zeros((t, h, w, D), np.float32)
    m[..., 0] = 100 * tt + 10 * yy + xx
    m[..., 1] = sum(map(ord, vid)) % 97
    return m


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    """A store written directly: no decoding, maps of several shapes over three parts."""
    store = open_store(tmp_path_factory.mktemp("planted") / "s", mode="a")
    store.set_classes(["x", "y"])
    rows = [{"video_id": v, "path": f"{v}.mp4", "split": s, "labels": [k], "role": "action",
             "group": v, "start_sec": None, "end_sec": None, "dataset": "planted"}
            for v, s, _, _, _, k in CLIPS]
    rows += [{"video_id": c, "path": f"{c}.mp4", "split": "train", "labels": [],
              "role": "conjugate", "group": a, "start_sec": None, "end_sec": None,
              "dataset": "planted"} for c, a, *_ in CONJ]
    store.write_table("manifest", pd.DataFrame(rows))
    store.write_table("pairs", pd.DataFrame({"video_id": [a for _, a, *_ in CONJ],
                                             "conjugate_id": [c for c, *_ in CONJ],
                                             "rule": "planted", "distance": 0.0}))
    shapes = {v: (t, h, w) for v, _, t, h, w, _ in CLIPS} | {c: s for c, _, *s in CONJ}
    vids = sorted(shapes)
    for part in range(3):
        mine = vids[part::3]
        store.write_part("rgb", part,
                         [{"video_id": v, "status": "done", "error": None, "n_frames": 8,
                           "fps": 25.0} for v in mine],
                         {v: planted(v, *shapes[v]) for v in mine})
    return store.url


def test_streamed_and_held_crops_are_identical(store_url):
    kw = {"crop_t": 4, "conjugates": True}
    streamed = StoreDataset(store_url, "train", val_fraction=0, **kw)
    held = StoreDataset(store_url, "train", val_fraction=0, in_memory=True, **kw)
    assert streamed.ids == held.ids == ["a0", "a1", "a2", "a3"]
    assert streamed.hw == held.hw == (3, 4)  # the smallest map of the split and conjugates
    assert streamed.conjugates[2] == ["c_a2", "c2_a2"] and streamed.conjugates[1] == []
    for draw in (Draw(0, 3, 0, 0), Draw(2, 1, 1, 0), Draw(3, 5), Draw(1, 0)):
        a, b = streamed[draw], held[draw]
        assert torch.equal(a["map"], b["map"]) and a["map"].dtype == torch.float16
        assert (a["conj"] is None) == (b["conj"] is None)
        if a["conj"] is not None:
            assert torch.equal(a["conj"], b["conj"])
    item = streamed[Draw(3, 5)]
    assert tuple(item["map"].shape) == (D, 4, 3, 4)
    assert (item["map"][0, :, 0, 0] // 100).tolist() == [5, 6, 7, 8]  # steps 5..8 of 9
    looped = streamed[Draw(1, 0)]["map"]  # 2 steps, looped to 4
    assert (looped[0, :, 0, 0] // 100).tolist() == [0, 1, 0, 1]
    centred = streamed[Draw(2, 0)]["map"]  # 4x5 map centre-cropped to 3x4: rows 0..2
    assert centred[0, 0].tolist() == [[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]]


def test_crop_reads_only_its_rows(store_url, monkeypatch):
    store = open_store(store_url)
    maps = StoreMaps(store_url, "rgb", entries(store, "rgb", ["a3"]), D)
    sliced = []
    real = type(store.group["features/rgb/part-00000"]).__getitem__

    def spy(arr, key):
        sliced.append(key)
        return real(arr, key)

    monkeypatch.setattr(type(store.group["features/rgb/part-00000"]), "__getitem__", spy)
    crop = maps.read("a3", 2, 3)
    e = maps.where["a3"]
    assert sliced == [slice(e.offset + 2 * 12, e.offset + 5 * 12)]  # 3 steps of 3x4 cells
    assert torch.equal(crop, maps.read("a3")[:, 2:5])


def test_read_many_reads_neighbours_in_one_slice(store_url, monkeypatch):
    """read_many yields every wanted map exactly as read alone, one slice per run of
    neighbouring maps in a part; a run is cut at max_rows, unknown ids are passed over."""
    store = open_store(store_url)
    ids = sorted(store.video_ids("rgb"))
    maps = StoreMaps(store_url, "rgb", entries(store, "rgb", ids), D)
    alone = {v: maps.read(v).clone() for v in ids}
    sliced = []
    cls = type(store.group["features/rgb/part-00000"])
    real = cls.__getitem__
    monkeypatch.setattr(cls, "__getitem__", lambda arr, key: sliced.append(key) or
                        real(arr, key))
    wanted = ids[::-1] + ["nope"]
    got = dict(maps.read_many(wanted))
    assert sorted(got) == ids
    assert all(torch.equal(got[v], alone[v]) for v in ids)
    parts = {maps.where[v].part for v in ids}
    assert len(sliced) == len(parts) == 3  # the planted maps lie back to back in each part
    sliced.clear()
    got = dict(maps.read_many(ids, max_rows=1))  # a map larger than a run is read alone
    assert len(sliced) == len(ids) and all(torch.equal(got[v], alone[v]) for v in ids)


def test_loader_workers_and_urls_give_the_same_batches(store_url):
    ds = StoreDataset(store_url, "train", val_fraction=0, crop_t=3, conjugates=True)
    draws = epoch_draws(ds, 3, np.random.default_rng(0))
    assert epoch_draws(ds, 3, np.random.default_rng(0)) == draws  # drawn from the rng alone

    def batches(dataset, workers):
        loader = DataLoader(dataset, batch_sampler=draws, collate_fn=dataset.collate,
                            num_workers=workers)
        return list(loader)

    one = batches(ds, 0)
    url = StoreDataset("file://" + store_url, "train", val_fraction=0, crop_t=3,
                       conjugates=True)
    assert StoreDataset(Path(store_url), "train", val_fraction=0).ids == ds.ids  # a Path too
    for other in (batches(ds, 2), batches(url, 0)):
        for b1, b2 in zip(one, other, strict=True):
            assert torch.equal(b1["fmap"], b2["fmap"]) and b1["fmap"].dtype == torch.float32
            assert torch.equal(b1["index"], b2["index"])
            assert torch.equal(b1["has_conj"], b2["has_conj"])
            assert (b1["conj"] is None) == (b2["conj"] is None)
    n_conj = sum(int(b["has_conj"].sum()) for b in one)
    assert n_conj == 2  # a0 and a2 have conjugates, a1 and a3 none


def test_random_items_and_whole_map_batches(store_url):
    torch.manual_seed(0)
    ds = StoreDataset(store_url, "train", val_fraction=0, crop_t=4)
    starts = {int(ds[3]["map"][0, 0, 0, 0]) // 100 for _ in range(60)}
    assert starts == set(range(6))  # every start of a 9-step map, drawn by torch
    test = StoreDataset(store_url, "test")
    groups = shape_batches(test, 16)
    assert sorted(map(sorted, groups)) == [[0, 1], [2]]  # two shapes
    for idx in groups:
        batch = test.collate([test[i] for i in idx])
        assert tuple(batch["fmap"].shape[2:]) == test.shape(idx[0])
        assert batch["target"].tolist() == [CLIPS[4 + i][5] for i in idx]


def test_split_ids_carves_val_from_train(store_url):
    man = open_store(store_url).manifest()
    ids = split_ids(man, 0.5, seed=0)
    assert sorted(ids["train"] + ids["val"]) == ["a0", "a1", "a2", "a3"]
    assert len(ids["val"]) == 2 and ids["test"] == ["t0", "t1", "t2"]
    assert split_ids(man, 0.5, seed=0) == ids


def test_the_readme_loop_trains_with_shuffling_workers(store_url):
    from vidattn.heads.actx import Config, build
    from vidattn.tasks import classify

    torch.manual_seed(0)
    ds = StoreDataset(store_url, "train", val_fraction=0, crop_t=2, conjugates=True)
    loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, collate_fn=ds.collate)
    head = build(Config(num_classes=len(ds.classes), in_channels=D))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    seen, terms = 0, set()
    for batch in loader:
        loss, parts = classify.loss(head, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        seen, terms = seen + len(batch["index"]), terms | set(parts)
    assert seen == len(ds) == 4 and "L_c" in terms


def test_around_conjugates_are_the_clips_own_steps_beside_each_crop(store_url):
    crop = 2
    ds = StoreDataset(store_url, "train", crop_t=crop, conjugates="around", hw=(3, 4))
    assert ds.conjugates == [[v] for v in ds.ids]  # no pairs: whole clips, their own steps
    rng = np.random.default_rng(0)
    seen_sides, starts = set(), {}
    for _ in range(80):
        for batch in epoch_draws(ds, 3, rng):
            for d in batch:
                t = ds.shape(d.index)[0]
                starts.setdefault(d.index, set()).add(d.start)
                if t < 2 * crop:  # a1 (2 steps): no window fits beside the crop
                    assert d.conj == -1
                    continue
                assert d.conj == 0 and d.conj_start in (d.start - crop, d.start + crop)
                assert 0 <= d.conj_start and d.conj_start + crop <= t
                seen_sides.add(d.conj_start - d.start)
                item = ds[d]
                # channel 0 codes 100 t + 10 y + x: the conjugate is the same clip, shifted
                steps = item["map"][0, :, 0, 0] // 100
                conj_steps = item["conj"][0, :, 0, 0] // 100
                assert torch.equal(conj_steps - steps, torch.full_like(steps, d.conj_start
                                                                      - d.start))
                assert item["conj"][1].eq(item["map"][1]).all()  # same video
    assert seen_sides == {-crop, crop}
    a3 = ds.ids.index("a3")
    assert len(starts[a3]) == 9 - crop + 1  # every crop of the whole clip is drawn
    random_draw = ds[ds.ids.index("a0")]
    assert random_draw["conj"] is not None
    with pytest.raises(ValueError, match="around"):
        StoreDataset(store_url, "train", crop_t=2, conjugates="beside")


def test_protocol_ids_never_select_on_the_reported_split():
    from vidattn.data.dataset import protocol_ids

    def manifest(splits: dict[str, int]) -> pd.DataFrame:
        rows = [{"video_id": f"{s}{i}", "split": s, "labels": [i % 2], "role": "action"}
                for s, n in splits.items() for i in range(n)]
        return pd.DataFrame(rows)

    # HACS-30: train and val only; the paper reports val -> select on held-out train
    ids, roles = protocol_ids(manifest({"train": 40, "val": 10}), 0.25, 0)
    assert roles == {"selected_on": "train-holdout (0.25 of train)", "reported": "val"}
    assert sorted(ids["test"]) == sorted(f"val{i}" for i in range(10))
    assert len(ids["val"]) == 10 and set(ids["val"]) <= {f"train{i}" for i in range(40)}
    assert not set(ids["val"]) & set(ids["train"]) and len(ids["train"]) == 30
    # train / val / test (RefAVA): select on val, report test
    ids, roles = protocol_ids(manifest({"train": 8, "val": 4, "test": 4}), 0.25, 0)
    assert roles == {"selected_on": "val", "reported": "test"}
    assert ids["val"] == [f"val{i}" for i in range(4)] and len(ids["train"]) == 8
    # train / test (Hollywood2, ActionThread): held-out train, report test
    ids, roles = protocol_ids(manifest({"train": 8, "test": 4}), 0.25, 0)
    assert roles["reported"] == "test" and roles["selected_on"].startswith("train-holdout")
    assert ids == {**split_ids(manifest({"train": 8, "test": 4}), 0.25, 0)}
