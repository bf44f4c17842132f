"""The feature store: round trips, the index, checksums, resumability and refusals;
extractor-version invalidation, part and store locks, and failed (disk full) writes."""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import vidattn.stores.zarr_store as zs
from vidattn.stores import ChecksumError, FeatureStore, StoreError, open_store
from vidattn.stores.schema import ARRAYS, MANIFEST_SCHEMA, SCHEMA_VERSION, conform
from vidattn.stores.zarr_store import PROVENANCE_KEYS, LockTimeout, StoreNotice

D = ARRAYS["rgb"].channels  # 1024
SHAPES = {"v_a": (3, 2, 4), "v_b": (1, 5, 3), "v_c": (4, 7, 7)}  # (T, H, W), different sizes


def _map(t: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (t, h, w, D)).astype(np.float32)


def _row(vid: str, status: str = "done", error: str | None = None) -> dict:
    return {"video_id": vid, "status": status, "error": error, "n_frames": 64, "fps": 25.0}


@pytest.fixture
def written(tmp_path):
    """A store with part 0 = v_a, v_b, failed v_bad and part 1 = v_c."""
    maps = {v: _map(*s, seed=i) for i, (v, s) in enumerate(SHAPES.items())}
    store = open_store(tmp_path / "store", mode="a")
    store.write_part(
        "rgb", 0, [_row("v_a"), _row("v_bad", "failed", "decode: broken file"), _row("v_b")],
        {"v_a": maps["v_a"], "v_b": maps["v_b"]},
    )
    store.write_part("rgb", 1, [_row("v_c")], {"v_c": maps["v_c"]})
    return tmp_path / "store", maps


def _manifest(ids, path_of=lambda v: f"videos/{v}.mp4") -> pd.DataFrame:
    return pd.DataFrame({
        "video_id": ids,
        "path": [path_of(v) for v in ids],
        "split": ["train"] * len(ids),
        "labels": [[sum(map(ord, v)) % 3] for v in ids],  # a function of the id, not the row
        "role": ["action"] * len(ids),
        "group": [f"g{v}" for v in ids],
        "start_sec": [None] * len(ids),
        "end_sec": [None] * len(ids),
        "dataset": ["unit"] * len(ids),
    })


# ------------------------------------------------------------------ round trip and index
def test_round_trip_of_maps_of_different_sizes(written):
    path, maps = written
    store = open_store(path)
    for vid, m in maps.items():
        got = store.read(vid, "rgb")
        assert got.shape == m.shape
        assert got.dtype == np.float32
        # stored as float16: relative error below 2^-10, plus a floor near zero
        np.testing.assert_allclose(got, m, rtol=1e-3, atol=1e-4)
        np.testing.assert_array_equal(got, m.astype(np.float16).astype(np.float32))


def test_index_rows_keep_failures(written):
    path, maps = written
    store = open_store(path)
    idx = store.index("rgb").set_index("video_id")
    assert set(idx.index) == {"v_a", "v_b", "v_bad", "v_c"}
    assert idx.loc["v_bad", "status"] == "failed"
    assert idx.loc["v_bad", "error"] == "decode: broken file"
    assert idx.loc["v_bad", "offset"] == -1
    assert idx.loc["v_bad", "checksum"] is None or pd.isna(idx.loc["v_bad", "checksum"])
    for vid in ("v_a", "v_b", "v_c"):
        assert idx.loc[vid, "status"] == "done"
        assert pd.isna(idx.loc[vid, "error"])
        assert (idx.loc[vid, "t"], idx.loc[vid, "h"], idx.loc[vid, "w"]) == SHAPES[vid]
        assert len(idx.loc[vid, "checksum"]) == 64
    # videos of one part are laid out back to back, in row order
    assert idx.loc["v_a", "offset"] == 0
    assert idx.loc["v_b", "offset"] == math.prod(SHAPES["v_a"])
    assert idx.loc["v_c", "part"] == 1 and idx.loc["v_c", "offset"] == 0
    assert idx.loc["v_a", "n_frames"] == 64 and idx.loc["v_a", "fps"] == pytest.approx(25.0)
    assert sorted(store.video_ids("rgb")) == ["v_a", "v_b", "v_c"]
    assert store.video_ids("flow") == []
    assert store.done_parts("rgb") == {0, 1}
    with pytest.raises(KeyError, match="broken file"):
        store.read("v_bad")
    with pytest.raises(KeyError, match="no rgb features"):
        store.read("v_unknown")


def test_read_after_write_through_the_same_store_object(tmp_path):
    store = open_store(tmp_path / "s", mode="a")
    a, b = _map(2, 2, 2, seed=1), _map(1, 3, 3, seed=2)
    store.write_part("rgb", 0, [_row("a")], {"a": a})
    np.testing.assert_allclose(store.read("a"), a, rtol=1e-3, atol=1e-4)
    store.write_part("rgb", 1, [_row("b")], {"b": b})
    assert "b" in store.video_ids()
    np.testing.assert_allclose(store.read("b"), b, rtol=1e-3, atol=1e-4)
    # a part redone with another layout: reads must follow the new index, not a cached one
    c = _map(3, 1, 1, seed=3)
    store.write_part("rgb", 0, [_row("c"), _row("a")], {"c": c, "a": a})
    np.testing.assert_allclose(store.read("a", verify=True), a, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(store.read("c", verify=True), c, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- checksums
def test_verify_passes_on_intact_store(written):
    path, maps = written
    store = open_store(path)
    for vid in maps:
        store.read(vid, verify=True)


def test_verify_detects_tampered_index_checksum(written):
    path, _ = written
    frag = path / "index" / "rgb" / "part-00000.parquet"
    table = pq.read_table(frag)
    sums = table.column("checksum").to_pylist()
    sums = ["0" * 64 if s is not None else None for s in sums]
    table = table.set_column(table.schema.get_field_index("checksum"), "checksum",
                             pa.array(sums, pa.string()))
    pq.write_table(table, frag)
    store = open_store(path)
    store.read("v_c", verify=True)  # another part, untouched
    store.read("v_a")  # without verify the bytes are returned as they are
    with pytest.raises(ChecksumError, match="v_a"):
        store.read("v_a", verify=True)


def test_verify_detects_corrupted_array_bytes(written):
    path, maps = written
    arr = zarr.open_array(str(path / "features" / "rgb" / "part-00001"), mode="r+")
    arr[5, 7] = np.float16(arr[5, 7]) + np.float16(1.0)
    store = open_store(path)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        store.read("v_c", verify=True)


# ------------------------------------------------------------------------ resumability
def test_part_without_index_fragment_is_not_done(written):
    path, _ = written
    (path / "index" / "rgb" / "part-00001.parquet").unlink()
    store = open_store(path)
    assert (path / "features" / "rgb" / "part-00001").exists()  # the array is still there
    assert store.done_parts("rgb") == {0}
    assert "v_c" not in store.video_ids("rgb")
    with pytest.raises(KeyError):
        store.read("v_c")


def test_a_leftover_temp_fragment_does_not_mark_a_part_done(written):
    path, _ = written
    (path / "index" / "rgb" / "part-00007.parquet.tmp-deadbeef").write_bytes(b"half")
    assert open_store(path).done_parts("rgb") == {0, 1}


# -------------------------------------------------------------------------- provenance
PROV = {
    "extractor": "i3d",
    "extractor_version": 1,
    "weights_sha256": "ab" * 32,
    "preprocessing": {"fps": 25.0, "short_side": 256, "crop": 224},
    "vidattn_version": "0.1.0",
}


def test_claim_stream_accepts_identical_and_refuses_different(tmp_path):
    url = tmp_path / "store"
    store = open_store(url, mode="a")
    store.claim_stream("rgb", PROV)
    assert store.provenance("rgb") == PROV
    assert store.provenance("flow") is None

    again = open_store(url, mode="a")
    again.claim_stream("rgb", dict(PROV))  # identical: fine
    again.claim_stream("rgb", {**PROV, "vidattn_version": "9.9.9"})  # not compared
    assert open_store(url).provenance("rgb")["vidattn_version"] == "0.1.0"

    for key, value in [("weights_sha256", "cd" * 32), ("extractor", "i3d_r50"),
                       ("preprocessing", {**PROV["preprocessing"], "fps": 30.0})]:
        with pytest.raises(StoreError) as e:
            again.claim_stream("rgb", {**PROV, key: value})
        assert key in str(e.value)
        assert str(url) in str(e.value)
    # a different stream is claimed independently
    again.claim_stream("flow", {**PROV, "weights_sha256": "ef" * 32})
    assert open_store(url).provenance("flow")["weights_sha256"] == "ef" * 32
    assert set(PROVENANCE_KEYS) <= set(PROV)


# --------------------------------------------------------------------- spec and tables
@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.full((1, 2, 2, D), np.nan, np.float32), "NaN or Inf"),
        (np.full((1, 2, 2, D), np.inf, np.float32), "NaN or Inf"),
        (np.zeros((1, 2, 2, D - 1), np.float32), "channels"),
        (np.zeros((2, 2, D), np.float32), "shape"),
        (np.zeros((1, 1, 2, 2, D), np.float32), "shape"),
        (np.zeros((0, 2, 2, D), np.float32), "empty"),
        (np.zeros((1, 2, 2, D), np.int32), "floating"),
        (np.full((1, 1, 1, D), 1e6, np.float32), "range"),
    ],
)
def test_spec_check_refuses(values, match):
    with pytest.raises(ValueError, match=match):
        ARRAYS["rgb"].check(values)


def test_write_part_refuses_nan_and_writes_nothing(tmp_path):
    store = open_store(tmp_path / "s", mode="a")
    bad = _map(1, 2, 2, seed=0)
    bad[0, 1, 1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.write_part("rgb", 0, [_row("x")], {"x": bad})
    assert store.done_parts("rgb") == set()


def test_conform_refuses_missing_and_extra_columns():
    df = _manifest(["a"])
    table = conform("manifest", df)
    assert table.schema == MANIFEST_SCHEMA
    with pytest.raises(ValueError, match=r"missing columns \['split'\]"):
        conform("manifest", df.drop(columns=["split"]))
    with pytest.raises(ValueError, match=r"unexpected columns \['colour'\]"):
        conform("manifest", df.assign(colour="red"))
    # column order does not matter
    shuffled = df[list(reversed(df.columns))]
    assert conform("manifest", shuffled).schema == MANIFEST_SCHEMA


def test_merge_manifest_appends_and_refuses_changed_rows(tmp_path):
    store = open_store(tmp_path / "s", mode="a")
    store.merge_manifest(_manifest(["a", "b"]))
    merged = store.merge_manifest(_manifest(["b", "c"]))
    assert merged.video_id.tolist() == ["a", "b", "c"]
    assert open_store(tmp_path / "s").manifest().video_id.tolist() == ["a", "b", "c"]
    with pytest.raises(StoreError, match=r"'b'.*\(path\)"):
        store.merge_manifest(_manifest(["b"], path_of=lambda v: "elsewhere.mp4"))
    changed = _manifest(["c"]).assign(start_sec=[1.5], end_sec=[3.0])
    with pytest.raises(StoreError, match="'c'.*start_sec"):
        store.merge_manifest(changed)
    assert store.manifest().video_id.tolist() == ["a", "b", "c"]  # nothing written


def test_manifest_missing_raises(tmp_path):
    with pytest.raises(StoreError, match="manifest"):
        open_store(tmp_path / "s", mode="a").manifest()


def test_extend_plan_is_deterministic_and_appends_new_parts(tmp_path):
    ids = [f"v{i}" for i in range(7)]
    plans = []
    for name in ("s1", "s2"):
        store = open_store(tmp_path / name, mode="a")
        plans.append(store.extend_plan(ids, part_size=3))
    pd.testing.assert_frame_equal(plans[0], plans[1])
    assert plans[0].part.tolist() == [0, 0, 0, 1, 1, 1, 2]
    store = open_store(tmp_path / "s1", mode="a")
    again = store.extend_plan(ids, part_size=3)  # nothing new: unchanged
    assert again.part.tolist() == plans[0].part.tolist()
    grown = store.extend_plan(ids[::-1] + ["n0", "n1", "n2", "n3"], part_size=3)
    assert grown.video_id.tolist() == ids + ["n0", "n1", "n2", "n3"]
    assert grown.part.tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 4]
    assert open_store(tmp_path / "s1").plan().part.tolist() == grown.part.tolist()


# ----------------------------------------------------------------------- opening a store
def test_opening_a_non_store_raises(tmp_path):
    with pytest.raises(StoreError, match="no vidattn store"):
        open_store(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("not a store")
    with pytest.raises(StoreError, match="no vidattn store"):
        FeatureStore(tmp_path / "plain")


def test_other_schema_version_is_refused(tmp_path):
    open_store(tmp_path / "s", mode="a")
    group = zarr.open_group(str(tmp_path / "s"), mode="a")
    group.attrs["schema_version"] = SCHEMA_VERSION + 1
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match="schema version"):
            open_store(tmp_path / "s", mode=mode)


def test_new_store_attributes(tmp_path):
    store = open_store(tmp_path / "s", mode="a")
    attrs = zarr.open_group(str(tmp_path / "s"), mode="r").attrs
    assert attrs["schema_version"] == SCHEMA_VERSION
    assert attrs["provenance"] == {} and attrs["classes"] == []
    store.set_classes(["a", "b"])
    store.set_classes(["a", "b"])
    with pytest.raises(StoreError):
        store.set_classes(["b", "a"])
    assert open_store(tmp_path / "s").classes == ["a", "b"]


def test_array_layout_on_disk(written):
    path, maps = written
    arr = zarr.open_array(str(path / "features" / "rgb" / "part-00000"), mode="r")
    rows = math.prod(SHAPES["v_a"]) + math.prod(SHAPES["v_b"])
    assert arr.shape == (rows, D)
    assert arr.metadata.dimension_names == ("voxel", "channel")
    assert arr.dtype == np.float16
    assert arr.chunks == (ARRAYS["rgb"].chunk_rows, D)
    assert arr.shards is not None
    assert arr.shards[0] >= rows and arr.shards[1] == D  # one shard holds the whole part
    assert any(type(c).__name__ == "ZstdCodec" for c in arr.compressors)
    assert (path / "features" / "rgb" / "part-00000" / "c" / "0" / "0").is_file()
    assert not (path / "features" / "rgb" / "part-00000" / "c" / "1").exists()


def test_undecodable_stored_bytes_raise_checksum_error_naming_the_video(written):
    path, _ = written
    shard = path / "features" / "rgb" / "part-00001" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) - 40] ^= 0xFF  # inside the zstd frame: it no longer decodes
    shard.write_bytes(bytes(raw))
    store = open_store(path)
    store.read("v_a", verify=True)  # part 0 is untouched
    with pytest.raises(ChecksumError, match=r"'v_c' \(rgb, part 1\).*do not decode"):
        store.read("v_c")
    from vidattn.data.maps import StoreMaps, entries  # the batched reader names it too

    maps = StoreMaps(store.url, "rgb", entries(store, "rgb", ["v_a", "v_c"]), D)
    with pytest.raises(ChecksumError, match=r"'v_c' \(rgb, part 1\).*do not decode"):
        dict(maps.read_many(["v_a", "v_c"]))


# ------------------------------------------------------ extractor version invalidation
def test_changed_extractor_version_invalidates_the_streams_parts(written):
    path, maps = written
    store = open_store(path, mode="a")
    store.claim_stream("rgb", PROV)
    store.claim_stream("flow", PROV)
    new = {**PROV, "extractor_version": 2}
    with pytest.warns(StoreNotice, match="2 part"):
        notice = store.claim_stream("rgb", new)
    assert notice is not None and "\n" not in notice
    assert str(path) in notice and "extractor_version 1" in notice and "is 2" in notice
    assert store.done_parts("rgb") == set() and store.video_ids("rgb") == []
    # the arrays stay until a redo overwrites them; the new provenance is recorded
    assert (path / "features" / "rgb" / "part-00000").exists()
    again = open_store(path)
    assert again.provenance("rgb") == new and again.provenance("flow") == PROV
    assert again.group.attrs["pending_invalidation"] == {}
    assert again.index().empty
    # the same new version again: nothing more to invalidate, no notice
    assert open_store(path, mode="a").claim_stream("rgb", dict(new)) is None
    # a redo writes the part again, readable
    store.write_part("rgb", 1, [_row("v_c")], {"v_c": maps["v_c"]})
    np.testing.assert_array_equal(store.read("v_c", verify=True),
                                  maps["v_c"].astype(np.float16).astype(np.float32))


def test_version_change_with_other_weights_is_refused_and_keeps_every_part(written):
    path, _ = written
    store = open_store(path, mode="a")
    store.claim_stream("rgb", PROV)
    other = {**PROV, "extractor_version": 2, "weights_sha256": "cd" * 32}
    with pytest.raises(StoreError, match="weights_sha256"):
        store.claim_stream("rgb", other)
    assert store.done_parts("rgb") == {0, 1}
    assert open_store(path).provenance("rgb") == PROV


def test_an_interrupted_invalidation_is_finished_by_the_next_claim(written):
    path, _ = written
    store = open_store(path, mode="a")
    new = {**PROV, "extractor_version": 2}
    # as left by a crash right after the new provenance was recorded
    store.group.attrs.update({"provenance": {"rgb": new}, "pending_invalidation": {"rgb": 1}})
    assert open_store(path).done_parts("rgb") == {0, 1}
    with pytest.warns(StoreNotice, match="2 part"):
        open_store(path, mode="a").claim_stream("rgb", new)
    assert open_store(path).done_parts("rgb") == set()
    assert open_store(path).group.attrs["pending_invalidation"] == {}


def test_an_old_version_run_cannot_write_after_the_version_changed(written):
    path, maps = written
    old_run = open_store(path, mode="a")
    old_run.claim_stream("rgb", PROV)
    with pytest.warns(StoreNotice):
        open_store(path, mode="a").claim_stream("rgb", {**PROV, "extractor_version": 2})
    with pytest.raises(StoreError, match="provenance changed since this run claimed it"):
        old_run.write_part("rgb", 1, [_row("v_c")], {"v_c": maps["v_c"]})
    assert open_store(path).done_parts("rgb") == set()


# ------------------------------------------------------------------------------ locks
def _lock_files(path) -> list[str]:
    return sorted(p.name for p in (path / "locks").rglob("*") if p.is_file())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_lock(path, stream: str, part: int, **holder) -> None:
    lock = path / "locks" / stream / f"part-{part:05d}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "time": time.time(), "token": "planted", **holder}))


def test_write_part_waits_for_the_part_lock_then_skips_a_part_another_run_finished(tmp_path):
    a = open_store(tmp_path / "s", mode="a")
    b = open_store(tmp_path / "s", mode="a")
    assert b.done_parts("rgb") == set()  # b planned before a wrote
    ma, mb = _map(1, 2, 2, seed=1), _map(1, 2, 2, seed=2)
    out: dict = {}
    with a.part_lock("rgb", 0):
        thread = threading.Thread(
            target=lambda: out.update(wrote=b.write_part("rgb", 0, [_row("x")], {"x": mb})))
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "b must wait for the lock a holds"
        assert a.done_parts("rgb") == set()
        assert a.write_part("rgb", 0, [_row("x")], {"x": ma})  # re-entrant for its holder
    thread.join(10)
    assert out == {"wrote": False}  # b found a's fragment: a finished the part
    got = open_store(tmp_path / "s").read("x", verify=True)
    np.testing.assert_array_equal(got, ma.astype(np.float16).astype(np.float32))
    assert _lock_files(tmp_path / "s") == []


def test_an_unseen_fragment_with_a_failed_video_is_redone(tmp_path):
    # --retry-failed from a worker's fresh store object: the failure must be retried
    open_store(tmp_path / "s", mode="a").write_part(
        "rgb", 0, [_row("x", "failed", "decode: broken")], {})
    fresh = open_store(tmp_path / "s", mode="a")
    assert fresh.write_part("rgb", 0, [_row("x")], {"x": _map(1, 1, 1, seed=0)})
    assert open_store(tmp_path / "s").video_ids() == ["x"]
    assert not fresh.write_part("rgb", 0, [_row("x")], {}, replace=False)
    assert open_store(tmp_path / "s").video_ids() == ["x"]


def test_a_live_lock_times_out_with_a_clear_error(tmp_path):
    store = open_store(tmp_path / "s", mode="a", lock_timeout_s=0.3)
    _plant_lock(tmp_path / "s", "rgb", 3, host="elsewhere")  # fresh, another host
    t0 = time.monotonic()
    with pytest.raises(LockTimeout) as err:
        store.write_part("rgb", 3, [_row("x")], {"x": _map(1, 1, 1, seed=0)})
    assert 0.3 <= time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "part-00003.lock" in msg and "elsewhere" in msg and "\n" not in msg
    assert store.done_parts("rgb") == set()
    assert _lock_files(tmp_path / "s") == ["part-00003.lock"]  # someone else's: kept


@pytest.mark.parametrize("holder", ["dead-pid", "too-old", "empty"])
def test_a_stale_lock_is_broken(tmp_path, holder):
    store = open_store(tmp_path / "s", mode="a", lock_timeout_s=5, stale_lock_s=60)
    if holder == "dead-pid":
        _plant_lock(tmp_path / "s", "rgb", 0, pid=_dead_pid())
    elif holder == "too-old":
        _plant_lock(tmp_path / "s", "rgb", 0, host="elsewhere", time=time.time() - 61)
    else:  # a creator died between O_EXCL and writing its details
        lock = tmp_path / "s" / "locks" / "rgb" / "part-00000.lock"
        lock.parent.mkdir(parents=True)
        lock.write_bytes(b"")
        os.utime(lock, (time.time() - 31, time.time() - 31))
    t0 = time.monotonic()
    assert store.write_part("rgb", 0, [_row("x")], {"x": _map(1, 1, 1, seed=0)})
    assert time.monotonic() - t0 < 2
    assert store.done_parts("rgb") == {0}
    assert _lock_files(tmp_path / "s") == []


def test_plan_and_manifest_wait_for_the_store_lock(tmp_path):
    a = open_store(tmp_path / "s", mode="a")
    b = open_store(tmp_path / "s", mode="a")
    done = threading.Event()

    def other_run():
        b.merge_manifest(_manifest(["v0", "v1", "v2"]))
        b.extend_plan(["v0", "v1", "v2"], part_size=2)
        done.set()

    with a.lock(zs.STORE_LOCK):
        thread = threading.Thread(target=other_run)
        thread.start()
        time.sleep(0.3)
        assert not done.is_set() and a.plan().empty  # b waits: nothing written
        a.merge_manifest(_manifest(["v2", "v3"]))
        a.extend_plan(["v2", "v3"], part_size=2)
    thread.join(10)
    assert done.is_set()
    plan = open_store(tmp_path / "s").plan()
    # one part per video, never two: b saw a's plan before extending it
    assert plan.video_id.tolist() == ["v2", "v3", "v0", "v1"]
    assert plan.part.tolist() == [0, 0, 1, 1]
    assert sorted(open_store(tmp_path / "s").manifest().video_id) == ["v0", "v1", "v2", "v3"]


def test_concurrent_claims_of_two_streams_keep_both(tmp_path):
    a = open_store(tmp_path / "s", mode="a")
    b = open_store(tmp_path / "s", mode="a")  # opened before a's claim: old attributes
    a.claim_stream("rgb", PROV)
    b.claim_stream("flow", {**PROV, "weights_sha256": "ef" * 32})
    b.set_classes(["a", "b"])
    stored = open_store(tmp_path / "s")
    assert stored.provenance("rgb") == PROV
    assert stored.provenance("flow")["weights_sha256"] == "ef" * 32
    assert stored.classes == ["a", "b"]


# -------------------------------------------------------------------- failed writes
def _fail_once(monkeypatch, target, name: str, when) -> list[str]:
    """Make ``target.name`` raise ENOSPC the first time ``when(args)`` holds."""
    real, hits = getattr(target, name), []

    def failing(*args, **kwargs):
        if not hits and when(args):
            hits.append(str(args[0]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)
    return hits


@pytest.mark.parametrize("where", ["array", "fragment"])
def test_disk_full_commits_nothing_and_says_so(tmp_path, monkeypatch, where):
    import fsspec.implementations.local as fsl
    import zarr.storage._local as zl

    path = tmp_path / "s"
    store = open_store(path, mode="a")
    m = _map(2, 2, 2, seed=0)
    store.write_part("rgb", 0, [_row("x")], {"x": m})
    if where == "array":  # zarr's lowest write: one shard file per part
        hits = _fail_once(monkeypatch, zl, "_put", lambda a: "part-00001/c" in str(a[0]))
    else:  # the fragment's bytes, through fsspec's local file
        hits = _fail_once(monkeypatch, fsl.LocalFileOpener, "write",
                          lambda a: ".parquet.tmp-" in a[0].path)
    with pytest.raises(StoreError) as err:
        store.write_part("rgb", 1, [_row("y")], {"y": m})
    assert len(hits) == 1
    msg = str(err.value)
    assert msg.startswith(str(path)) and "disk full" in msg and "rgb part 00001" in msg
    assert "\n" not in msg
    assert store.done_parts("rgb") == {0}
    assert not (path / "features" / "rgb" / "part-00001").exists()  # the partial array
    assert not list(path.rglob("*.tmp-*")) and not list(path.rglob("*.partial"))
    assert _lock_files(path) == []
    # the space comes back: the part is written, the earlier one untouched
    assert store.write_part("rgb", 1, [_row("y")], {"y": m})
    assert sorted(open_store(path).video_ids()) == ["x", "y"]
    open_store(path).read("x", verify=True)


def test_disk_full_while_redoing_a_done_part_leaves_it_undone_not_corrupt(tmp_path, monkeypatch):
    import zarr.storage._local as zl

    path = tmp_path / "s"
    store = open_store(path, mode="a")
    store.write_part("rgb", 0, [_row("x")], {"x": _map(2, 2, 2, seed=0)})
    _fail_once(monkeypatch, zl, "_put", lambda a: "part-00000/c" in str(a[0]))
    with pytest.raises(StoreError, match="disk full"):
        store.write_part("rgb", 0, [_row("x")], {"x": _map(2, 2, 2, seed=1)})
    # the old fragment went first: no fragment may point at a half-rewritten array
    assert open_store(path).done_parts("rgb") == set()
    assert open_store(path).index().empty


def test_another_os_error_is_reported_as_a_failed_write(tmp_path, monkeypatch):
    import zarr.storage._local as zl

    store = open_store(tmp_path / "s", mode="a")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(zl, "_put", broken)
    with pytest.raises(StoreError) as err:
        store.write_part("rgb", 2, [_row("x")], {"x": _map(1, 1, 1, seed=0)})
    assert "write failed while writing rgb part 00002" in str(err.value)
    assert "Input/output error" in str(err.value) and "disk full" not in str(err.value)
    assert store.done_parts("rgb") == set()


def test_a_folder_of_other_files_is_not_made_a_store(tmp_path):
    from vidattn.stores.zarr_store import StoreError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("\\documentclass{article}")
    with pytest.raises(StoreError, match="not a vidattn store .*thesis.tex"):
        open_store(tmp_path / "mine", mode="a")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]
    (tmp_path / "empty").mkdir()
    open_store(tmp_path / "empty", mode="a")  # an empty folder is fine
    assert (tmp_path / "empty" / "zarr.json").is_file()
