"""Fixtures of the store's tests."""

from __future__ import annotations

import pytest

from vidattn.stores import open_store

from .store_data import SHAPES, feature_map, part_row


@pytest.fixture
def written(tmp_path):
    """A store with part 0 = v_a, v_b, failed v_bad and part 1 = v_c."""
    maps = {v: feature_map(*s, seed=i) for i, (v, s) in enumerate(SHAPES.items())}
    store = open_store(tmp_path / "store", mode="a")
    store.write_part(
        "rgb", 0,
        [part_row("v_a"), part_row("v_bad", "failed", "decode: broken file"), part_row("v_b")],
        {"v_a": maps["v_a"], "v_b": maps["v_b"]},
    )
    store.write_part("rgb", 1, [part_row("v_c")], {"v_c": maps["v_c"]})
    return tmp_path / "store", maps
