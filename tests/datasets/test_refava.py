"""RefAVA adapter (restricted-unpickled annotation dicts) and the RefAVA metrics."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from vidattn.datasets import DatasetError, load_dataset
from vidattn.datasets import refava as R
from vidattn.stores.schema import BOXES_SCHEMA, MANIFEST_SCHEMA

MULTI_HOT = np.zeros(80, np.float32)
MULTI_HOT[[11, 79]] = 1  # ids 12 and 80
SPLITS = {  # key -> (keyframe box, label, description), in every value form accepted
    "train": {
        "vid_A___0902___0": ([0.1, 0.2, 0.5, 0.9], [12, 80, 12], "the man in a red shirt"),
        "vid_A___0902___1": (np.array([0.6, 0.1, 0.9, 0.8]), np.array([1]), " a woman "),
    },
    "val": {"vidB___1000___3": ((0, 0, 1, 1), MULTI_HOT, ["the child on the left", "kid"])},
    # the RAVAR loader's forms: a list of boxes (the first is the person's), sentence lists
    "test": {"vidC___0950___2": ([[0.2, 0.2, 0.4, 0.4, 7], [0.5, 0.5, 0.6, 0.6, 8]], (5,),
                                 (np.str_("someone sitting"),))},
}


def write(root: Path, split: str, kind: str, obj, protocol: int = 4) -> None:
    R.pickle_path(root, split, kind).write_bytes(pickle.dumps(obj, protocol=protocol))


def make_root(root: Path, splits=SPLITS) -> Path:
    (root / "videos").mkdir(parents=True)
    for split, items in splits.items():
        for i, kind in enumerate(R.KINDS):  # protocol 5 writes numpy arrays differently
            write(root, split, kind, {k: v[i] for k, v in items.items()}, 4 + (split == "val"))
    for name in ("vid_A.mp4", "vidB.mkv"):  # placeholders: existence only (no probe)
        (root / "videos" / name).write_bytes(b"")
    return root


def test_manifest(tmp_path):
    ds = R.load(make_root(tmp_path / "r"), {"time_offset": "900", "fps": "30"})
    assert ds.name == "refava" and ds.multilabel and len(ds.pairs) == 0
    assert ds.classes == [f"action_{i}" for i in range(1, 81)]
    assert list(ds.manifest.columns) == MANIFEST_SCHEMA.names
    m = ds.manifest.set_index("video_id")
    assert list(m.index) == ["vidC__0950__2", "vid_A__0902__0", "vid_A__0902__1",
                             "vidB__1000__3"]  # sorted by split, then video, time, person
    assert [list(v) for v in m.labels] == [[4], [11, 79], [0], [11, 79]]
    assert list(m.split) == ["test", "train", "train", "val"]
    assert list(m.group) == ["vidC", "vid_A", "vid_A", "vidB"]
    assert list(m.status) == ["missing", "ok", "ok", "ok"]
    assert list(m.path) == ["videos/vidC.mp4", "videos/vid_A.mp4", "videos/vid_A.mp4",
                            "videos/vidB.mkv"]
    assert m.loc["vidB__1000__3", ["start_sec", "end_sec"]].tolist() == [99.0, 101.0]
    assert json.loads(m.loc["vid_A__0902__1", "extra"]) == {
        "timestamp": 902, "keyframe_sec": 2.0, "person_id": 1, "box": [0.6, 0.1, 0.9, 0.8],
        "description": "a woman"}
    assert list(ds.boxes.columns) == BOXES_SCHEMA.names
    assert ds.boxes.set_index("video_id").loc["vid_A__0902__0", "frame"] == 60  # 2 s x 30
    assert json.loads(m.loc["vidC__0950__2", "extra"])["box"] == [0.2, 0.2, 0.4, 0.4]
    assert json.loads(m.loc["vidC__0950__2", "extra"])["description"] == "someone sitting"
    assert json.loads(m.loc["vidB__1000__3", "extra"])["description"] == "the child on the left"


def test_label_map(tmp_path):
    root = make_root(tmp_path / "r")
    ids = (1, 5, 12, 80)
    (root / "ava_action_list_v2.2.pbtxt").write_text("".join(
        f'label {{ name: "a{i}" label_id: {i} }}\n' for i in ids))
    ds = R.load(root)
    assert ds.classes == ["a1", "a5", "a12", "a80"] and ds.boxes is None
    assert [list(v) for v in ds.manifest.labels] == [[1], [2, 3], [0], [2, 3]]
    (root / "ava_action_list_v2.2.pbtxt").write_text('label { name: "a1" label_id: 1 }\n')
    with pytest.raises(DatasetError, match="'vid_A___0902___0': action id 12 is not in") as e:
        R.load(root, {"splits": "train"})
    assert e.value.path == str(root / "train_set_label_crr_final.pkl")


def test_inconsistent_pickles(tmp_path):
    root = make_root(tmp_path / "r")
    write(root, "train", "description", {"vid_A___0902___0": "x", "vid_Z___0001___0": "y"})
    with pytest.raises(DatasetError) as e:
        R.load(root)
    msg = str(e.value)
    assert "train_set_keyframe_crr_final.pkl lacks 1 key(s), e.g. 'vid_Z___0001___0'" in msg
    assert "train_set_label_crr_final.pkl lacks 1 key(s)" in msg
    assert "train_set_description_crr_final.pkl lacks 1 key(s), e.g. 'vid_A___0902___1'" in msg


def test_malicious_pickle_is_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    root = make_root(tmp_path / "r")
    write(root, "val", "keyframe", {"vidB___1000___3": Evil()})
    with pytest.raises(DatasetError, match="unsafe pickle, not loaded: .*system") as e:
        R.load(root)
    assert e.value.path == str(root / "val_set_keyframe_crr_final.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("kind, value, message", [
    ("keyframe", [0.1, 0.2, 0.5], "not normalised|4 finite"),
    ("keyframe", [0.5, 0.2, 0.1, 0.9], "is not normalised"),
    ("keyframe", "0.1 0.2 0.5 0.9", "not 4 numbers or a list of boxes"),
    ("keyframe", [[0.1, 0.2, 0.5], [0.1]], "not 4 numbers or a list of boxes"),
    ("keyframe", [[0.1, 0.2, 0.5], [0.1, 0.2, 0.3]], "not 4 numbers or a list of boxes"),
    ("keyframe", [0.1, 0.2, 0.5, 0.9, 1.0], "4 finite numbers"),
    ("keyframe", [[0.1, 0.2, 0.5, 1.2]], "is not normalised"),
    ("keyframe", [True, False, True, True], "not 4 numbers or a list of boxes"),
    ("keyframe", [0.1, 0.2, float("nan"), 0.9], "4 finite numbers"),
    ("label", [0, 3], "action ids in 1..80, got 0"),
    ("label", [81], "got 81"),
    ("label", [], "got none"),
    ("label", [1.0, 2.0], "neither a list of action ids"),
    ("label", ["stand"], "neither a list of action ids"),
    ("description", "  ", "is not a non-empty str"),
    ("description", [3, "b"], "is not a non-empty str"),
    ("description", [], "is not a non-empty str"),
])
def test_bad_values(tmp_path, kind, value, message):
    root = make_root(tmp_path / "r")
    write(root, "test", kind, {"vidC___0950___2": value})
    with pytest.raises(DatasetError, match=message) as e:
        R.load(root)
    assert e.value.path == str(R.pickle_path(root, "test", kind))
    assert "'vidC___0950___2'" in str(e.value)


def test_errors(tmp_path):
    with pytest.raises(DatasetError, match="^refava: --root is required"):
        R.load()
    with pytest.raises(DatasetError, match="dataset root not found"):
        R.load(tmp_path / "nowhere")
    root = make_root(tmp_path / "r")
    bad_keys = {"vidC__0950__2": 1, ("vidC", 950, 2): 1, "vidC___09x0___2": 1}
    for key in bad_keys:
        for kind in R.KINDS:
            write(root, "test", kind, {key: SPLITS["test"]["vidC___0950___2"][0]})
        with pytest.raises(DatasetError, match="is not '<video>___<timestamp>___<person_id>'"):
            R.load(root)
    write(root, "test", "label", [1, 2])
    with pytest.raises(DatasetError, match="expected a dict keyed"):
        R.load(root)
    R.pickle_path(root, "test", "label").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="not a readable pickle") as e:
        R.load(root)
    assert e.value.path == str(R.pickle_path(root, "test", "label"))
    R.pickle_path(root, "test", "label").unlink()
    with pytest.raises(DatasetError, match="annotation pickle not found"):
        R.load(root)
    make_root(root.parent / "twice", {"train": SPLITS["train"], "val": SPLITS["train"]})
    with pytest.raises(DatasetError, match="vid_A__0902__0 is listed in two splits"):
        R.load(root.parent / "twice", {"splits": "train,val"})


def test_registry(tmp_path):
    ds = load_dataset("refava", make_root(tmp_path / "r"), {"splits": "val"})
    assert list(ds.manifest.video_id) == ["vidB__1000__3"]
