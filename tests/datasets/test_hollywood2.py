"""Hollywood2 adapter: ClipSets parsing, multi-hot labels; whole clips with conjugates
drawn by the loader (default), or fixed crops and their conjugate segments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_video

from vidattn.datasets import DatasetError, load_dataset
from vidattn.datasets import hollywood2 as H
from vidattn.stores.schema import MANIFEST_SCHEMA, PAIRS_SCHEMA

FPS = 25
# clip -> (frames in its .avi or None = no file, positive actions)
TRAIN = {
    "actioncliptrain00001": (100, {"Kiss", "HugPerson"}),
    "actioncliptrain00002": (79, {"Run"}),
    "actioncliptrain00003": (70, {"Eat"}),
    "actioncliptrain00004": (50, {"DriveCar"}),
    "actioncliptrain00005": (None, {"AnswerPhone"}),
    "actioncliptrain00006": (100, set()),
}
TEST = {
    "actioncliptest00001": (100, {"SitUp", "StandUp"}),
    "actioncliptest00002": (None, {"FightPerson"}),
}



def write_clipsets(root: Path, split: str, clips: dict, sep: str = "  ", tail: str = "",
                   skip: tuple[tuple[str, str], ...] = ()) -> None:
    """One file per action; ``skip`` leaves (action, clip) out of that action's file."""
    (root / "ClipSets").mkdir(parents=True, exist_ok=True)
    for action in H.CLASSES:
        lines = [f"{clip}{sep}{1 if action in pos else -1}{tail}"
                 for clip, (_, pos) in clips.items() if (action, clip) not in skip]
        (root / "ClipSets" / f"{action}_{split}.txt").write_text("\n".join(lines) + "\n\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hollywood2")
    for clip, (n, _) in {**TRAIN, **TEST}.items():
        if n is not None:
            write_video(root / "AVIClips" / f"{clip}.avi", n)
    # The release's double space in train; one space, trailing blanks and a CR in test.
    write_clipsets(root, "train", TRAIN, skip=(("SitDown", "actioncliptrain00003"),))
    write_clipsets(root, "test", TEST, sep=" ", tail=" \r")
    return root


@pytest.fixture
def tree(base, tmp_path) -> Path:
    """A private copy of the base tree, for tests that damage it."""
    return Path(shutil.copytree(base, tmp_path / "h2"))


@pytest.fixture(scope="module")
def tables(base):
    return H.load(base, {"conjugates": "fixed"})


def test_default_keeps_whole_clips_for_the_loader(base):
    t = H.load(base)
    assert t.conjugates == "around" and t.pairs.empty
    assert set(t.manifest.role) == {"action", "background"}  # no conjugate segments
    assert t.manifest.start_sec.isna().all() and len(t.manifest) == len(TRAIN) + len(TEST)
    assert H.load(base, {"conjugates": "fixed"}).conjugates == "pairs"


def by_id(tables) -> dict:
    return {r.video_id: r for r in tables.manifest.itertuples(index=False)}


def test_classes_labels_and_splits(tables, base):
    m = tables.manifest
    assert tables.classes == ["AnswerPhone", "DriveCar", "Eat", "FightPerson", "GetOutCar",
                              "HandShake", "HugPerson", "Kiss", "Run", "SitDown", "SitUp",
                              "StandUp"]
    assert tables.multilabel and tables.boxes is None and tables.root == base
    assert list(m.columns) == MANIFEST_SCHEMA.names and list(tables.pairs.columns) == \
        PAIRS_SCHEMA.names
    assert m.video_id.is_unique and set(m.dataset) == {"hollywood2"}
    rows = by_id(tables)
    for clips, split in ((TRAIN, "train"), (TEST, "test")):
        for clip, (_, pos) in clips.items():
            r = rows[clip]
            assert r.split == split and r.group == clip and r.path == f"AVIClips/{clip}.avi"
            assert list(r.labels) == sorted(tables.classes.index(a) for a in pos)
    assert list(rows["actioncliptrain00001"].labels) == [6, 7]  # HugPerson, Kiss
    assert rows["actioncliptrain00006"].role == "background"
    assert rows["actioncliptest00001"].role == "action"


def test_centred_crop_and_conjugates(tables):
    rows = by_id(tables)

    def seg(vid):
        r = rows[vid]
        return r.role, round(r.start_sec, 6), round(r.end_sec, 6), r.n_frames

    # 100 frames: 52 spare frames, 26 on each side of the 48-frame crop.
    assert seg("actioncliptrain00001") == ("action", 1.04, 2.96, 48)
    assert seg("actioncliptrain00001_pre") == ("conjugate", 0.0, 1.04, 26)
    assert seg("actioncliptrain00001_post") == ("conjugate", 2.96, 4.0, 26)
    assert list(rows["actioncliptrain00001_pre"].labels) == []
    assert rows["actioncliptrain00001_pre"].group == "actioncliptrain00001"
    assert json.loads(rows["actioncliptrain00001"].extra)["frames"] == [26, 74]
    # 79 frames: 15 before (< 16, dropped), 16 after (kept).
    assert seg("actioncliptrain00002") == ("action", 0.6, 2.52, 48)
    assert seg("actioncliptrain00002_post") == ("conjugate", 2.52, 3.16, 16)
    assert "actioncliptrain00002_pre" not in rows
    pairs = {(p.video_id, p.conjugate_id) for p in tables.pairs.itertuples()}
    assert pairs == {("actioncliptrain00001", "actioncliptrain00001_pre"),
                     ("actioncliptrain00001", "actioncliptrain00001_post"),
                     ("actioncliptrain00002", "actioncliptrain00002_post")}
    assert set(tables.pairs.rule) == {"hollywood2:before-after-crop"}
    assert (tables.pairs.distance == 0).all()


def test_whole_clips(tables):
    rows = by_id(tables)
    # 70 frames: 11 + 11 spare, neither side reaches 16; 50 frames: too short; a
    # background clip and test clips are never cropped.
    for clip, n in (("actioncliptrain00003", 70), ("actioncliptrain00004", 50),
                    ("actioncliptrain00006", 100), ("actioncliptest00001", 100)):
        r = rows[clip]
        assert np.isnan(r.start_sec) and np.isnan(r.end_sec), clip
        assert (r.n_frames, r.fps, r.status) == (n, 25.0, "ok"), clip
    assert not any(v.startswith("actioncliptest") and v.endswith(("_pre", "_post"))
                   for v in rows)


def test_missing_files_and_unlisted(tables):
    rows = by_id(tables)
    for clip in ("actioncliptrain00005", "actioncliptest00002"):
        r = rows[clip]
        assert r.status == "missing" and np.isnan(r.fps) and np.isnan(r.n_frames)
    assert set(tables.manifest.status) == {"ok", "missing"}
    assert json.loads(rows["actioncliptrain00003"].extra)["unlisted_in"] == ["SitDown"]
    assert pd.isna(rows["actioncliptest00001"].extra)


def test_options(base):
    t = H.load(base, {"crop_frames": "40", "min_conjugate_frames": "20", "conjugates": "fixed"})
    rows = by_id(t)
    assert (rows["actioncliptrain00001"].start_sec, rows["actioncliptrain00001"].end_sec) == \
        pytest.approx((1.2, 2.8))
    assert rows["actioncliptrain00001_post"].end_sec == pytest.approx(4.0)
    # 79 frames, crop 40: 19 before (< 20), 20 after.
    assert "actioncliptrain00002_pre" not in rows and "actioncliptrain00002_post" in rows
    assert np.isnan(rows["actioncliptrain00003"].start_sec)  # 15 + 15 spare
    off = H.load(base, {"conjugates": "none"})
    assert off.pairs.empty and set(off.manifest.role) == {"action", "background"}
    assert off.manifest.start_sec.isna().all() and len(off.manifest) == len(TRAIN) + len(TEST)
    with pytest.raises(ValueError, match="crop_frames"):
        H.load(base, {"crop_frames": "0"})
    with pytest.raises(ValueError, match="unknown option"):
        H.load(base, {"crop": "3"})
    with pytest.raises(ValueError, match="around, fixed or none"):
        H.load(base, {"conjugates": "yes"})


@pytest.mark.parametrize("n, plan", [(63, None), (64, None), (79, (15, 63, False, True)),
                                     (80, (16, 64, True, True)), (81, (16, 64, True, True))])
def test_crop_plan(n, plan):
    assert H.crop_plan(n, H.Options()) == plan


def test_load_dataset_registry(base):
    t = load_dataset("hollywood2", base, {"conjugates": "none"})
    assert t.name == "hollywood2" and t.pairs.empty and t.conjugates == "pairs"
    assert len(load_dataset("hollywood2", str(base), {"conjugates": "fixed"}).pairs) == 3
    assert "ClipSets" in H.LAYOUT and "AVIClips" in H.LAYOUT


def test_root_errors(tmp_path):
    with pytest.raises(DatasetError, match="--root is required"):
        H.load(None)
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        H.load(tmp_path / "nope")
    with pytest.raises(DatasetError, match="ClipSets: annotation directory not found"):
        H.load(tmp_path)


def test_missing_annotation_file(tree):
    (tree / "ClipSets" / "Kiss_test.txt").unlink()
    with pytest.raises(DatasetError, match="Kiss_test.txt: annotation file not found"):
        H.load(tree)


@pytest.mark.parametrize("bad", ["actioncliptrain00001\t1", "actioncliptrain00001   1",
                                 "actioncliptrain00001 0", "actioncliptrain00001 1 x",
                                 " actioncliptrain00001 1", "actioncliptrain00001"])
def test_malformed_line(tree, bad):
    path = tree / "ClipSets" / "Run_train.txt"
    lines = path.read_text().splitlines()
    lines[2] = bad
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError) as e:
        H.load(tree)
    assert str(e.value).startswith(f"{path}:3: expected") and e.value.line == 3


def test_duplicate_clip_in_one_file(tree):
    path = tree / "ClipSets" / "Eat_train.txt"
    path.write_text(path.read_text() + "actioncliptrain00002 -1\n")
    with pytest.raises(DatasetError, match=r"Eat_train.txt:\d+: clip actioncliptrain00002 "
                       r"already listed at line 2"):
        H.load(tree)


def test_train_test_overlap(tree):
    path = tree / "ClipSets" / "Eat_test.txt"
    path.write_text(path.read_text() + "actioncliptrain00004 -1\n")
    with pytest.raises(DatasetError) as e:
        H.load(tree)
    msg = str(e.value)
    assert msg.startswith(f"{path}:") and "actioncliptrain00004" in msg
    assert "AnswerPhone_train.txt:4" in msg  # where the clip was first seen in train


def test_all_files_missing(tree):
    shutil.rmtree(tree / "AVIClips")
    with pytest.raises(DatasetError, match="none of the 8 listed clips was found"):
        H.load(tree)


def test_unreadable_video_is_listed(tree):
    (tree / "AVIClips" / "actioncliptrain00001.avi").write_bytes(b"not a video at all" * 10)
    r = by_id(H.load(tree))["actioncliptrain00001"]
    assert r.status == "ok" and np.isnan(r.start_sec) and np.isnan(r.n_frames)
    assert "probe_error" in json.loads(r.extra)
