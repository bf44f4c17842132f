"""The first part's decoding, started before the model loads (vidattn/pipeline/headstart.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidattn.datasets import load_dataset
from vidattn.pipeline import headstart
from vidattn.pipeline.extract import ExtractConfig, run
from vidattn.pipeline.subdecode import DecodeFeed
from vidattn.rows import bound, video_path
from vidattn.stores import open_store
from vidattn.video import DecodeConfig

FAST = {"part_size": 3, "device": "cpu", "i3d_rgb": "random", "short_side": 64}


def _segments_of_part(store, part: int, root: Path) -> list[tuple]:
    """What the run decoded for ``part``: its videos' segments, in plan order."""
    plan = store.plan()
    man = store.manifest().set_index("video_id")
    out = []
    for vid in plan.loc[plan.part == part, "video_id"]:
        row = man.loc[vid]
        seg = (str(video_path(row.path, root)), bound(row.start_sec), bound(row.end_sec))
        if not out or out[-1] != seg:
            out.append(seg)
    return out


def test_the_guess_is_the_part_the_run_plans_first(tiny_sample, tmp_path):
    ds = load_dataset("sample", str(tiny_sample))
    root, url = Path(ds.root), str(tmp_path / "s")
    man = ds.manifest.head(7)
    # a new store: the first part_size rows of the manifest
    guess = headstart.first_segments(url, man.head(4), root, 3, ("rgb",))
    run(ExtractConfig(root=str(tiny_sample), store=url, limit=4, **FAST))
    store = open_store(url)
    assert len(guess) == 3 and guess == _segments_of_part(store, 0, root)
    # resumed with more rows: the parts done are skipped, new rows start the next part
    guess = headstart.first_segments(url, man, root, 3, ("rgb",))
    res = run(ExtractConfig(root=str(tiny_sample), store=url, limit=7, **FAST))
    assert res.n_extracted == 3 and guess == _segments_of_part(open_store(url), 2, root)
    # nothing left to do: the next part would be new rows, and there are none
    assert headstart.first_segments(url, man, root, 3, ("rgb",)) == []


def test_depth_keeps_the_frames_waiting_in_the_budget():
    chunk = 128 * 224 * 224 * 3
    assert headstart.depth_for(DecodeConfig(), 128) == headstart.HEAD_START_BYTES // chunk
    # no crop: frames up to twice as wide as high are assumed
    assert headstart.depth_for(DecodeConfig(crop=None), 128) == (
        headstart.HEAD_START_BYTES // (128 * 256 * 512 * 3))
    assert headstart.depth_for(DecodeConfig(short_side=4096, crop=None), 128) == 2


@pytest.fixture
def feeds(monkeypatch):
    """Every DecodeFeed the run makes, and which of them opened clips."""
    made, opened, started = [], [], []
    init, open_, prefetch = DecodeFeed.__init__, DecodeFeed.open, DecodeFeed.prefetch

    def spy_init(self, *a, **k):
        init(self, *a, **k)
        made.append(self)

    def spy_open(self, i):
        opened.append(self)
        return open_(self, i)

    def spy_prefetch(self):
        started.append(self)
        return prefetch(self)

    monkeypatch.setattr(DecodeFeed, "__init__", spy_init)
    monkeypatch.setattr(DecodeFeed, "open", spy_open)
    monkeypatch.setattr(DecodeFeed, "prefetch", spy_prefetch)
    return made, opened, started


def _maps(url: str) -> dict[str, np.ndarray]:
    store = open_store(url)
    return {v: store.read(v, verify=True) for v in store.video_ids("rgb")}


@pytest.mark.parametrize("guess", ["right", "wrong", "file changed"])
def test_the_first_part_decodes_from_start_up_only_when_the_guess_holds(
        tiny_sample, tmp_path, monkeypatch, feeds, guess):
    made, opened, started = feeds
    root = tmp_path / "sample"  # a copy: the session's sample must keep its mtimes
    shutil.copytree(tiny_sample, root)
    if guess == "wrong":  # the same clips in another order must not be used
        first = headstart.first_segments
        monkeypatch.setattr(headstart, "first_segments",
                            lambda *a: list(reversed(first(*a))))
    touched = []
    if guess == "file changed":  # after the head start: its frames may be the old file's
        begin = headstart.start

        def start_then_touch(*a, **k):
            head = begin(*a, **k)
            path = head.feed.items[1][0]
            st = os.stat(path)
            os.utime(path, (st.st_atime, st.st_mtime + 10))
            touched.append((path, st.st_mtime + 10))
            return head

        monkeypatch.setattr(headstart, "start", start_then_touch)
    url = str(tmp_path / "s")
    res = run(ExtractConfig(root=str(root), store=url, limit=5, **FAST))
    assert res.n_extracted == 5 and not res.failures
    head = started[0]
    assert len(started) == 1 and made[0] is head and head.process is None  # closed
    # the sample's frames are kept whole: 64 px short side, at most 128 px wide
    assert head.depth == headstart.HEAD_START_BYTES // (128 * 64 * 128 * 3)
    parts = {id(f) for f in opened}
    if guess == "right":  # two parts, two children: the head start served part 0
        assert len(made) == 2 and opened[0] is head and len(parts) == 2
        assert sum(f is head for f in opened) == 3
    else:
        assert len(made) == 3 and head not in opened and len(parts) == 2
    if touched:  # the stamp stored is the file's as it was decoded
        store = open_store(url)
        path, mtime = touched[0]
        man, idx = store.manifest(), store.index().set_index("video_id")
        vids = [v for v, p in zip(man.video_id, man.path)
                if str(video_path(p, root)) == path]
        assert len(vids) == 1 and idx.loc[vids[0], "file_mtime"] == pytest.approx(mtime)
    # the maps are those of a run that decodes each part only when it comes to it
    monkeypatch.setattr(headstart, "start", lambda *a, **k: None)
    run(ExtractConfig(root=str(root), store=str(tmp_path / "plain"), limit=5, **FAST))
    got, want = _maps(url), _maps(str(tmp_path / "plain"))
    assert got.keys() == want.keys() and len(got) == 5
    for vid in want:
        np.testing.assert_array_equal(got[vid], want[vid])
