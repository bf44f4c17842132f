"""Maps held in memory up to a limit, then in a temporary file, read back in blocks."""

from __future__ import annotations

import numpy as np
import pytest

from vidattn.spill import MapBuffer, SpilledMap, row_blocks


def _pieces(seed: int = 0, sizes=(3, 1, 4, 2)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((t, 2, 3, 5)).astype(np.float16) for t in sizes]


def _fill(limit, pieces) -> MapBuffer:
    buf = MapBuffer(limit)
    for p in pieces:
        buf.append(p)
    return buf


def test_under_the_limit_the_map_stays_an_array():
    pieces = _pieces()
    buf = _fill(10_000, pieces)
    got = buf.result()
    assert isinstance(got, np.ndarray) and not buf.spilled
    np.testing.assert_array_equal(got, np.concatenate(pieces))
    assert buf.pieces == []  # the buffer no longer holds a second copy


@pytest.mark.parametrize("limit", [0, 100, 350])
def test_past_the_limit_the_map_is_spilled_in_order(limit):
    """Spilling from the first piece, or part way through (earlier pieces are written out
    first), keeps the pieces in time order."""
    pieces = _pieces()
    buf = _fill(limit, pieces)
    got = buf.result()
    assert buf.spilled and isinstance(got, SpilledMap)
    want = np.concatenate(pieces)
    assert got.shape == want.shape and got.dtype == want.dtype and got.nbytes == want.nbytes
    np.testing.assert_array_equal(np.asarray(got), want)
    flat = want.reshape(-1, 5)
    np.testing.assert_array_equal(got.rows(7, 31), flat[7:31])
    assert got.rows(5, 5).shape == (0, 5)
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), want.astype(np.float32))


def test_row_blocks_are_the_same_for_both_kinds():
    pieces = _pieces(1, sizes=(5, 6))
    held, spilled = _fill(None, pieces).result(), _fill(0, pieces).result()
    for rows in (1, 7, 66, 1000):
        a, b = list(row_blocks(held, rows)), list(row_blocks(spilled, rows))
        assert [len(x) for x in a] == [len(x) for x in b]
        assert max(len(x) for x in a) <= rows
        np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
        np.testing.assert_array_equal(np.concatenate(a), held.reshape(-1, 5))
    assert all(np.shares_memory(x, held) for x in row_blocks(held, 7))  # views, no copy


def test_a_piece_that_does_not_continue_the_map_is_refused():
    buf = MapBuffer()
    buf.append(np.zeros((2, 2, 3, 5), np.float16))
    with pytest.raises(ValueError, match="does not continue"):
        buf.append(np.zeros((2, 2, 4, 5), np.float16))
    with pytest.raises(ValueError, match="does not continue"):
        buf.append(np.zeros((2, 2, 3, 5), np.float32))
    with pytest.raises(ValueError, match="no map pieces"):
        MapBuffer().result()
    with pytest.raises(ValueError, match=">= 0"):
        MapBuffer(-1)


def test_the_store_checks_a_spilled_map_block_by_block(monkeypatch):
    from vidattn import spill
    from vidattn.stores.schema import ARRAYS

    monkeypatch.setattr(spill, "BLOCK_BYTES", 64 * 2048)  # 64 rows of C = 1024 per block
    spec = ARRAYS["rgb"]
    bad = np.zeros((40, 7, 7, spec.channels), np.float16)
    bad[39, 6, 6, 100] = np.inf  # in the last of 31 blocks
    spilled = _fill(0, [bad[:20], bad[20:]]).result()
    with pytest.raises(ValueError, match="NaN or Inf"):
        spec.check(spilled)
    spec.check(_fill(0, [np.ones((40, 7, 7, spec.channels), np.float16)]).result())
