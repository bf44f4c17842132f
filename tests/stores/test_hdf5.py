"""HDF5 interchange: store -> .h5 -> store round trips, plain-h5py reading and refusals."""

from __future__ import annotations

import hashlib
import io
import json

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from vidattn.stores import StoreError, open_store
from vidattn.stores.hdf5 import H5FormatError, export_h5, h5_name, import_h5
from vidattn.stores.schema import ARRAYS

PROV = {"extractor": "i3d", "extractor_version": 2, "weights_sha256": "ab" * 32,
        "preprocessing": {"fps": 25.0}}
# (T, H, W) per video; "v/bad" failed extraction and has no map
SHAPES = {"v_a": (3, 2, 4), "v/slash": (1, 5, 3), "v_c": (4, 7, 7)}


def _map(shape, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (*shape, channels)).astype(np.float32)


def _row(vid: str, status: str = "done", error: str | None = None) -> dict:
    return {"video_id": vid, "status": status, "error": error, "n_frames": 16 + len(vid),
            "fps": 12.5}


def _manifest(ids) -> pd.DataFrame:
    return pd.DataFrame({
        "video_id": ids, "path": [f"videos/{v}.mp4" for v in ids], "split": ["train"] * len(ids),
        "labels": [[i % 2, 3] for i in range(len(ids))], "role": ["action"] * len(ids),
        "group": ids, "start_sec": [0.5] * len(ids), "end_sec": [None] * len(ids),
        "dataset": ["unit"] * len(ids), "n_frames": [None, 7, 8, 9][: len(ids)]})


@pytest.fixture
def synthetic(tmp_path):
    """rgb in parts 0 (v_a, v/bad, v/slash) and 1 (v_c); flow in part 0 only."""
    store = open_store(tmp_path / "src", mode="a")
    ids = ["v_a", "v/bad", "v/slash", "v_c"]
    store.merge_manifest(_manifest(ids))
    store.set_classes(["jump", "run", "sit", "walk"])
    store.write_table("pairs", pd.DataFrame({"video_id": ["v_a"], "conjugate_id": ["v_c"],
                                             "rule": ["unit"], "distance": [0.25]}))
    store.extend_plan(ids, 3)
    maps = {}
    for stream in ("rgb", "flow"):
        store.claim_stream(stream, {**PROV, "stream": stream})
        maps[stream] = {v: _map(s, ARRAYS[stream].channels, i)
                        for i, (v, s) in enumerate(SHAPES.items())}
        rows = [_row("v_a"), _row("v/bad", "failed", "decode: broken"), _row("v/slash")]
        store.write_part(stream, 0, rows, {v: maps[stream][v] for v in ("v_a", "v/slash")})
    store.write_part("rgb", 1, [_row("v_c")], {"v_c": maps["rgb"]["v_c"]})
    return store


def _index(store, stream: str) -> pd.DataFrame:
    cols = ["video_id", "status", "error", "t", "h", "w", "checksum", "n_frames", "fps"]
    return store.index(stream)[cols].sort_values("video_id").reset_index(drop=True)


def _assert_same_store(a, b, streams) -> None:
    for stream in streams:
        pd.testing.assert_frame_equal(_index(a, stream), _index(b, stream))
        assert a.provenance(stream) == b.provenance(stream)
        for vid in a.video_ids(stream):
            # bitwise: the float16 bytes that were stored, not merely close values
            x = a.read(vid, stream).astype(np.float16)
            y = b.read(vid, stream, verify=True).astype(np.float16)
            assert x.shape == y.shape and x.tobytes() == y.tobytes()
    pd.testing.assert_frame_equal(a.manifest(), b.manifest())
    pd.testing.assert_frame_equal(a.pairs(), b.pairs())
    assert a.classes == b.classes


# ------------------------------------------------------------------------- round trips
def test_tiny_store_round_trip(tiny_store, tmp_path):
    src = open_store(tiny_store)
    out = export_h5(tiny_store, str(tmp_path / "tiny.h5"))
    n = len(src.video_ids("rgb"))
    assert out["streams"] == ["rgb"] and out["videos"] == n and out["failed"] == 0
    # another part size than the source's 4: the maps do not depend on how parts fall
    res = import_h5(out["path"], str(tmp_path / "copy"), part_size=5)
    assert res["videos"] == n and res["parts"] == -(-n // 5) and res["incomplete"] == {}
    copy = open_store(tmp_path / "copy")
    _assert_same_store(src, copy, ["rgb"])
    assert copy.group.attrs["dataset"] == src.group.attrs["dataset"]
    assert copy.done_parts("rgb") == set(range(-(-n // 5)))


def test_round_trip_keeps_failures_slashes_and_two_streams(synthetic, tmp_path):
    out = export_h5(synthetic.url, str(tmp_path / "s.h5"))
    assert out["streams"] == ["rgb", "flow"]
    assert (out["videos"], out["failed"]) == (3 + 2, 2)
    res = import_h5(out["path"], str(tmp_path / "copy"), part_size=3)
    assert res["incomplete"] == {}  # flow has no video of part 1: nothing left out
    copy = open_store(tmp_path / "copy")
    _assert_same_store(synthetic, copy, ["rgb", "flow"])
    idx = copy.index("rgb").set_index("video_id")
    assert idx.loc["v/bad", "status"] == "failed" and idx.loc["v/bad", "error"] == "decode: broken"
    with pytest.raises(KeyError, match="decode: broken"):
        copy.read("v/bad")


def test_a_stream_held_for_fewer_videos_leaves_its_part_undone(synthetic, tmp_path):
    """flow exists for part 0 only; one part of 4 videos cannot be written whole for flow."""
    path = export_h5(synthetic.url, str(tmp_path / "s.h5"))["path"]
    res = import_h5(path, str(tmp_path / "copy"), part_size=4)
    assert res["incomplete"] == {"flow": ["v_a", "v/bad", "v/slash"]}
    copy = open_store(tmp_path / "copy")
    assert copy.done_parts("rgb") == {0} and copy.done_parts("flow") == set()
    assert sorted(copy.video_ids("rgb")) == ["v/slash", "v_a", "v_c"]


def test_import_again_skips_done_parts(synthetic, tmp_path):
    path = export_h5(synthetic.url, str(tmp_path / "s.h5"))["path"]
    first = import_h5(path, str(tmp_path / "copy"), part_size=3)
    assert first["parts"] == 2 + 1 and first["incomplete"] == {}  # flow: part 0 only
    again = import_h5(path, str(tmp_path / "copy"), part_size=3)
    assert again["parts"] == 0 and again["skipped_parts"] == 3 and again["videos"] == 0
    _assert_same_store(synthetic, open_store(tmp_path / "copy"), ["rgb", "flow"])


def test_export_selected_streams(synthetic, tmp_path):
    out = export_h5(synthetic.url, str(tmp_path / "rgb.h5"), streams=("flow",))
    with h5py.File(out["path"]) as f:
        assert list(f["features"]) == ["flow"]
    with pytest.raises(StoreError, match="no rgb_r50 features"):
        export_h5(synthetic.url, str(tmp_path / "x.h5"), streams=("rgb_r50",))
    assert not (tmp_path / "x.h5").exists()


# ----------------------------------------------------------------------- plain h5py
def test_plain_h5py_reads_the_layout(synthetic, tmp_path):
    path = export_h5(synthetic.url, str(tmp_path / "s.h5"))["path"]
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "vidattn-features"
        assert json.loads(f.attrs["classes"]) == ["jump", "run", "sit", "walk"]
        assert json.loads(f["features/rgb"].attrs["provenance"])["stream"] == "rgb"
        ds = f["features/rgb/v%2Fslash"]
        assert ds.attrs["video_id"] == "v/slash" and ds.attrs["status"] == "done"
        assert (ds.attrs["t"], ds.attrs["h"], ds.attrs["w"]) == SHAPES["v/slash"]
        assert ds.dtype == np.float16 and ds.shape == (*SHAPES["v/slash"], 1024)
        assert ds.chunks == (1, 5, 3, 1024) and ds.compression == "gzip"
        expected = synthetic.read("v/slash").astype(np.float16)
        assert np.array_equal(ds[()], expected)
        assert np.array_equal(ds[0], expected[0])  # one time step reads one chunk
        bad = f["features/rgb/v%2Fbad"]
        assert bad.shape is None and bad.attrs["status"] == "failed"
        assert list(f["features/rgb"]) == ["v_a", "v%2Fbad", "v%2Fslash", "v_c"]  # store order
        manifest = pq.read_table(io.BytesIO(f["tables/manifest"][()].tobytes())).to_pandas()
        pd.testing.assert_frame_equal(manifest, synthetic.manifest())
        cols = f["columns/manifest"]
        assert [v.decode() for v in cols["video_id"][()]] == ["v_a", "v/bad", "v/slash", "v_c"]
        assert json.loads(cols["labels"][1]) == [1, 3]
        assert np.isnan(cols["n_frames"][0]) and cols["n_frames"][1] == 7
        assert cols["start_sec"].dtype == np.float64 and np.isnan(cols["end_sec"][()]).all()
        assert "boxes" not in f["tables"]


@pytest.mark.parametrize("vid, name", [("a/b", "a%2Fb"), ("50%", "50%25"), ("..", "%2E%2E"),
                                       ("v_1.x", "v_1.x")])
def test_h5_names(vid, name):
    assert h5_name(vid) == name


# -------------------------------------------------------------------------- refusals
def test_store_with_other_provenance_is_refused_before_writing(synthetic, tmp_path):
    path = export_h5(synthetic.url, str(tmp_path / "s.h5"))["path"]
    target = open_store(tmp_path / "other", mode="a")
    target.claim_stream("flow", {**PROV, "weights_sha256": "cd" * 32, "stream": "flow"})
    with pytest.raises(StoreError, match="different provenance.*weights_sha256"):
        import_h5(path, str(tmp_path / "other"))
    # only the extractor version differs: still refused (an import never drops parts)
    old = open_store(tmp_path / "older", mode="a")
    old.claim_stream("rgb", {**PROV, "extractor_version": 1, "stream": "rgb"})
    old.write_part("rgb", 0, [_row("kept")], {"kept": _map((1, 1, 1), 1024, 9)})
    with pytest.raises(StoreError, match="refusing to import rgb.*extractor_version"):
        import_h5(path, str(tmp_path / "older"))
    assert open_store(tmp_path / "older").video_ids("rgb") == ["kept"]
    after = open_store(tmp_path / "other")
    assert after.provenance("rgb") is None  # the stream checked first was not claimed either
    assert after.index().empty and after.classes == []
    with pytest.raises(StoreError, match="no manifest"):
        after.manifest()


def test_store_with_other_classes_is_refused(synthetic, tmp_path):
    path = export_h5(synthetic.url, str(tmp_path / "s.h5"))["path"]
    open_store(tmp_path / "other", mode="a").set_classes(["a", "b"])
    with pytest.raises(StoreError, match="holds classes"):
        import_h5(path, str(tmp_path / "other"))


def _one_line_naming(e: pytest.ExceptionInfo, name: str) -> None:
    text = str(e.value)
    assert "\n" not in text and name in text


def test_truncated_and_foreign_files_give_one_line(synthetic, tmp_path):
    path = tmp_path / "s.h5"
    export_h5(synthetic.url, str(path))
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(H5FormatError, match="not a readable") as e:
        import_h5(str(cut), str(tmp_path / "new"))
    _one_line_naming(e, "cut.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n" + bytes(200))
    with pytest.raises(H5FormatError) as e:
        import_h5(str(junk), str(tmp_path / "new"))
    _one_line_naming(e, "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(H5FormatError, match="not a vidattn feature file") as e:
        import_h5(str(tmp_path / "other.h5"), str(tmp_path / "new"))
    _one_line_naming(e, "other.h5")
    assert not (tmp_path / "new").exists()  # nothing is created for a bad file


def test_damaged_chunk_names_file_and_dataset(synthetic, tmp_path):
    path = tmp_path / "s.h5"
    export_h5(synthetic.url, str(path))
    with h5py.File(path, "r") as f:
        info = f["features/rgb/v_c"].id.get_chunk_info(1)
    with open(path, "r+b") as fh:  # flip bytes inside one compressed chunk
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xFF for b in fh.read(8)))
    with pytest.raises(H5FormatError, match="features/rgb/v_c") as e:
        import_h5(str(path), str(tmp_path / "new"), part_size=10)
    _one_line_naming(e, "s.h5")


def test_non_finite_map_is_refused_by_the_store(synthetic, tmp_path):
    """A file edited to hold Inf (its sha256 updated to match) still meets write_part's check."""
    path = tmp_path / "s.h5"
    export_h5(synthetic.url, str(path))
    with h5py.File(path, "r+") as f:
        ds = f["features/rgb/v_a"]
        values = ds[()]
        values[0, 0, 0, 0] = np.inf
        ds[...] = values
        ds.attrs["sha256"] = hashlib.sha256(values.tobytes()).hexdigest()
    with pytest.raises(ValueError, match="NaN or Inf"):
        import_h5(str(path), str(tmp_path / "new"))
    assert open_store(tmp_path / "new").done_parts("rgb") == set()


def test_cli_round_trip(tiny_store, tmp_path):
    from click.testing import CliRunner

    from vidattn.cli import main

    h5 = tmp_path / "feats.h5"
    r = CliRunner().invoke(main, ["store", "export-h5", tiny_store, str(h5), "--streams", "rgb"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["store", "import-h5", str(h5), str(tmp_path / "copy")])
    assert r.exit_code == 0, r.output
    a, b = open_store(tiny_store), open_store(str(tmp_path / "copy"))
    vid = a.video_ids("rgb")[0]
    assert (a.read(vid) == b.read(vid)).all()
    r = CliRunner().invoke(main, ["store", "import-h5", str(tmp_path / "nope.h5"),
                                  str(tmp_path / "x")])
    assert r.exit_code == 1 and "nope.h5" in r.output
