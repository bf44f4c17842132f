"""HACS end to end: CSV -> manifest -> extraction -> nearest negatives mined in the store."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from vidattn.cli import main
from vidattn.stores import open_store

CSV = """classname,youtube_id,subset,start,end,label
Waving hand,vidA,training,0.0,0.32,1
Waving hand,vidA,training,0.32,0.64,-1
Walking the dog,vidB,training,0.0,0.32,1
Walking the dog,vidC,training,0.0,0.64,-1
Waving hand,vidD,training,0.0,0.64,-1
Waving hand,vidE,validation,0.0,0.64,1
"""


def test_extract_mines_nearest_negatives(tiny_sample, tmp_path):
    root = tmp_path / "hacs"
    for cls, vid, src in [("Waving_hand", "vidA", "train_wave_00"),
                          ("Walking_the_dog", "vidB", "train_walk_00"),
                          ("Walking_the_dog", "vidC", "train_walk_00_conj"),
                          ("Waving_hand", "vidD", "train_jump_00_conj"),
                          ("Waving_hand", "vidE", "test_wave_00")]:
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_sample / "videos" / f"{src}.mp4", root / cls / f"v_{vid}.mp4")
    (root / "HACS_clips_v1.1.1.csv").write_text(CSV)
    store = str(tmp_path / "store")
    r = CliRunner().invoke(main, ["extract", "--dataset", "hacs", "--root", str(root),
                                  "--store", store, "--i3d-rgb", "random", "--device", "cpu",
                                  "--short-side", "64", "--crop", "full"])
    assert r.exit_code == 0, r.output
    s = open_store(store)
    pairs = s.pairs()
    man = s.manifest().set_index("video_id")
    positives = man[(man.role == "action") & (man.split == "train")].index
    assert set(pairs.video_id) == set(positives) and len(positives) == 2
    assert (pairs.groupby("video_id").size() == 3).all()  # k = 3 negatives each
    assert set(man.loc[pairs.conjugate_id, "role"]) == {"background"}
    # extract mines with the default, the paper's rule: the nearest of the whole negative
    # pool, nearest first (no longer vidA's own negative first: that is an option now), and
    # the rule names the embedding; k = 3 of 3 training negatives: each positive takes all
    negatives = man[(man.role == "background") & (man.split == "train")].index
    for _, p in pairs.groupby("video_id"):
        assert set(p.conjugate_id) == set(negatives)
        assert p.distance.is_monotonic_increasing
    assert set(pairs.rule) == {"hacs:nearest-negative:rgb-i3d-mixed5c-meanpool"}
    # a re-run keeps the mined pairs (the adapter itself has none to offer)
    r = CliRunner().invoke(main, ["extract", "--dataset", "hacs", "--root", str(root),
                                  "--store", store, "--i3d-rgb", "random", "--device", "cpu",
                                  "--short-side", "64", "--crop", "full"])
    assert r.exit_code == 0 and len(open_store(store).pairs()) == len(pairs)
