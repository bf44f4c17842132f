"""Conjugate mining: same-group pairing and HACS nearest negatives on planted features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vidattn.cli import main
from vidattn.pipeline.mine import MineConfig, nearest_negative, run, same_group
from vidattn.stores import open_store

D = 1024


def _row(vid, role, group, split="train", labels=(), start=None, end=None):
    return {"video_id": vid, "path": f"{vid}.mp4", "split": split, "labels": list(labels),
            "role": role, "group": group, "start_sec": start, "end_sec": end,
            "dataset": "unit"}


def test_same_group_pairs_and_gaps():
    man = pd.DataFrame([
        _row("t1", "action", "t1", labels=[0], start=10.0, end=14.0),
        _row("t1_pre", "conjugate", "t1", start=2.0, end=9.0),
        _row("t1_post", "conjugate", "t1", start=15.5, end=20.0),
        _row("t2", "action", "t2", labels=[1]),
        _row("t2_conj", "conjugate", "t2"),
        _row("t3", "action", "t3", labels=[1]),  # no conjugate: no pair
    ]).assign(status="ok")
    pairs = same_group(man, "unit").sort_values(["video_id", "conjugate_id"])
    assert list(zip(pairs.video_id, pairs.conjugate_id)) == [
        ("t1", "t1_post"), ("t1", "t1_pre"), ("t2", "t2_conj")]
    assert pairs.distance.tolist() == pytest.approx([1.5, 1.0, 0.0])
    assert set(pairs.rule) == {"unit:same-group"}


def _direction(i: int, noise: float = 0.0) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i] = 1.0
    v[i + 1] = noise  # a small tilt towards the next axis: controls cosine distances
    return v


@pytest.fixture()
def planted(tmp_path):
    """Positives p1 (video A), p2 (video B); negatives with known cosine distances."""
    feats = {
        "p1": _direction(0), "p2": _direction(10),
        "nA_far": _direction(20),           # same video as p1 but far in feature space
        "n_near1": _direction(0, 0.1),      # nearest to p1
        "n_near2": _direction(0, 0.5),      # second nearest to p1
        "n_mid": _direction(0, 1.0),        # third
        "n_p2a": _direction(10, 0.2), "n_p2b": _direction(10, 0.4),
        "n_test": _direction(0, 0.01),      # nearest of all, but in the test split
    }
    groups = {"p1": "A", "p2": "B", "nA_far": "A", "n_test": "A"}
    man = pd.DataFrame([
        _row(v, "action" if v.startswith("p") else "background", groups.get(v, v),
             split="test" if v == "n_test" else "train",
             labels=[0] if v.startswith("p") else [])
        for v in feats
    ])
    store = open_store(tmp_path / "s", "a")
    store.merge_manifest(man)
    store.group.attrs["dataset"] = {"name": "hacs"}
    rows = [{"video_id": v, "status": "done", "error": None, "n_frames": 16, "fps": 25.0}
            for v in feats]
    # maps whose mean is the planted vector: 2 x 1 x 2 cells of the same vector
    maps = {v: np.tile(f, (2, 1, 2, 1)).reshape(2, 1, 2, D) for v, f in feats.items()}
    store.write_part("rgb", 0, rows, maps)
    return str(tmp_path / "s")


def test_nearest_negatives_prefer_the_same_video(planted):
    pairs = nearest_negative(open_store(planted), k=3, stream="rgb", chunk=1)
    p1 = pairs[pairs.video_id == "p1"]
    # the same-video negative comes first even though it is far; then the nearest others
    assert p1.conjugate_id.tolist() == ["nA_far", "n_near1", "n_near2"]
    assert p1.rule.tolist() == ["hacs:nearest-negative-same-video", "hacs:nearest-negative",
                                "hacs:nearest-negative"]
    assert p1.distance.iloc[0] == pytest.approx(1.0, abs=1e-3)  # orthogonal
    expected = 1 - 1 / np.sqrt(1 + 0.1**2)
    assert p1.distance.iloc[1] == pytest.approx(expected, abs=1e-3)
    p2 = pairs[pairs.video_id == "p2"]
    # no negative shares p2's video: the global nearest, then a tie of orthogonal ones
    assert p2.conjugate_id.tolist()[:2] == ["n_p2a", "n_p2b"]
    assert p2.rule.tolist() == ["hacs:nearest-negative"] * 3
    assert p2.distance.iloc[2] == pytest.approx(1.0, abs=1e-3)
    assert "n_test" not in set(pairs.conjugate_id)  # conjugates come from training clips only


def test_mining_is_written_to_the_store(planted):
    pairs = run(MineConfig(planted, k=2))  # auto -> nearest-negative for hacs
    stored = open_store(planted).pairs()
    assert len(pairs) == len(stored) == 4
    assert set(stored.video_id) == {"p1", "p2"}


def test_cli_same_group_on_the_tiny_sample(tiny_store, tmp_path):
    import shutil

    store = str(tmp_path / "copy")
    shutil.copytree(tiny_store, store)
    before = open_store(store).pairs()
    r = CliRunner().invoke(main, ["mine-conjugates", "--store", store])
    assert r.exit_code == 0, r.output
    assert "sample:same-group" in r.output
    after = open_store(store).pairs()
    key = ["video_id", "conjugate_id"]
    assert sorted(map(tuple, after[key].values)) == sorted(map(tuple, before[key].values))
    r = CliRunner().invoke(main, ["mine-conjugates", "--store", store, "--rule", "nope"])
    assert r.exit_code == 1 and "unknown mining rule" in r.output
