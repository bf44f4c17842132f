"""Manifest-row helpers: a part's rows as dicts, and the segments they decode."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from vidattn.rows import bound, part_videos, segments, video_path


def _rows(root: Path) -> pd.DataFrame:
    return pd.DataFrame({
        "video_id": ["a", "b", "c", "d", "e"],
        "path": ["x.mp4", "x.mp4", str(root / "abs" / "y.mp4"), "x.mp4", "x.mp4"],
        "start_sec": [1.0, 1.0, None, 1.0, math.nan],
        "end_sec": [4.0, 4.0, None, 4.0, None],
        "fps": [25.0, 25.0, math.nan, 25.0, 30.0],
    }).set_index("video_id")


def test_part_videos_resolve_paths_and_bounds(tmp_path):
    rows = _rows(tmp_path)
    got = part_videos(["c", "a"], rows, tmp_path)
    assert [v["video_id"] for v in got] == ["c", "a"]  # the order asked for
    assert got[0] == {"video_id": "c", "path": str(tmp_path / "abs" / "y.mp4"),
                      "start_sec": None, "end_sec": None}
    assert got[1]["path"] == str(tmp_path / "x.mp4") and got[1]["start_sec"] == 1.0
    with_ref = part_videos(["c"], rows, tmp_path, {"c": {"keyframes": [2.0]}})
    assert with_ref[0]["keyframes"] == [2.0] and with_ref[0]["fps"] is None


def test_segments_share_only_consecutive_equal_rows(tmp_path):
    videos = part_videos(["a", "b", "c", "d", "e"], _rows(tmp_path), tmp_path)
    clip_of, clips = segments(videos)
    x = str(video_path("x.mp4", tmp_path))
    # a and b share one decode; d equals a but is not next to it; e has no bounds
    assert clip_of == [0, 0, 1, 2, 3]
    assert clips == [(x, 1.0, 4.0), (str(tmp_path / "abs" / "y.mp4"), None, None),
                     (x, 1.0, 4.0), (x, None, None)]


def test_segments_treat_nan_and_none_bounds_alike():
    videos = [{"path": "v.mp4", "start_sec": None, "end_sec": math.nan},
              {"path": "v.mp4", "start_sec": math.nan, "end_sec": pd.NA}]
    assert segments(videos) == ([0, 0], [("v.mp4", None, None)])
    assert segments([]) == ([], [])


@pytest.mark.parametrize("value,want", [(None, None), (math.nan, None), (pd.NA, None),
                                        ("2.5", 2.5), (3, 3.0)])
def test_bound(value, want):
    assert bound(value) == want
