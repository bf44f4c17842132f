"""Conjugate mining: same-group pairing and HACS nearest negatives on planted features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vidattn.cli import main
from vidattn.pipeline.mine import (
    MineConfig,
    embedding_name,
    nearest_negative,
    run,
    same_group,
)
from vidattn.stores import open_store

D = 1024
RULE = "hacs:nearest-negative:rgb-i3d-mixed5c-meanpool"
RULE_SAME = "hacs:nearest-negative-same-video:rgb-i3d-mixed5c-meanpool"


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
    # flow: the same, except that p1's same-video negative is now the nearest of all
    flow = {**feats, "nA_far": _direction(0, 0.05)}
    store.write_part("flow", 0, rows,
                     {v: np.tile(f, (2, 1, 2, 1)).reshape(2, 1, 2, D) for v, f in flow.items()})
    return str(tmp_path / "s")


def _dist(tilt: float) -> float:
    """Cosine distance between e_i and e_i + tilt e_(i+1)."""
    return 1 - 1 / np.sqrt(1 + tilt**2)


def test_nearest_negatives_default_to_the_whole_pool(planted):
    """The paper's rule: the k nearest of the whole negative pool, whatever their video.

    Until the same-video preference became an option this default took nA_far (p1's video,
    orthogonal to it) first; now it must not appear among p1's three nearest at all.
    """
    pairs = nearest_negative(open_store(planted), k=3, stream="rgb", chunk=1)
    p1 = pairs[pairs.video_id == "p1"]
    assert p1.conjugate_id.tolist() == ["n_near1", "n_near2", "n_mid"]
    assert "nA_far" not in set(p1.conjugate_id)
    assert p1.distance.tolist() == pytest.approx([_dist(0.1), _dist(0.5), _dist(1.0)],
                                                 abs=1e-3)
    assert set(pairs.rule) == {RULE}  # the embedding is recorded; nothing marked same-video
    p2 = pairs[pairs.video_id == "p2"]
    # the global nearest, then a tie of orthogonal ones
    assert p2.conjugate_id.tolist()[:2] == ["n_p2a", "n_p2b"]
    assert p2.distance.iloc[2] == pytest.approx(1.0, abs=1e-3)
    assert "n_test" not in set(pairs.conjugate_id)  # conjugates come from training clips only


def test_same_video_first_is_an_option(planted):
    pairs = nearest_negative(open_store(planted), k=3, stream="rgb", chunk=1,
                             same_video_first=True)
    p1 = pairs[pairs.video_id == "p1"]
    # the same-video negative comes first even though it is far; then the nearest others
    assert p1.conjugate_id.tolist() == ["nA_far", "n_near1", "n_near2"]
    assert p1.rule.tolist() == [RULE_SAME, RULE, RULE]
    assert p1.distance.iloc[0] == pytest.approx(1.0, abs=1e-3)  # orthogonal
    assert p1.distance.iloc[1] == pytest.approx(_dist(0.1), abs=1e-3)
    p2 = pairs[pairs.video_id == "p2"]
    # no negative shares p2's video: the option changes nothing for it
    assert p2.conjugate_id.tolist()[:2] == ["n_p2a", "n_p2b"]
    assert p2.rule.tolist() == [RULE] * 3
    assert "n_test" not in set(pairs.conjugate_id)


def test_config_chooses_the_rule_and_the_stream_names_the_embedding(planted):
    default = run(MineConfig(planted, k=3))
    assert default[default.video_id == "p1"].conjugate_id.iloc[0] == "n_near1"
    option = run(MineConfig(planted, k=3, same_video_first=True))
    assert option[option.video_id == "p1"].conjugate_id.iloc[0] == "nA_far"
    assert open_store(planted).pairs().rule.tolist() == option.rule.tolist()
    # flow: nA_far is p1's nearest there; the default takes it on distance alone, so it is
    # not marked same-video, and the rule names the flow stream it was mined from
    flow = run(MineConfig(planted, k=3, stream="flow"))
    p1 = flow[flow.video_id == "p1"]
    assert p1.conjugate_id.tolist() == ["nA_far", "n_near1", "n_near2"]
    assert set(flow.rule) == {"hacs:nearest-negative:flow-i3d-mixed5c-meanpool"}


@pytest.mark.parametrize(("stream", "name"), [
    ("rgb", "rgb-i3d-mixed5c-meanpool"),
    ("flow", "flow-i3d-mixed5c-meanpool"),
    ("rgb_mixed_4f", "rgb-i3d-mixed4f-meanpool"),
    ("rgb_r50", "rgb-i3d-r50-res5-meanpool"),
    ("rgb_r50_res4", "rgb-i3d-r50-res4-meanpool"),
    ("rgb_mystery", "rgb-mystery-meanpool"),  # not an array of the extractor: named as is
])
def test_embedding_names(stream, name):
    assert embedding_name(stream) == name


def test_mining_is_written_to_the_store(planted):
    pairs = run(MineConfig(planted, k=2))  # auto -> nearest-negative for hacs
    stored = open_store(planted).pairs()
    assert len(pairs) == len(stored) == 4
    assert set(stored.video_id) == {"p1", "p2"}
    assert set(stored.rule) == {RULE}


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
