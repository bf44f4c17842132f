"""A part's array written shard by shard, from maps in memory or spilled to disk."""

from __future__ import annotations

import dataclasses
import hashlib
import tracemalloc

import numpy as np
import pytest
import zarr

from vidattn.spill import MapBuffer
from vidattn.stores import open_store
from vidattn.stores.schema import ARRAYS

D = ARRAYS["rgb"].channels
SHAPES = {"v_a": (3, 2, 4), "v_b": (1, 5, 3), "v_c": (4, 7, 7)}  # 24 + 15 + 196 rows


def _row(vid: str, status: str = "done") -> dict:
    return {"video_id": vid, "status": status, "error": None, "n_frames": 64, "fps": 25.0}


def _spilled(m: np.ndarray, limit: int = 0):
    buf = MapBuffer(limit)
    for a in range(0, len(m), 2):
        buf.append(m[a : a + 2])
    return buf.result()


@pytest.fixture
def small_shards(monkeypatch):
    """rgb chunked 64 rows at a time, 2 chunks per shard, so three short maps span shards."""
    spec = dataclasses.replace(ARRAYS["rgb"], chunk_rows=64, shard_chunks=2)
    monkeypatch.setitem(ARRAYS, "rgb", spec)
    return spec


def test_a_part_spans_shards_and_reads_back_whatever_held_its_maps(tmp_path, small_shards):
    rng = np.random.default_rng(0)
    maps = {v: rng.normal(0, 2, (*s, D)).astype(np.float16) for v, s in SHAPES.items()}
    given = {"v_a": _spilled(maps["v_a"]),  # on disk
             "v_b": maps["v_b"].astype(np.float32),  # in memory, cast while written
             "v_c": _spilled(maps["v_c"])}
    store = open_store(tmp_path / "s", mode="a")
    store.write_part("rgb", 0, [_row("v_a"), _row("v_x", "failed"), _row("v_b"), _row("v_c")],
                     given)
    store = open_store(tmp_path / "s")
    for vid, m in maps.items():
        np.testing.assert_array_equal(store.read(vid, "rgb", verify=True), m.astype(np.float32))
    index = store.index().set_index("video_id")
    for vid, m in maps.items():  # each checksum is of the video's whole float16 rows
        assert index.loc[vid, "checksum"] == hashlib.sha256(m.tobytes()).hexdigest()
    assert list(index.loc[["v_a", "v_b", "v_c"], "offset"]) == [0, 24, 39]
    arr = zarr.open_array(str(tmp_path / "s" / "features" / "rgb" / "part-00000"), mode="r")
    assert arr.shape == (235, D) and arr.chunks == (64, D) and arr.shards == (128, D)
    assert sorted(p.name for p in (tmp_path / "s/features/rgb/part-00000/c").iterdir()) == \
        ["0", "1"]


def test_a_short_part_is_one_shard_of_whole_chunks(tmp_path, small_shards):
    m = np.ones((1, 5, 3, D), np.float16)
    store = open_store(tmp_path / "s", mode="a")
    store.write_part("rgb", 0, [_row("v")], {"v": m})
    arr = zarr.open_array(str(tmp_path / "s" / "features" / "rgb" / "part-00000"), mode="r")
    assert arr.shape == (15, D) and arr.shards == (64, D)


def test_writing_a_spilled_map_takes_bounded_memory_not_the_map(tmp_path, monkeypatch):
    """A 38 MiB map on disk is checked and written with a fraction of its size traced, set
    by the block and shard sizes (scaled down here: 1 MiB blocks, 2 MiB shards).  Holding
    the map, or its float16 cast, in memory would take 38 MiB alone."""
    from vidattn import spill

    monkeypatch.setattr(spill, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setitem(ARRAYS, "rgb", dataclasses.replace(ARRAYS["rgb"], chunk_rows=256,
                                                           shard_chunks=4))
    t = 400  # 400 x 7 x 7 rows of 1024 float16 = 38 MiB
    rng = np.random.default_rng(1)
    buf = MapBuffer(0)
    for _ in range(t // 8):
        buf.append(rng.normal(0, 1, (8, 7, 7, D)).astype(np.float16))
    m = buf.result()
    store = open_store(tmp_path / "s", mode="a")
    tracemalloc.start()
    try:
        store.write_part("rgb", 0, [_row("v")], {"v": m})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    map_mib, peak_mib = m.nbytes / 2**20, peak / 2**20
    print(f"map {map_mib:.1f} MiB, peak traced while writing {peak_mib:.1f} MiB")
    assert map_mib > 38 and peak_mib < 0.3 * map_mib
    got = open_store(tmp_path / "s").read("v", "rgb", verify=True)
    np.testing.assert_array_equal(got, np.asarray(m).astype(np.float32))
