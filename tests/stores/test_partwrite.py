"""Failed writes of a part (disk full, other OS errors) commit nothing and say so
(vidattn/stores/partwrite.py)."""

from __future__ import annotations

import errno

import pytest

from vidattn.stores import StoreError, open_store

from .store_data import feature_map, lock_files, part_row


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
    m = feature_map(2, 2, 2, seed=0)
    store.write_part("rgb", 0, [part_row("x")], {"x": m})
    if where == "array":  # zarr's lowest write: one shard file per part
        hits = _fail_once(monkeypatch, zl, "_put", lambda a: "part-00001/c" in str(a[0]))
    else:  # the fragment's bytes, through fsspec's local file
        hits = _fail_once(monkeypatch, fsl.LocalFileOpener, "write",
                          lambda a: ".parquet.tmp-" in a[0].path)
    with pytest.raises(StoreError) as err:
        store.write_part("rgb", 1, [part_row("y")], {"y": m})
    assert len(hits) == 1
    msg = str(err.value)
    assert msg.startswith(str(path)) and "disk full" in msg and "rgb part 00001" in msg
    assert "\n" not in msg
    assert store.done_parts("rgb") == {0}
    assert not (path / "features" / "rgb" / "part-00001").exists()  # the partial array
    assert not list(path.rglob("*.tmp-*")) and not list(path.rglob("*.partial"))
    assert lock_files(path) == []
    # the space comes back: the part is written, the earlier one untouched
    assert store.write_part("rgb", 1, [part_row("y")], {"y": m})
    assert sorted(open_store(path).video_ids()) == ["x", "y"]
    open_store(path).read("x", verify=True)


def test_disk_full_while_redoing_a_done_part_leaves_it_undone_not_corrupt(tmp_path, monkeypatch):
    import zarr.storage._local as zl

    path = tmp_path / "s"
    store = open_store(path, mode="a")
    store.write_part("rgb", 0, [part_row("x")], {"x": feature_map(2, 2, 2, seed=0)})
    _fail_once(monkeypatch, zl, "_put", lambda a: "part-00000/c" in str(a[0]))
    with pytest.raises(StoreError, match="disk full"):
        store.write_part("rgb", 0, [part_row("x")], {"x": feature_map(2, 2, 2, seed=1)})
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
        store.write_part("rgb", 2, [part_row("x")], {"x": feature_map(1, 1, 1, seed=0)})
    assert "write failed while writing rgb part 00002" in str(err.value)
    assert "Input/output error" in str(err.value) and "disk full" not in str(err.value)
    assert store.done_parts("rgb") == set()
