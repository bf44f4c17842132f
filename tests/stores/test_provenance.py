"""A stream's provenance: claimed once, other provenance refused, and a changed
extractor version invalidating the stream's parts (vidattn/stores/provenance.py)."""

from __future__ import annotations

import numpy as np
import pytest

from vidattn.stores import StoreError, open_store
from vidattn.stores.zarr_store import PROVENANCE_KEYS, StoreNotice

from .store_data import PROV, part_row


# -------------------------------------------------------------------------- claims
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
    store.write_part("rgb", 1, [part_row("v_c")], {"v_c": maps["v_c"]})
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
        old_run.write_part("rgb", 1, [part_row("v_c")], {"v_c": maps["v_c"]})
    assert open_store(path).done_parts("rgb") == set()
