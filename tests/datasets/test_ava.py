"""AVA v2.2 adapter (CSV, excluded keyframes, pbtxt label map) and frame-mAP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_video

from vidattn.datasets import DatasetError, load_dataset
from vidattn.datasets import ava as A
from vidattn.metrics import frame_map
from vidattn.stores.schema import BOXES_SCHEMA, MANIFEST_SCHEMA

# Four classes with ids 1, 3, 5, 80 in a deliberately mixed layout: one-line and
# multi-line blocks, a comment, an escaped quote and an ``item`` block (ActivityNet list).
PBTXT = """\
# AVA v2.2 (subset)
label { name: "bend/bow (at the waist)" label_id: 1 label_type: PERSON_MOVEMENT }
label {
  name: "say \\"hi\\""
  label_id: 3
  label_type: PERSON_INTERACTION
}
item { name: "stand" id: 5 }
label: { name: "watch (a person)" label_id: 80 }
"""
TRAIN = [  # line numbers 1.. in the CSV
    "-vidA_1,0902,0.1,0.2,0.5,0.9,1,0",
    "-vidA_1,0902,0.1,0.2,0.5,0.9,5,0",  # same person: second action
    "-vidA_1,0902,0.6,0.1,0.9,0.8,80,1",
    "-vidA_1,0903,0.1,0.2,0.5,0.9,3,0",  # an excluded keyframe
    "-vidA_1,0904,0.2,0.2,0.6,0.9,5,0",
    "vidB,0902,0.0,0.0,1.0,1.0,3,2",
]
VAL = ["vidC,1000,0.3,0.3,0.4,0.4,1,7"]  # vidC has no video file



@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ava_video") / "v.mp4"
    write_video(path, 60, fps=10)
    return path


def make_root(root: Path, video: Path, train=TRAIN, val=VAL, pbtxt: str = PBTXT) -> Path:
    (root / "videos").mkdir(parents=True)
    (root / "ava_action_list_v2.2.pbtxt").write_text(pbtxt)
    (root / "ava_train_v2.2.csv").write_text("".join(r + "\n" for r in train))
    (root / "ava_val_v2.2.csv").write_text("".join(r + "\n" for r in val))
    (root / "ava_train_excluded_timestamps_v2.2.csv").write_text("-vidA_1,0903\n")
    (root / "videos" / "-vidA_1.mp4").write_bytes(video.read_bytes())
    (root / "videos" / "-vidA_1.webm").write_bytes(b"")  # mp4 is preferred
    (root / "videos" / "vidB.mkv").write_bytes(b"")  # unreadable: a probe fails softly
    return root


def test_label_map(tmp_path):
    path = tmp_path / "map.pbtxt"
    path.write_text(PBTXT)
    assert A.parse_pbtxt(path) == [(1, "bend/bow (at the waist)"), (3, 'say "hi"'),
                                   (5, "stand"), (80, "watch (a person)")]


@pytest.mark.parametrize("text, line, message", [
    ('label { name: "a" label_id: 1 }\nlabel { name: "b" }\n', 2, "positive integer label_id"),
    ('label { name: "a" label_id: 1 }\n\nlabel { name: "b" label_id: 1 }', 3, "listed twice"),
    ('label { name: "a" label_id: 1 }\nlabels { name: "b" label_id: 2 }', 2, "expected 'label"),
    ('label {\n  name: "a"\n  label_id 2\n}\n', 3, "expected 'field: value', got 'label_id'"),
    ('label {\n  name: "a"\n  label_id: 2\n', 1, "unclosed block or stray text 'label'"),
    ('label { name: "a" label_id: 1 }\n# note\n  stray\n', 3, "stray text 'stray'"),
    ('label { name: a label_id: 2 }', 1, "block needs name"),
    ('label { name: "a" label_id: x }', 1, "positive integer label_id"),
])
def test_label_map_errors(tmp_path, text, line, message):
    path = tmp_path / "map.pbtxt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as e:
        A.parse_pbtxt(path)
    assert e.value.line == line and str(e.value).startswith(f"{path}:{line}:")


def test_manifest(tmp_path, video):
    ds = A.load(make_root(tmp_path / "r", video), {"time_offset": "900"})
    assert ds.name == "ava" and ds.multilabel and ds.boxes is None  # no fps: no boxes
    assert ds.classes == ["bend/bow (at the waist)", 'say "hi"', "stand", "watch (a person)"]
    assert list(ds.manifest.columns) == MANIFEST_SCHEMA.names and len(ds.pairs) == 0
    m = ds.manifest.set_index("video_id")
    assert list(m.index) == ["-vidA_1__0902__0", "-vidA_1__0902__1", "-vidA_1__0904__0",
                             "vidB__0902__2", "vidC__1000__7"]
    assert [list(v) for v in m.labels] == [[0, 2], [3], [2], [1], [0]]
    assert list(m.split) == ["train"] * 4 + ["val"]
    assert list(m.group) == ["-vidA_1"] * 3 + ["vidB", "vidC"]
    assert set(m.role) == {"action"} and set(m.dataset) == {"ava"}
    assert list(m.path) == ["videos/-vidA_1.mp4"] * 3 + ["videos/vidB.mkv", "videos/vidC.mp4"]
    assert list(m.status) == ["ok"] * 4 + ["missing"]
    assert m.loc["-vidA_1__0904__0", ["start_sec", "end_sec"]].tolist() == [3.0, 5.0]
    assert json.loads(m.loc["-vidA_1__0902__1", "extra"]) == {
        "timestamp": 902, "keyframe_sec": 2.0, "person_id": 1, "box": [0.6, 0.1, 0.9, 0.8]}
    # without an offset the segment sits at the movie time; a wide window is clipped at 0
    m2 = A.load(tmp_path / "r", {"window_sec": "3000"}).manifest.set_index("video_id")
    assert m2.loc["vidC__1000__7", ["start_sec", "end_sec"]].tolist() == [0.0, 2500.0]


def test_boxes_and_probe(tmp_path, video):
    root = make_root(tmp_path / "r", video)
    ds = A.load(root, {"time_offset": "900", "probe": "true"})
    assert list(ds.boxes.columns) == BOXES_SCHEMA.names
    m = ds.manifest.set_index("video_id")
    assert m.loc["-vidA_1__0904__0", "fps"] == pytest.approx(10.0)
    assert m.loc["-vidA_1__0904__0", "n_frames"] == 20
    assert np.isnan(m.loc["vidB__0902__2", "fps"]) and np.isnan(m.loc["vidC__1000__7", "fps"])
    b = ds.boxes.set_index("video_id")
    assert list(b.index) == ["-vidA_1__0902__0", "-vidA_1__0902__1", "-vidA_1__0904__0"]
    # the frame is the source frame index in the file at the keyframe (t = 4 s at 10 fps)
    assert b.loc["-vidA_1__0904__0", "frame"] == 40
    assert b.loc["-vidA_1__0904__0", ["x1", "y1", "x2", "y2"]].tolist() == pytest.approx(
        [0.2, 0.2, 0.6, 0.9])
    fixed = A.load(root, {"time_offset": "900", "fps": "25"})
    assert len(fixed.boxes) == 5 and fixed.boxes.frame.tolist()[-1] == 2500


def test_splits_and_unlisted(tmp_path, video):
    root = make_root(tmp_path / "r", video)
    with pytest.raises(DatasetError, match="none of the 1 videos exist"):
        A.load(root, {"splits": "val"})  # val alone holds only vidC, which has no file
    (root / "small.pbtxt").write_text('label { name: "stand" label_id: 5 }\n')
    with pytest.raises(DatasetError, match="ava_train_v2.2.csv:1: action id 1 is not in"):
        A.load(root, {"label_map": "small.pbtxt"})
    ds = A.load(root, {"label_map": str(root / "small.pbtxt"), "drop_unlisted": "true",
                       "splits": "train"})
    assert ds.classes == ["stand"]
    assert list(ds.manifest.video_id) == ["-vidA_1__0902__0", "-vidA_1__0904__0"]
    with pytest.raises(DatasetError, match="splits must be"):
        A.load(root, {"splits": "test"})


@pytest.mark.parametrize("row, message", [
    ("vidB,0902,0.0,0.0,1.0,1.0,3", "expected 8 fields"),
    ("vidB,09x2,0.0,0.0,1.0,1.0,3,2", "must be integers"),
    ("vidB,0902,0.5,0.0,0.4,1.0,3,2", "is not normalised"),
    ("vidB,0902,0.0,0.0,1.5,1.0,3,2", "is not normalised"),
    ("vidB,0902,0.0,0.0,1.0,1.0,7,2", "action id 7 is not in the label map"),
    ("-vidA_1,0902,0.1,0.2,0.6,0.9,3,0", "has box .* but .* on line 1"),
])
def test_malformed_line(tmp_path, video, row, message):
    root = make_root(tmp_path / "r", video, train=TRAIN[:2] + [row])
    with pytest.raises(DatasetError, match=message) as e:
        A.load(root)
    assert e.value.line == 3 and str(e.value).startswith(f"{root / 'ava_train_v2.2.csv'}:3:")


def test_errors(tmp_path, video):
    with pytest.raises(DatasetError, match="^ava: --root is required"):
        A.load()
    with pytest.raises(DatasetError, match="dataset root not found"):
        A.load(tmp_path / "nowhere")
    root = make_root(tmp_path / "r", video)
    (root / "ava_train_excluded_timestamps_v2.2.csv").write_text("-vidA_1,0903\nvidB\n")
    with pytest.raises(DatasetError, match="excluded_timestamps_v2.2.csv:2: expected"):
        A.load(root)
    (root / "ava_train_excluded_timestamps_v2.2.csv").unlink()  # optional file
    assert "-vidA_1__0903__0" in set(A.load(root).manifest.video_id)
    with pytest.raises(DatasetError, match="lies before the file start"):
        A.load(root, {"time_offset": "950"})
    (root / "ava_val_v2.2.csv").unlink()
    with pytest.raises(DatasetError, match="annotation CSV not found") as e:
        A.load(root)
    assert e.value.path == str(root / "ava_val_v2.2.csv")
    (root / "ava_action_list_v2.2.pbtxt").unlink()
    with pytest.raises(DatasetError, match="label map not found"):
        A.load(root, {"splits": "train"})
    bare = make_root(tmp_path / "bare", video)
    for f in (bare / "videos").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="none of the 3 videos exist"):
        A.load(bare)


def test_registry(tmp_path, video):
    ds = load_dataset("ava", make_root(tmp_path / "r", video), {"splits": "train"})
    assert len(ds.manifest) == 4 and ds.multilabel


def boxes_df(rows, score: bool) -> pd.DataFrame:
    cols = ["video", "timestamp", "x1", "y1", "x2", "y2", "label"] + (["score"] if score else [])
    return pd.DataFrame(rows, columns=cols)


GT = boxes_df([("v", 1, 0.0, 0.0, 0.5, 0.5, 0), ("v", 1, 0.5, 0.5, 1.0, 1.0, 0),
               ("v", 2, 0.0, 0.0, 1.0, 1.0, 0), ("v", 2, 0.0, 0.0, 1.0, 1.0, 1)], False)


def test_frame_map_perfect_and_from_manifest(tmp_path, video):
    pred = GT.assign(score=1.0)
    assert frame_map(pred, GT) == {"mAP": 1.0, "per_class": {0: 1.0, 1: 1.0}, "n_classes": 2}
    ds = A.load(make_root(tmp_path / "r", video))
    gt = A.ground_truth(ds.manifest)
    assert len(gt) == 6 and frame_map(gt.assign(score=0.5), gt)["mAP"] == 1.0
