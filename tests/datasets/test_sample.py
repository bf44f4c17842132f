"""The synthetic sample dataset: determinism, table structure and its known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from vidattn.datasets import DATASETS, DatasetTables, load_dataset
from vidattn.datasets import sample as S
from vidattn.stores.schema import BOXES_SCHEMA, MANIFEST_SCHEMA, PAIRS_SCHEMA
from vidattn.video import DecodeConfig, load_clip

# A strong correlation so the 8 train clips show it reliably (the default is milder).
SMALL = S.SampleConfig(n_train_per_class=2, n_test_per_class=2, n_frames=16,
                       train_context_corr=0.9)
TABLES = ("manifest", "pairs", "boxes", "contexts")


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    return S.ensure_sample(tmp_path_factory.mktemp("sample") / "a", SMALL)


@pytest.fixture(scope="session")
def tables(small) -> dict[str, pd.DataFrame]:
    return {t: pq.read_table(small / f"{t}.parquet").to_pandas() for t in TABLES}


@pytest.fixture(scope="session")
def actions(tables) -> pd.DataFrame:
    m = tables["manifest"].merge(tables["contexts"], on="video_id")
    a = m[m.role == "action"].copy()
    a["label"] = [int(lab[0]) for lab in a.labels]
    return a


def _native(path):
    """Decode at the stored size and rate: (n, size, size, 3) as float."""
    cfg = DecodeConfig(fps=None, short_side=SMALL.size, crop=None)
    return load_clip(path, cfg).frames.astype(np.float32)


def test_deterministic(small, tables, tmp_path, capsys):
    again = S.ensure_sample(tmp_path / "b", SMALL)
    assert "generating" in capsys.readouterr().err
    names = sorted(p.name for p in (small / "videos").iterdir())
    assert names == sorted(p.name for p in (again / "videos").iterdir())
    assert len(names) == 2 * 4 * (2 + 2)
    for name in names:
        assert (small / "videos" / name).read_bytes() == (again / "videos" / name).read_bytes()
    for t in TABLES:
        assert pq.read_table(again / f"{t}.parquet").equals(pq.read_table(small / f"{t}.parquet"))
    # A complete dataset is reused silently; another config gets another default dir.
    assert S.ensure_sample(again, SMALL) == again and capsys.readouterr().err == ""
    assert S.default_root(SMALL) != S.default_root(S.SampleConfig())


def test_schemas_and_files(small, tables):
    assert pq.read_schema(small / "manifest.parquet").remove_metadata() == MANIFEST_SCHEMA
    assert pq.read_schema(small / "pairs.parquet").remove_metadata() == PAIRS_SCHEMA
    assert pq.read_schema(small / "boxes.parquet").remove_metadata() == BOXES_SCHEMA
    assert (small / "classes.txt").read_text().splitlines() == list(SMALL.classes)
    assert (small / "COMPLETE").read_text().strip() == S.config_hash(SMALL)
    m = tables["manifest"]
    assert m.video_id.is_unique and set(m.dataset) == {"sample"}
    assert m.start_sec.isna().all() and m.end_sec.isna().all()
    for vid, path in zip(m.video_id, m.path, strict=True):
        assert path == f"videos/{vid}.mp4" and (small / path).is_file()
    assert "train_wave_01" in set(m.video_id) and "train_wave_01_conj" in set(m.video_id)
    assert m.groupby(["split", "role"]).size().to_dict() == {
        ("test", "action"): 8, ("test", "conjugate"): 8,
        ("train", "action"): 8, ("train", "conjugate"): 8,
    }


def test_pairs(tables, actions):
    m = tables["manifest"].merge(tables["contexts"], on="video_id").set_index("video_id")
    p = tables["pairs"]
    assert sorted(p.video_id) == sorted(actions.video_id) and p.conjugate_id.is_unique
    assert set(p.rule) == {"sample:same-context-idle"} and (p.distance == 0).all()
    for vid, conj in zip(p.video_id, p.conjugate_id, strict=True):
        a, c = m.loc[vid], m.loc[conj]
        assert (a.role, c.role) == ("action", "conjugate") and len(c.labels) == 0
        assert a.group == c.group == vid and a.context == c.context and a.split == c.split
    # every conjugate belongs to exactly one action
    assert sorted(m.index[m.role == "conjugate"]) == sorted(p.conjugate_id)


def test_context_shift(actions):
    train, test = actions[actions.split == "train"], actions[actions.split == "test"]
    own = (train.label == train.context).mean()
    assert own >= 0.6, own
    # the default still correlates: above the 1/K of a random context
    assert S.SampleConfig().train_context_corr > 1 / len(S.SampleConfig().classes)
    assert (test.label != test.context).all()
    assert set(test.context) == set(range(4))  # the test split still shows every context


def test_boxes(tables, actions):
    b = tables["boxes"]
    assert set(b.video_id) == set(actions.video_id)
    for _, g in b.groupby("video_id"):
        assert sorted(g.frame) == list(range(SMALL.n_frames))
    xy = b[["x1", "y1", "x2", "y2"]].to_numpy()
    assert ((xy >= 0) & (xy <= 1)).all()
    assert (b.x2 > b.x1).all() and (b.y2 > b.y1).all()
    # the actor stays in the central 80% of the frame; it is ~40% of the frame tall
    assert xy.min() >= 0.1 - 1e-6 and xy.max() <= 0.9 + 1e-6
    assert 0.3 < (b.y2 - b.y1).median() < 0.6


def test_motion_is_inside_the_box(small, tables, actions):
    size, ratios = SMALL.size, []
    boxes = tables["boxes"].sort_values(["video_id", "frame"])
    for vid in actions.video_id:
        act, conj = _native(small / f"videos/{vid}.mp4"), _native(small / f"videos/{vid}_conj.mp4")
        assert act.shape == conj.shape == (SMALL.n_frames, size, size, 3)
        px = np.rint(boxes[boxes.video_id == vid][["x1", "y1", "x2", "y2"]].to_numpy() * size)
        px = px.astype(int)
        union, d_act, d_conj = np.zeros((size, size), bool), [], []
        for t in range(SMALL.n_frames - 1):
            box = np.zeros((size, size), bool)
            for x1, y1, x2, y2 in px[t : t + 2]:
                box[y1:y2, x1:x2] = True
            union |= box
            d_act.append(np.abs(act[t + 1] - act[t])[box].mean())
            d_conj.append(np.abs(conj[t + 1] - conj[t])[box].mean())
        ratios.append(np.mean(d_act) / max(np.mean(d_conj), 1e-3))
        # Outside every box nothing moves but codec noise, in both clips.
        for clip in (act, conj):
            assert np.abs(np.diff(clip, axis=0))[:, ~union].mean() < 0.5, vid
        assert np.mean(d_act) > 1.0, vid
    assert min(ratios) > 2.5 and np.median(ratios) > 5, ratios


def test_decode_paths(small, actions):
    path = small / "videos" / f"{actions.video_id.iloc[0]}.mp4"
    clip = load_clip(path)
    assert clip.frames.shape == (SMALL.n_frames, 224, 224, 3) and clip.fps == 25.0
    assert load_clip(path, DecodeConfig(fps=12.5)).frames.shape[0] == SMALL.n_frames // 2
    assert load_clip(path, DecodeConfig(crop=None)).frames.shape[1:] == (256, 256, 3)
    pyav = load_clip(path, DecodeConfig(backend="pyav"))
    assert pyav.frames.shape == clip.frames.shape
    try:
        import decord  # noqa: F401
    except ImportError:
        return
    dec = load_clip(path, DecodeConfig(backend="decord"))
    assert np.abs(dec.frames.astype(int) - pyav.frames.astype(int)).mean() < 1.0


def test_load_dataset(small, tables):
    d = load_dataset("sample", small)
    assert isinstance(d, DatasetTables) and d.name == "sample" and d.root == small
    assert d.classes == list(SMALL.classes)
    # load_dataset fills the manifest's optional columns (status ok, the rest null)
    pd.testing.assert_frame_equal(d.manifest[tables["manifest"].columns], tables["manifest"])
    assert (d.manifest.status == "ok").all() and d.manifest.extra.isna().all()
    pd.testing.assert_frame_equal(d.pairs, tables["pairs"])
    assert d.boxes is not None and len(d.boxes) == len(tables["boxes"])
    assert DATASETS["sample"] == "vidattn.datasets.sample:load"
    assert all(":" in spec for spec in DATASETS.values())  # lazy "module:function" strings
    with pytest.raises(ValueError, match="sample"):
        load_dataset("kinetics-9000")


def test_cache_root_and_replacement(tmp_path, monkeypatch, capsys):
    tiny = S.SampleConfig(classes=("wave", "clap"), n_train_per_class=1, n_test_per_class=1,
                          n_frames=4, size=64)
    monkeypatch.setenv("VIDATTN_CACHE", str(tmp_path / "cache"))
    root = S.ensure_sample(None, tiny)
    assert root == tmp_path / "cache" / f"sample-{S.config_hash(tiny)}"
    assert (root / "COMPLETE").is_file()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dirs
    # A half-written dataset (no COMPLETE marker) is regenerated, not trusted.
    (root / "COMPLETE").unlink()
    (root / "manifest.parquet").write_bytes(b"junk")
    assert S.ensure_sample(root, tiny) == root
    assert len(pq.read_table(root / "manifest.parquet")) == 8
    # A directory holding something else is refused rather than deleted.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError):
        S.ensure_sample(foreign, tiny)
    assert (foreign / "thesis.tex").read_text() == "precious"
    capsys.readouterr()


def test_config_validation():
    with pytest.raises(ValueError):
        S.SampleConfig(classes=("wave",))
    with pytest.raises(ValueError):
        S.SampleConfig(classes=("wave", "dance"))
    with pytest.raises(ValueError):
        S.SampleConfig(size=63)
    with pytest.raises(ValueError):
        S.SampleConfig(train_context_corr=1.5)
