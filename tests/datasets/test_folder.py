"""Folder adapter: recursive scan, video ids, the optional labels CSV and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_video

from vidattn.datasets import DatasetError, load_dataset
from vidattn.datasets import folder as F
from vidattn.stores.schema import MANIFEST_SCHEMA, PAIRS_SCHEMA

FPS = 25
VIDEOS = {"a.mp4": 50, "sub/b.MP4": 75, "sub/deep/c.avi": 30, "d.mkv": 25}
LABELS = """path,label,split
a.mp4,walk,train
sub/b.MP4,run|walk,
./sub/deep/c.avi,,train
gone.mp4,run,test
"""



@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    for rel, n in VIDEOS.items():
        write_video(root / rel, n)
    write_video(root / ".hidden" / "x.mp4", 10)  # hidden directory: skipped
    (root / "._a.mp4").write_bytes(b"\0" * 64)  # macOS resource fork: skipped
    (root / "broken.mov").write_bytes(b"this is not a video" * 8)
    (root / "notes.txt").write_text("not a video\n")
    (root / "labels.csv").write_text(LABELS)
    return root


@pytest.fixture
def tree(base, tmp_path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "f"))


def rows_of(tables) -> dict:
    return {r.video_id: r for r in tables.manifest.itertuples(index=False)}


def test_scan_without_labels(base):
    t = F.load(base)
    assert F.scan(base) == ["a.mp4", "broken.mov", "d.mkv", "sub/b.MP4", "sub/deep/c.avi"]
    m = t.manifest
    assert list(m.columns) == MANIFEST_SCHEMA.names and list(t.pairs.columns) == \
        PAIRS_SCHEMA.names and t.pairs.empty
    assert t.classes == [] and not t.multilabel and t.boxes is None
    assert list(m.video_id) == ["a", "broken", "d", "sub__b", "sub__deep__c"]
    assert set(m.role) == {"background"} and set(m.split) == {"test"}
    assert (m.labels.map(len) == 0).all() and (m.group == m.video_id).all()
    assert m.start_sec.isna().all() and set(m.dataset) == {"folder"}
    r = rows_of(t)
    assert r["sub__deep__c"].path == "sub/deep/c.avi"
    for vid, rel in (("a", "a.mp4"), ("sub__b", "sub/b.MP4"), ("sub__deep__c", "sub/deep/c.avi"),
                     ("d", "d.mkv")):
        assert (r[vid].n_frames, r[vid].fps, r[vid].status) == (VIDEOS[rel], 25.0, "ok")
    assert r["broken"].status == "ok" and np.isnan(r["broken"].n_frames)
    assert "probe_error" in json.loads(r["broken"].extra)
    assert set(F.load(base, {"split": "train"}).manifest.split) == {"train"}


def test_labels_csv(base):
    t = F.load(base, {"labels": "labels.csv"})
    assert t.classes == ["run", "walk"] and t.multilabel
    r = rows_of(t)
    got = {v: (list(x.labels), x.role, x.split, x.status) for v, x in r.items()}
    assert got == {
        "a": ([1], "action", "train", "ok"),
        "sub__b": ([0, 1], "action", "test", "ok"),  # empty split cell: Options.split
        "sub__deep__c": ([], "background", "train", "ok"),  # empty label
        "gone": ([0], "action", "test", "missing"),  # listed, no such file
        "d": ([], "background", "test", "ok"),  # on disk, not in the CSV
        "broken": ([], "background", "test", "ok"),
    }
    assert r["gone"].path == "gone.mp4" and np.isnan(r["gone"].fps)


def test_labels_without_split_column(tree, tmp_path):
    csv = tmp_path / "elsewhere.csv"  # an absolute path outside the root
    csv.write_text("path,label\na.mp4,walk\nd.mkv,jump\n")
    t = F.load(tree, {"labels": str(csv), "split": "train"})
    assert t.classes == ["jump", "walk"] and not t.multilabel
    assert set(t.manifest.split) == {"train"}
    assert {v: list(lab) for v, lab in zip(t.manifest.video_id, t.manifest.labels)
            if len(lab)} == {"a": [1], "d": [0]}


@pytest.mark.parametrize("first, second", [("x.mp4", "x.avi"), ("p__q.mp4", "p/q.mkv")])
def test_video_id_collision(tree, first, second):
    write_video(tree / first, 5)
    write_video(tree / second, 5)
    with pytest.raises(DatasetError, match=f"both map to video_id {F.video_id(first)}"):
        F.load(tree)


def test_video_id():
    assert F.video_id("clips/a/x.y.mp4") == "clips__a__x.y"
    assert F.video_id("top.WEBM") == "top"


@pytest.mark.parametrize("bad, why", [
    ("a.mp4,walk", "expected 3 fields"),
    ("../a.mp4,walk,train", "relative to the root"),
    ("/abs/a.mp4,walk,train", "relative to the root"),
    ("d.mkv,walk,dev", "split must be"),
    ("sub/deep/c.avi,walk,train", "already listed at line 4"),
    ("d.mkv,run||walk,train", "empty class name"),
])
def test_malformed_labels(tree, bad, why):
    csv = tree / "labels.csv"
    csv.write_text(LABELS + "\n" + bad + "\n")
    with pytest.raises(DatasetError, match=why) as e:
        F.load(tree, {"labels": "labels.csv"})
    assert str(e.value).startswith(f"{csv}:7:") and e.value.line == 7


def test_bad_header_and_missing_labels_file(tree):
    csv = tree / "labels.csv"
    csv.write_text("file,label\na.mp4,walk\n")
    with pytest.raises(DatasetError, match=f"^{csv}:1: header must be"):
        F.load(tree, {"labels": "labels.csv"})
    with pytest.raises(DatasetError, match=f"^{tree / 'nope.csv'}: labels file not found"):
        F.load(tree, {"labels": "nope.csv"})


def test_root_errors_and_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="^folder: --root is required"):
        F.load(None)
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'nope'}: dataset root not found"):
        F.load(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no video files"):
        F.load(tmp_path)
    (tmp_path / "l.csv").write_text("path,label\ngone.mp4,run\n")
    with pytest.raises(DatasetError, match="none of the 1 files of the labels CSV"):
        F.load(tmp_path, {"labels": "l.csv"})
    with pytest.raises(ValueError, match="split must be one of"):
        F.load(tmp_path, {"split": "dev"})


def test_load_dataset_registry(base):
    t = load_dataset("folder", str(base), {"labels": "labels.csv"})
    assert t.name == "folder" and t.root == base and len(t.manifest) == 6
    assert isinstance(t.manifest, pd.DataFrame) and "labels CSV" in F.LAYOUT
    assert len(load_dataset("folder", base).manifest) == 5


def test_dangling_links_and_directories_named_like_videos_are_listed(tree):
    (tree / "gone_link.mp4").symlink_to(tree / "nowhere.mp4")
    write_video(tree / "clips.mp4" / "inner.mp4", 10)  # a directory named like a video
    rows = rows_of(F.load(tree))
    assert rows["gone_link"].status == "missing"
    assert json.loads(rows["gone_link"].extra)["reason"] == "a symbolic link to nothing"
    assert rows["clips"].status == "missing"
    assert "a directory" in json.loads(rows["clips"].extra)["reason"]
    assert rows["clips.mp4__inner"].status == "ok"  # what it holds is still found
