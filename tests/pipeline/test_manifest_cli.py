"""`vidattn manifest` and extraction on a plain folder of videos with a labels CSV."""

from __future__ import annotations

import shutil

import pandas as pd
from click.testing import CliRunner

from vidattn.cli import main
from vidattn.stores import open_store


def _folder(tiny_sample, tmp_path):
    root = tmp_path / "clips"
    (root / "a").mkdir(parents=True)
    shutil.copy(tiny_sample / "videos" / "train_wave_00.mp4", root / "a" / "one.mp4")
    shutil.copy(tiny_sample / "videos" / "train_walk_00.mp4", root / "two.mp4")
    (root / "labels.csv").write_text(
        "path,label,split\na/one.mp4,wave,train\ntwo.mp4,walk,test\ngone.mp4,walk,test\n")
    return root


def test_manifest_lists_counts_and_missing_files(tiny_sample, tmp_path):
    root = _folder(tiny_sample, tmp_path)
    out = tmp_path / "m.parquet"
    r = CliRunner().invoke(main, ["manifest", "--dataset", "folder", "--root", str(root),
                                  "--out", str(out), "-o", "labels=labels.csv"])
    assert r.exit_code == 0, r.output
    assert "missing files: 1" in r.output and "gone.mp4" in r.output
    man = pd.read_parquet(out)
    assert set(man.status) == {"ok", "missing"} and len(man) == 3
    assert sorted(man.loc[man.status == "ok", "split"]) == ["test", "train"]


def test_extract_skips_missing_files_and_says_so(tiny_sample, tmp_path):
    root = _folder(tiny_sample, tmp_path)
    store = str(tmp_path / "store")
    r = CliRunner().invoke(main, ["extract", "--dataset", "folder", "--root", str(root),
                                  "--store", store, "--i3d-rgb", "random", "--device", "cpu",
                                  "--crop", "full", "--short-side", "64",
                                  "-o", "labels=labels.csv"])
    assert r.exit_code == 0, r.output
    assert "missing files (listed in the manifest, not extracted): 1" in r.output
    s = open_store(store)
    assert len(s.video_ids()) == 2 and s.classes == ["walk", "wave"]
    assert s.read(s.video_ids()[0]).shape[1:] == (2, 2, 1024)


def test_unknown_dataset_and_missing_root_are_one_line_errors(tmp_path):
    r = CliRunner().invoke(main, ["manifest", "--dataset", "kinetics-9000"])
    assert r.exit_code == 1 and "unknown dataset 'kinetics-9000'" in r.output
    r = CliRunner().invoke(main, ["manifest", "--dataset", "hollywood2", "--root",
                                  str(tmp_path / "nope")])
    assert r.exit_code == 1 and str(tmp_path / "nope") in r.output
    assert len(r.output.strip().splitlines()) == 1
