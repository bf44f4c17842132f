"""The feature store: round trips, the index, checksums, resumability, the spec and
the tables, opening a store."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from vidattn.stores import ChecksumError, FeatureStore, StoreError, open_store
from vidattn.stores.schema import ARRAYS, MANIFEST_SCHEMA, SCHEMA_VERSION, conform

from .store_data import SHAPES, D, feature_map, manifest_of, part_row


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
    a, b = feature_map(2, 2, 2, seed=1), feature_map(1, 3, 3, seed=2)
    store.write_part("rgb", 0, [part_row("a")], {"a": a})
    np.testing.assert_allclose(store.read("a"), a, rtol=1e-3, atol=1e-4)
    store.write_part("rgb", 1, [part_row("b")], {"b": b})
    assert "b" in store.video_ids()
    np.testing.assert_allclose(store.read("b"), b, rtol=1e-3, atol=1e-4)
    # a part redone with another layout: reads must follow the new index, not a cached one
    c = feature_map(3, 1, 1, seed=3)
    store.write_part("rgb", 0, [part_row("c"), part_row("a")], {"c": c, "a": a})
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
    bad = feature_map(1, 2, 2, seed=0)
    bad[0, 1, 1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.write_part("rgb", 0, [part_row("x")], {"x": bad})
    assert store.done_parts("rgb") == set()


def test_conform_refuses_missing_and_extra_columns():
    df = manifest_of(["a"])
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
    store.merge_manifest(manifest_of(["a", "b"]))
    merged = store.merge_manifest(manifest_of(["b", "c"]))
    assert merged.video_id.tolist() == ["a", "b", "c"]
    assert open_store(tmp_path / "s").manifest().video_id.tolist() == ["a", "b", "c"]
    with pytest.raises(StoreError, match=r"'b'.*\(path\)"):
        store.merge_manifest(manifest_of(["b"], path_of=lambda v: "elsewhere.mp4"))
    changed = manifest_of(["c"]).assign(start_sec=[1.5], end_sec=[3.0])
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
