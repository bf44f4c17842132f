"""HACS Clips and HACS-30 adapters on CSVs and video trees built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_video

from vidattn.datasets import DatasetError, load_dataset
from vidattn.datasets import hacs as H
from vidattn.stores.schema import MANIFEST_SCHEMA, PAIRS_SCHEMA

HEADER = "classname,youtube_id,subset,start,end,label\n"
# line 2..8 of the CSV; comments give what each row tests
ROWS = [
    "Archery,aaa,training,0.0,2.0,1",  # positive, real video in Archery/
    "Archery,aaa,training,2.5,4.5,-1",  # negative from the same video; runs past its end
    "Playing violin,bbb,validation,1.0,3.0,1",  # spaces -> underscores folder
    "Playing violin,bbb,validation,1.0,3.0,-1",  # same segment again: id made unique
    "Tai chi,ddd,testing,0.5,2.5,1",  # folder keeps the space
    "Zumba,aaa,training,1.0,3.0,1",  # video filed under another class folder
    "Zumba,zzz,training,0.0,2.0,-1",  # no file at all: listed as missing
]



@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hacs_video") / "v.mp4"
    write_video(path, 30, fps=10)
    return path


def make_root(root: Path, video: Path, rows=ROWS, name: str = "HACS_clips_v1.1.1.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(HEADER + "".join(r + "\n" for r in rows))
    for rel in ("Archery/v_aaa.mp4", "Playing_violin/v_bbb.mp4", "Tai chi/v_ddd.mp4"):
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(video.read_bytes())
    return root


def test_manifest(tmp_path, video):
    ds = H.load(make_root(tmp_path / "r", video))
    m = ds.manifest.set_index("video_id")
    assert ds.name == "hacs" and not ds.multilabel and ds.boxes is None
    assert ds.classes == ["Archery", "Playing violin", "Tai chi", "Zumba"]
    assert list(ds.manifest.columns) == MANIFEST_SCHEMA.names
    assert list(ds.pairs.columns) == PAIRS_SCHEMA.names and len(ds.pairs) == 0
    assert list(m.index) == ["aaa_0.0_2.0", "aaa_2.5_4.5", "bbb_1.0_3.0", "bbb_1.0_3.0__2",
                             "ddd_0.5_2.5", "aaa_1.0_3.0", "zzz_0.0_2.0"]
    assert [list(v) for v in m.labels] == [[0], [], [1], [], [2], [3], []]
    assert list(m.role) == ["action", "background", "action", "background", "action",
                            "action", "background"]
    assert list(m.split) == ["train", "train", "val", "val", "test", "train", "train"]
    assert list(m.group) == ["aaa", "aaa", "bbb", "bbb", "ddd", "aaa", "zzz"]
    assert list(m.path) == ["Archery/v_aaa.mp4"] * 2 + ["Playing_violin/v_bbb.mp4"] * 2 + [
        "Tai chi/v_ddd.mp4", "Archery/v_aaa.mp4", "Zumba/v_zzz.mp4"]
    assert list(m.status) == ["ok"] * 6 + ["missing"]
    assert m.loc["aaa_2.5_4.5", ["start_sec", "end_sec"]].tolist() == [2.5, 4.5]
    # negatives remember the class they were sampled for
    assert json.loads(m.loc["zzz_0.0_2.0", "extra"]) == {"classname": "Zumba"}
    assert json.loads(m.loc["bbb_1.0_3.0__2", "extra"]) == {"classname": "Playing violin"}
    assert set(m.dataset) == {"hacs"} and m.fps.isna().all() and m.n_frames.isna().all()


def test_probe(tmp_path, video):
    m = H.load(make_root(tmp_path / "r", video), {"probe": "true"}).manifest
    m = m.set_index("video_id")
    assert m.loc["aaa_0.0_2.0", "fps"] == pytest.approx(10.0)
    assert m.loc["aaa_0.0_2.0", "n_frames"] == 20
    assert m.loc["aaa_2.5_4.5", "n_frames"] == 5  # the 3 s file ends inside the segment
    assert np.isnan(m.loc["zzz_0.0_2.0", "fps"])


def test_csv_names_and_label_map(tmp_path, video):
    root = make_root(tmp_path / "r", video, ROWS[:1], name="HACS_clips_v1.1.csv")
    assert len(H.load(root).manifest) == 1  # the older name is accepted
    (root / "HACS_clips_v1.1.1.csv").write_text(HEADER + ROWS[0] + "\n" + ROWS[2] + "\n")
    assert len(H.load(root).manifest) == 2  # and the newer one preferred
    (root / "other.csv").write_text(HEADER + "\n".join(ROWS[:3]) + "\n")
    assert len(H.load(root, {"annotations": "other.csv"}).manifest) == 3
    (root / "classes.txt").write_text("Zumba\nPlaying violin\n\nArchery\n")
    ds = H.load(root, {"label_map": "classes.txt"})
    assert ds.classes == ["Zumba", "Playing violin", "Archery"]
    assert [list(v) for v in ds.manifest.labels] == [[2], [1]]
    (root / "classes.txt").write_text("Zumba\nArchery\n")
    with pytest.raises(DatasetError) as e:
        H.load(root, {"label_map": "classes.txt"})
    assert e.value.line == 3 and "HACS_clips_v1.1.1.csv:3:" in str(e.value)
    assert "'Playing violin'" in str(e.value)
    (root / "classes.txt").write_text("Zumba\nArchery\nZumba\n")
    with pytest.raises(DatasetError, match=r"classes.txt:3: class 'Zumba' is listed twice"):
        H.load(root, {"label_map": "classes.txt"})


@pytest.mark.parametrize("row, message", [
    ("Archery,aaa,training,0.0,2.0", "expected 6 fields, got 5"),
    ("Archery,aaa,training,0.0,2.0,0", "label must be 1"),
    ("Archery,aaa,train,0.0,2.0,1", "unknown subset 'train'"),
    ("Archery,aaa,training,2.0,2.0,1", "need 0 <= start < end"),
    ("Archery,aaa,training,zero,2.0,1", "must be numbers"),
    (",aaa,training,0.0,2.0,1", "empty classname"),
])
def test_malformed_line(tmp_path, video, row, message):
    root = make_root(tmp_path / "r", video, [ROWS[0], row, ROWS[2]])
    with pytest.raises(DatasetError, match=message) as e:
        H.load(root)
    assert e.value.line == 3 and str(e.value).startswith(f"{root / 'HACS_clips_v1.1.1.csv'}:3:")


def test_unlabelled_test_rows_are_skipped(tmp_path, video):
    rows = [ROWS[0], ",eee,testing,0.0,2.0,", "Archery,fff,testing,0.0,2.0,0", ROWS[4]]
    m = H.load(make_root(tmp_path / "r", video, rows)).manifest
    assert list(m.video_id) == ["aaa_0.0_2.0", "ddd_0.5_2.5"]
    with pytest.raises(DatasetError, match=":3: empty classname"):
        H.load(make_root(tmp_path / "s", video, [ROWS[0], ",eee,validation,0.0,2.0,1"]))


def test_errors(tmp_path, video):
    with pytest.raises(DatasetError, match=r"^hacs: --root is required"):
        H.load(None)
    with pytest.raises(DatasetError, match=r"^hacs30: --root is required"):
        H.load_hacs30()
    with pytest.raises(DatasetError, match="dataset root not found") as e:
        H.load(tmp_path / "nowhere")
    assert e.value.path == str(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="clips CSV not found") as e:
        H.load(tmp_path / "empty")
    assert e.value.path == str(tmp_path / "empty" / "HACS_clips_v1.1.1.csv")
    root = make_root(tmp_path / "r", video)
    (root / "HACS_clips_v1.1.1.csv").write_text("classname,youtube_id,start,end,label\n")
    with pytest.raises(DatasetError, match=r":1: header lacks columns \['subset'\]"):
        H.load(root)
    (root / "HACS_clips_v1.1.1.csv").write_text(HEADER + ROWS[6] + "\n")
    with pytest.raises(DatasetError, match="none of the 1 clips' videos exist"):
        H.load(root)
    with pytest.raises(ValueError, match="unknown option 'n_classes'"):
        H.load(root, {"n_classes": "3"})


# Training positives per class: D 1, B 2, C 2, E 3, A 5; F has negatives only.
PLANTED = (
    [f"A,a{i},training,0,2,1" for i in range(5)] + [f"B,b{i},training,0,2,1" for i in range(2)]
    + [f"C,c{i},training,0,2,1" for i in range(2)] + ["D,d0,training,0,2,1"]
    + [f"E,e{i},training,0,2,1" for i in range(3)]
    + [f"D,dv{i},validation,0,2,1" for i in range(9)]  # validation does not count
    + ["A,a0,training,3,5,-1", "B,b0,training,3,5,-1", "D,dv0,validation,3,5,-1",
       "F,f0,training,0,2,-1", "F,f1,training,3,5,-1"]
)


def planted_root(tmp_path: Path) -> Path:
    root = tmp_path / "planted"
    root.mkdir()
    (root / "HACS_clips_v1.1.1.csv").write_text(HEADER + "\n".join(PLANTED) + "\n")
    for rel in ("B/v_b0.mp4", "D/v_d0.mp4"):  # existence is all that matters (no probe)
        (root / rel).parent.mkdir()
        (root / rel).write_bytes(b"")
    return root


def test_fewest_positive_classes():
    rows = [(c, "y", "train", 0.0, 2.0, True, 2) for c in "AAABBCCD"] + [
        ("E", "y", "train", 0.0, 2.0, False, 2), ("D", "y", "val", 0.0, 2.0, True, 2)]
    assert H.fewest_positive_classes(rows, 1) == ["D"]
    assert H.fewest_positive_classes(rows, 2) == ["D", "B"]  # B ties C, wins by name
    assert H.fewest_positive_classes(rows, 4) == ["D", "B", "C", "A"]
    with pytest.raises(DatasetError, match="only 4 classes have training positives"):
        H.fewest_positive_classes(rows, 5)  # E has no positive: never a candidate


def test_hacs30(tmp_path):
    root = planted_root(tmp_path)
    ds = H.load_hacs30(root, {"n_classes": "3"})
    assert ds.name == "hacs30" and not ds.multilabel
    assert ds.classes == ["B", "C", "D", "background"]
    m = ds.manifest.set_index("video_id")
    assert len(m) == 2 + 2 + 10 + 2  # positives of B, C, D and their two negatives
    assert {json.loads(e)["classname"] for e in m.extra} == {"B", "C", "D"}
    assert list(m.loc["b1_0.0_2.0", "labels"]) == [0]
    assert list(m.loc["dv3_0.0_2.0", "labels"]) == [2] and m.loc["dv3_0.0_2.0", "split"] == "val"
    for vid in ("b0_3.0_5.0", "dv0_3.0_5.0"):
        assert m.loc[vid, "role"] == "background" and list(m.loc[vid, "labels"]) == [3]
    assert (m.role == "action").sum() == 14 and set(m.dataset) == {"hacs30"}
    assert list(m.status[m.status == "ok"].index) == ["b0_0.0_2.0", "d0_0.0_2.0",
                                                      "b0_3.0_5.0"]
    two = H.load_hacs30(root, {"n_classes": 2})
    assert two.classes == ["B", "D", "background"]  # the B/C tie goes to B
    assert sorted({int(v[0]) for v in two.manifest.labels}) == [0, 1, 2]
    with pytest.raises(DatasetError, match="only 5 classes have training positives"):
        H.load_hacs30(root)  # the default 30 is more than the planted CSV has


def test_registry(tmp_path, video):
    root = make_root(tmp_path / "r", video)
    assert len(load_dataset("hacs", root).manifest) == len(ROWS)
    ds = load_dataset("hacs30", planted_root(tmp_path), {"n_classes": "1"})
    assert ds.classes == ["D", "background"]
