"""Stores addressed by fsspec URL: file:// goes through LocalStore, others through FsspecStore."""

from __future__ import annotations

import numpy as np

from vidattn.stores import open_store

ROW = {"video_id": "a", "status": "done", "error": None, "n_frames": 8, "fps": 25.0}


def _fill(url: str) -> np.ndarray:
    m = np.random.default_rng(0).random((2, 3, 5, 1024)).astype(np.float32)
    store = open_store(url, "a")
    store.claim_stream("rgb", {"extractor": "i3d"})
    store.write_part("rgb", 0, [ROW], {"a": m})
    return m


def test_file_url_round_trip(tmp_path):
    m = _fill(f"file://{tmp_path}/s")
    store = open_store(f"file://{tmp_path}/s")
    assert store.local and store.video_ids() == ["a"]
    np.testing.assert_allclose(store.read("a", verify=True), m, atol=1e-3)
    # the same store opened by plain path sees the same thing
    assert open_store(tmp_path / "s").index().equals(store.index())


def test_remote_style_url_round_trip():
    m = _fill("memory://vidattn-test/s")
    store = open_store("memory://vidattn-test/s")
    assert not store.local
    np.testing.assert_allclose(store.read("a", verify=True), m, atol=1e-3)
    assert store.provenance("rgb") == {"extractor": "i3d"}


def test_manifest_label_change_is_refused(tmp_path):
    import pandas as pd
    import pytest

    from vidattn.stores import StoreError

    row = {"video_id": "v", "path": "v.mp4", "split": "train", "labels": [[1]],
           "role": "action", "group": "v", "start_sec": [None], "end_sec": [None],
           "dataset": "x"}
    store = open_store(tmp_path / "s", "a")
    store.merge_manifest(pd.DataFrame(row))
    with pytest.raises(StoreError, match="labels"):
        store.merge_manifest(pd.DataFrame({**row, "labels": [[2]]}))
