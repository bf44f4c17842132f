"""The referring sample: instances, sentences that name one actor, boxes, visible colours."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from vidattn.datasets import load_dataset
from vidattn.datasets import sample as S
from vidattn.datasets import sample_ref as R
from vidattn.stores.schema import BOXES_SCHEMA, MANIFEST_SCHEMA, PAIRS_SCHEMA
from vidattn.video import DecodeConfig, load_clip

SMALL = S.SampleConfig(referring=True, n_train_clips=4, n_test_clips=3, n_frames=12)
# config_hash(SampleConfig()) as printed by the code before the referring variant existed:
# the plain sample's cache directory (and the results trained on it) must not move.
PLAIN_HASH = "1b3688248d56"
TABLES = ("manifest", "pairs", "boxes", "contexts")
LANE_WORDS = ("left", "middle", "right")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return S.ensure_sample(tmp_path_factory.mktemp("ref") / "a", SMALL)


@pytest.fixture(scope="module")
def tables(small) -> dict[str, pd.DataFrame]:
    out = {t: pq.read_table(small / f"{t}.parquet").to_pandas() for t in TABLES}
    out["manifest"]["x"] = [json.loads(e) for e in out["manifest"].extra]
    return out


def _plan(cfg: S.SampleConfig, clip_id: str) -> R.ClipPlan:
    """The truth behind a clip, re-drawn from its identity."""
    split, index = clip_id.rsplit("_", 1)
    return R.plan_clip(cfg, ("train", "test").index(split), int(index))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_plain_hash_unchanged():
    assert S.config_hash(S.SampleConfig()) == PLAIN_HASH
    # the referring fields do not count while referring is off ...
    assert S.config_hash(S.SampleConfig(actors=2, n_train_clips=5, n_test_clips=9)) == PLAIN_HASH
    # ... and do once it is on
    assert S.config_hash(SMALL) != S.config_hash(S.SampleConfig(referring=True))
    assert S.default_root(S.SampleConfig(referring=True)) != S.default_root(S.SampleConfig())


def test_schemas_and_files(small, tables):
    assert pq.read_schema(small / "manifest.parquet").remove_metadata() == MANIFEST_SCHEMA
    assert pq.read_schema(small / "pairs.parquet").remove_metadata() == PAIRS_SCHEMA
    assert pq.read_schema(small / "boxes.parquet").remove_metadata() == BOXES_SCHEMA
    assert len(tables["pairs"]) == 0  # no conjugates
    assert (small / "classes.txt").read_text().splitlines() == list(SMALL.classes)
    assert (small / "COMPLETE").read_text().strip() == S.config_hash(SMALL)
    assert json.loads((small / "config.json").read_text())["referring"] is True
    assert set(tables["contexts"].video_id) == set(tables["manifest"].video_id)
    assert sorted(p.name for p in (small / "videos").iterdir()) == sorted(
        [f"train_{i:02d}.mp4" for i in range(4)] + [f"test_{i:02d}.mp4" for i in range(3)])


def test_instances(small, tables):
    m = tables["manifest"]
    assert m.video_id.is_unique and (m.role == "action").all() and set(m.dataset) == {"sample"}
    assert m.start_sec.isna().all() and m.end_sec.isna().all() and (m.status == "ok").all()
    assert (m.fps == SMALL.fps).all() and (m.n_frames == SMALL.n_frames).all()
    assert set(m.x.iloc[0]) == {"description", "person_id", "box", "keyframe_sec", "persons"}
    for clip, g in m.groupby("group"):
        plan = _plan(SMALL, clip)
        assert 2 <= len(g) <= SMALL.actors and len(g) == len(plan.actors)
        assert (g.path == f"videos/{clip}.mp4").all() and (small / g.path.iloc[0]).is_file()
        assert g.split.nunique() == 1 and g.split.iloc[0] == clip.split("_")[0]
        for (_, row), actor in zip(g.iterrows(), plan.actors, strict=True):
            assert row.video_id == f"{clip}_p{row.x['person_id']}"
            assert row.x["person_id"] == actor.person_id
            assert list(row.labels) == [actor.motion]  # one label, the actor's motion
            assert row.x["keyframe_sec"] == pytest.approx((SMALL.n_frames // 2) / SMALL.fps)
            assert row.x["persons"] == g.x.iloc[0]["persons"]  # one list per clip
    # every class appears in both splits
    for _, g in m.groupby("split"):
        assert {int(lab[0]) for lab in g.labels} == set(range(len(SMALL.classes)))


def test_descriptions(tables):
    palette, motions = set(R.PALETTE), set(S.MOTIONS)
    for clip, g in tables["manifest"].groupby("group"):
        plan = _plan(SMALL, clip)
        texts = [x["description"] for x in g.x]
        assert len(set(texts)) == len(texts), texts
        for text, actor in zip(texts, plan.actors, strict=True):
            words = _words(text)
            lanes, colours = words & set(LANE_WORDS), words & palette
            assert lanes or colours, text
            # Only its own lane, counted from the persons list, and its own colour.
            expected_lane = R.LANES[len(plan.actors)][actor.person_id]
            assert lanes <= {expected_lane} and colours <= {actor.colour}, (text, actor)
            assert not words & motions  # never the action, as in RefAVA


def test_sentences_mix_templates_and_stay_unique():
    """Over many planned clips (no pixels drawn): all three kinds, 2 and 3 actors."""
    cfg = S.SampleConfig(referring=True, n_frames=8, n_train_clips=200)
    kinds, counts = set(), set()
    for i in range(200):
        plan = R.plan_clip(cfg, 0, i)
        texts = [a.description for a in plan.actors]
        assert len(set(texts)) == len(texts)
        counts.add(len(plan.actors))
        for text in texts:
            words = _words(text)
            kinds.add((bool(words & set(LANE_WORDS)), bool(words & set(R.PALETTE))))
        assert len({a.colour for a in plan.actors}) == len(plan.actors)
    assert kinds == {(True, False), (False, True), (True, True)} and counts == {2, 3}
    labels = [a.motion for i in range(200) for a in R.plan_clip(cfg, 0, i).actors]
    share = np.bincount(labels) / len(labels)
    assert share.min() > 0.18 and share.max() < 0.32, share  # balanced-ish


def test_boxes(tables):
    m, b = tables["manifest"], tables["boxes"]
    assert set(b.video_id) == set(m.video_id)
    kf = SMALL.n_frames // 2
    at = b.set_index(["video_id", "frame"])
    for _, g in b.groupby("video_id"):
        assert sorted(g.frame) == list(range(SMALL.n_frames))
    xy = b[["x1", "y1", "x2", "y2"]].to_numpy()
    assert ((xy >= 0) & (xy <= 1)).all() and (b.x2 > b.x1).all() and (b.y2 > b.y1).all()
    for vid, x in zip(m.video_id, m.x, strict=True):
        row = at.loc[(vid, kf), ["x1", "y1", "x2", "y2"]].to_numpy()
        np.testing.assert_array_equal(np.float32(x["box"]), row)
        assert x["box"] in x["persons"] and x["persons"][x["person_id"]] == x["box"]
    for _, g in m.groupby("group"):
        persons = np.array(g.x.iloc[0]["persons"])
        assert (persons[:-1, 2] <= persons[1:, 0]).all(), persons  # left to right, disjoint
        # and no two actors' boxes overlap in any frame
        per_frame = np.stack([at.loc[v][["x1", "x2"]].to_numpy() for v in g.video_id])
        assert (per_frame[:-1, :, 1] <= per_frame[1:, :, 0]).all()


def test_palette_visible_on_every_context():
    rng = np.random.default_rng(0)
    for ctx in range(len(S.MOTIONS)):
        bg = S._background(ctx, 128, rng, 0)
        mean = bg.mean((0, 1))
        px = (mean + S.CONTEXT_CONTRAST * (bg - mean)).reshape(-1, 3)
        for name, colour in R.PALETTE.items():
            assert np.linalg.norm(px - colour, axis=1).min() > 90, (ctx, name)


def test_colour_is_visible_at_the_keyframe(small, tables):
    """Decode the keyframe; the box's actor-like pixels must be its named colour.

    Pixels within 60 of some palette colour are the actor's (every background stays > 90
    away, see above); their mean must lie nearest the named colour, and they must fill a
    fair share of the box.  An actor drawn in the wrong colour, or boxes in the wrong
    place, fail here.
    """
    names = list(R.PALETTE)
    palette = np.array([R.PALETTE[n] for n in names], np.float32)
    kf, size = SMALL.n_frames // 2, SMALL.size
    decode = DecodeConfig(fps=None, short_side=size, crop=None)
    m = tables["manifest"]
    for clip, g in m.groupby("group"):
        frame = load_clip(small / g.path.iloc[0], decode).frames[kf].astype(np.float32)
        assert frame.shape == (size, size, 3)
        for actor, x in zip(_plan(SMALL, clip).actors, g.x, strict=True):
            x1, y1, x2, y2 = np.rint(np.array(x["box"]) * size).astype(int)
            px = frame[y1:y2, x1:x2].reshape(-1, 3)
            dist = np.linalg.norm(px[:, None] - palette[None], axis=2)
            near = px[dist.min(1) < 60]
            assert len(near) > 0.15 * len(px), (clip, actor.colour, len(near), len(px))
            nearest = names[np.linalg.norm(palette - near.mean(0), axis=1).argmin()]
            assert nearest == actor.colour, (clip, actor.person_id, nearest, actor.colour)


def test_deterministic(small, tmp_path, capsys):
    again = S.ensure_sample(tmp_path / "b", SMALL)
    assert "generating sample dataset (7 clips)" in capsys.readouterr().err
    for p in sorted((small / "videos").iterdir()):
        assert (again / "videos" / p.name).read_bytes() == p.read_bytes(), p.name
    for t in TABLES:
        assert pq.read_table(again / f"{t}.parquet").equals(pq.read_table(small / f"{t}.parquet"))
    # clips are keyed by identity: a smaller dataset draws its clips identically
    fewer = S.SampleConfig(**{**SMALL.__dict__, "n_train_clips": 1, "n_test_clips": 1})
    one = S.ensure_sample(tmp_path / "c", fewer)
    for name in ("train_00.mp4", "test_00.mp4"):
        assert (one / "videos" / name).read_bytes() == (small / "videos" / name).read_bytes()


def test_load_through_the_registry(small, tmp_path, capsys):
    options = {"referring": "true", "n_train_clips": "2", "n_test_clips": "1",
               "n_frames": "8", "actors": "2", "classes": "wave,clap"}
    d = load_dataset("sample", tmp_path / "r", options)
    assert d.multilabel and d.classes == ["wave", "clap"] and len(d.pairs) == 0
    assert d.manifest.groupby("group").size().tolist() == [2, 2, 2]  # actors=2
    assert d.boxes is not None and len(d.boxes) == 6 * 8
    assert {json.loads(e)["person_id"] for e in d.manifest.extra} == {0, 1}
    # An existing referring root loads as it is (no options, no cfg), still multi-label.
    assert load_dataset("sample", small).multilabel and S.load(tmp_path / "r").multilabel
    with pytest.raises(ValueError, match="cfg or options"):
        S.load(tmp_path / "r", SMALL, {"referring": "true"})
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("sample", tmp_path / "r", {"lanes": "3"})
    capsys.readouterr()


def test_config_validation():
    for bad in ({"actors": 1}, {"actors": 4}, {"n_train_clips": 0}, {"n_test_clips": 0}):
        with pytest.raises(ValueError, match="actors"):
            S.SampleConfig(referring=True, **bad)
