"""ActionThread adapter: the CSV format, pre/post conjugates trimmed around every action."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_video

from vidattn.datasets import DatasetError, load_dataset
from vidattn.datasets import actionthread as A
from vidattn.stores.schema import MANIFEST_SCHEMA

FPS = 25
HEADER = "thread_id,video,label,action_start,action_end,split"
ROWS = [
    "thr01,threads/t1.mp4,Kiss,3.0,5.0,train",  # line 2
    "thr02,threads/t2.mp4,HugPerson|Kiss,5.0,6.5,train",  # line 3: listed before line 4
    "thr02,threads/t2.mp4,Run,1,2,train",  # line 4
    "thr03,threads/t3.avi,SitDown,2.0,4.0,test",  # line 5: no such file
    "thr04,t4.mp4,StandUp,0.5,4.3,test",  # line 6: ends after the 4 s file
]
SECONDS = {"threads/t1.mp4": 8, "threads/t2.mp4": 10, "t4.mp4": 4}



def write_csv(root: Path, rows: list[str], header: str = HEADER) -> Path:
    path = root / "annotations.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("actionthread")
    for rel, sec in SECONDS.items():
        write_video(root / rel, sec * FPS)
    write_csv(root, ROWS)
    return root


@pytest.fixture
def tree(base, tmp_path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "at"))


@pytest.fixture(scope="module")
def tables(base):
    return A.load(base)


def rows_of(tables) -> dict:
    return {r.video_id: r for r in tables.manifest.itertuples(index=False)}


def span(r) -> tuple[float, float]:
    return round(r.start_sec, 6), round(r.end_sec, 6)


def test_classes_labels_roles(tables):
    assert tables.classes == A.DEFAULT_CLASSES and len(tables.classes) == 13
    assert tables.classes.index("Kiss") == 8 and tables.multilabel
    m = tables.manifest
    assert list(m.columns) == MANIFEST_SCHEMA.names and m.video_id.is_unique
    r = rows_of(tables)
    assert list(r["thr01"].labels) == [8] and r["thr01"].role == "action"
    assert list(r["thr02_1"].labels) == [9]  # Run: earliest action of the thread is _1
    assert list(r["thr02_2"].labels) == [7, 8]  # HugPerson|Kiss
    assert (r["thr02_2"].split, r["thr03"].split) == ("train", "test")
    assert set(m.group) == {"thr01", "thr02", "thr03", "thr04"}
    assert (m[m.role == "conjugate"].labels.map(len) == 0).all()
    assert json.loads(r["thr02_2"].extra)["line"] == 3
    assert r["thr01"].path == "threads/t1.mp4" and r["thr01"].fps == 25.0


def test_single_action_conjugates(tables):
    r = rows_of(tables)
    assert span(r["thr01"]) == (3.0, 5.0) and r["thr01"].n_frames == 50
    assert span(r["thr01_pre"]) == (0.0, 2.0) and r["thr01_pre"].n_frames == 50
    assert span(r["thr01_post"]) == (6.0, 8.0)
    assert r["thr01_pre"].group == "thr01" and r["thr01_post"].role == "conjugate"


def test_several_actions_in_one_thread(tables):
    r = rows_of(tables)
    assert span(r["thr02_1"]) == (1.0, 2.0) and span(r["thr02_2"]) == (5.0, 6.5)
    # thr02_1 has no room before it; its post stops 1 s before thr02_2, which is also
    # thr02_2's trimmed pre: one row, paired with both actions.
    assert "thr02_1_pre" not in r and "thr02_2_pre" not in r
    assert span(r["thr02_1_post"]) == (3.0, 4.0)
    assert span(r["thr02_2_post"]) == (7.5, 10.0)
    thr02 = tables.manifest[tables.manifest.group == "thr02"]
    acts = thr02[thr02.role == "action"]
    for c in thr02[thr02.role == "conjugate"].itertuples():
        for a in acts.itertuples():  # never within gap_sec of any action of the thread
            assert c.end_sec <= a.start_sec - 1.0 + 1e-9 or c.start_sec >= a.end_sec + 1.0 - 1e-9
    pairs = {(p.video_id, p.conjugate_id) for p in tables.pairs.itertuples()}
    assert pairs == {("thr01", "thr01_pre"), ("thr01", "thr01_post"),
                     ("thr02_1", "thr02_1_post"), ("thr02_2", "thr02_1_post"),
                     ("thr02_2", "thr02_2_post"), ("thr03", "thr03_pre")}
    assert set(tables.pairs.rule) == {"actionthread:pre-post-same-thread"}
    assert (tables.pairs.distance == 1.0).all()


def test_missing_file_and_clamped_end(tables):
    r = rows_of(tables)
    # No file: listed as missing; the pre segment needs no duration, the post one does.
    assert r["thr03"].status == r["thr03_pre"].status == "missing"
    assert span(r["thr03_pre"]) == (0.0, 1.0) and "thr03_post" not in r
    assert np.isnan(r["thr03"].fps) and np.isnan(r["thr03"].n_frames)
    # The 4 s file: action end clamped from 4.3; nothing fits before 0.5 s or after 4 s.
    assert span(r["thr04"]) == (0.5, 4.0) and json.loads(r["thr04"].extra)[
        "end_clamped_from"] == 4.3
    assert not any(v.startswith("thr04_") for v in r)


def test_options(base):
    t = A.load(base, {"gap_sec": "0.5", "min_len_sec": "0.5", "max_len_sec": "1.5"})
    r = rows_of(t)
    assert span(r["thr01_pre"]) == (1.0, 2.5) and span(r["thr01_post"]) == (5.5, 7.0)
    # thr02: both 1.5 s caps fit in the 2.5 .. 4.5 s gap left between its actions.
    assert span(r["thr02_1_post"]) == (2.5, 4.0) and span(r["thr02_2_pre"]) == (3.0, 4.5)
    assert (t.pairs.distance == 0.5).all()
    t = A.load(base, {"min_len_sec": "2.1"})  # every conjugate above is <= 2 s except one
    assert set(t.manifest[t.manifest.role == "conjugate"].video_id) == {"thr02_2_post"}
    with pytest.raises(ValueError, match="max_len_sec"):
        A.load(base, {"max_len_sec": "0.5"})


def test_conjugate_bounds_unit():
    opts = A.Options(gap_sec=0.0, min_len_sec=0.1)
    # Overlapping actions: the second starts inside the first, so it has no pre segment.
    acts = [(1.0, 3.0), (2.0, 4.0)]
    assert A.conjugate_bounds(1, acts, opts, 6.0) == (None, (4.0, 6.0))
    assert A.conjugate_bounds(0, acts, opts, 6.0) == ((0.0, 1.0), None)
    assert A.conjugate_bounds(0, acts, opts, None) == ((0.0, 1.0), None)
    # Three actions, 0.5 s margins: each segment stops at the nearest other action.
    acts, opts = [(1.0, 2.0), (4.0, 5.0), (8.0, 9.0)], A.Options(gap_sec=0.5, min_len_sec=0.5)
    assert A.conjugate_bounds(2, acts, opts, 10.0) == ((5.5, 7.5), (9.5, 10.0))
    assert A.conjugate_bounds(0, acts, opts, 10.0) == ((0.0, 0.5), (2.5, 3.5))
    assert A.conjugate_bounds(1, acts, opts, 10.0) == ((2.5, 3.5), (5.5, 7.5))


def test_single_label_and_custom_classes(tree):
    write_csv(tree, ["a,threads/t1.mp4,Wave,3,5,train", "b,t4.mp4,Kiss,1,2,val"])
    (tree / "classes.txt").write_text("Kiss\n\nWave\n")
    t = A.load(tree)
    assert t.classes == ["Kiss", "Wave"] and not t.multilabel
    assert {v: list(lab) for v, lab in zip(t.manifest.video_id, t.manifest.labels)
            if not v.endswith(("_pre", "_post"))} == {"a": [1], "b": [0]}
    assert set(t.manifest.split) == {"train", "val"}


def test_unknown_label(tree):
    path = write_csv(tree, [*ROWS[:2], "thr09,threads/t1.mp4,Walk,1,2,train"])
    with pytest.raises(DatasetError, match=f"^{path}:4: unknown label 'Walk'.*classes.txt"):
        A.load(tree)
    (tree / "classes.txt").write_text("Kiss\nRun\n")
    with pytest.raises(DatasetError, match=f"^{path}:3: unknown label 'HugPerson'"):
        A.load(tree)


@pytest.mark.parametrize("bad, why", [
    ("thr09,threads/t1.mp4,Kiss,1,2", "expected 6 fields"),
    ("thr09,threads/t1.mp4,Kiss,one,2,train", "action_start must be"),
    ("thr09,threads/t1.mp4,Kiss,1,nan,train", "action_end must be"),
    ("thr09,threads/t1.mp4,Kiss,2,2,train", "not after"),
    ("thr09,threads/t1.mp4,Kiss,1,2,dev", "split must be"),
    ("thr09,../t1.mp4,Kiss,1,2,train", "relative to the root"),
    ("thr01,threads/t2.mp4,Kiss,6,7,train", "thread thr01 was given video"),
    ("thr01,threads/t1.mp4,Kiss,3.0,5,train", "already has an action"),
    ("thr02_1,threads/t1.mp4,Kiss,6.5,7.5,train", "produced twice"),
    ("thr09,t4.mp4,Kiss,4.0,5,train", "after the end of t4.mp4"),
])
def test_malformed_rows(tree, bad, why):
    path = write_csv(tree, [*ROWS, "", bad])
    with pytest.raises(DatasetError, match=why) as e:
        A.load(tree)
    line = None if why == "produced twice" else 8  # blank line 7 is skipped
    assert e.value.line == line and str(e.value).startswith(
        f"{path}:{line}:" if line else f"{path}:")


def test_bad_header(tree):
    path = write_csv(tree, ROWS, header="thread,video,label,start,end,split")
    with pytest.raises(DatasetError, match=f"^{path}:1: header must be"):
        A.load(tree)


def test_root_and_file_errors(tree, tmp_path):
    with pytest.raises(DatasetError, match="^actionthread: --root is required"):
        A.load(None)
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'nope'}: dataset root not found"):
        A.load(tmp_path / "nope")
    (tree / "annotations.csv").unlink()
    with pytest.raises(DatasetError, match="annotations.csv: annotation file not found"):
        A.load(tree)


def test_all_files_missing(tree):
    shutil.rmtree(tree / "threads")
    (tree / "t4.mp4").unlink()
    with pytest.raises(DatasetError, match="none of the 4 thread videos"):
        A.load(tree)


def test_load_dataset_registry(base):
    t = load_dataset("actionthread", str(base), {"gap_sec": "0"})
    assert t.name == "actionthread" and t.root == base and (t.pairs.distance == 0).all()
    assert "annotations.csv" in A.LAYOUT
