"""``vidattn score``: batch re-scoring into parquet partitions, in-process and on dask."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vidattn.cli import main
from vidattn.data.dataset import StoreDataset
from vidattn.pipeline.score import (
    META,
    ScoreConfig,
    describe_run,
    partitions,
    run,
    score_partition,
    select,
)
from vidattn.stores import open_store
from vidattn.tasks import classify
from vidattn.tasks.rundir import load_run

VPP = 5  # videos per partition: the tiny store's 24 clips make 5 partitions


HEADS = ("avgpool", "attnpool", "lightgbm")  # LightGBM: a booster behind the head contract


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory) -> tuple[str, ...]:
    root = tmp_path_factory.mktemp("score-runs")
    runs = []
    for head in HEADS:
        out = root / head
        r = CliRunner().invoke(main, ["train-head", head, "--store", tiny_store, "--out",
                                      str(out), "--epochs", "2", "--crop-t", "2",
                                      "--device", "cpu"])
        assert r.exit_code == 0, r.output
        runs.append(str(out))
    return tuple(runs)


@pytest.fixture(scope="module")
def scored(trained, tiny_store, tmp_path_factory) -> tuple[ScoreConfig, pd.DataFrame]:
    """Every extracted clip scored in this process."""
    out = tmp_path_factory.mktemp("scored") / "pred.parquet"
    cfg = ScoreConfig(runs=trained, store=tiny_store, out=str(out), videos_per_partition=VPP)
    res = run(cfg)
    n = len(open_store(tiny_store).video_ids("rgb"))
    assert (res.selected, res.partitions) == (n, math.ceil(n / VPP))
    assert (res.written, res.skipped, res.rows) == (res.partitions, 0, len(HEADS) * n)
    assert res.videos == n  # the last partition is short: counted, not estimated
    return cfg, pd.read_parquet(out)


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["video_id", "run"]).reset_index(drop=True)


def mtimes(out: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()}


def test_scores_equal_runs_predict(scored, tiny_store):
    cfg, df = scored
    store = open_store(tiny_store)
    ids = sorted(store.video_ids("rgb"))
    assert set(df.run) == set(HEADS) and set(df.stream) == {"rgb"}
    for run_dir in cfg.runs:
        head, config = load_run(run_dir)
        rows = ordered(df[df.run == Path(run_dir).name])
        assert rows.video_id.tolist() == ids and (rows["head"] == config["head"]).all()
        # the dataset path of evaluate (whole maps batched by shape) agrees with score's
        want = classify.predict(head, StoreDataset(store, ids=ids), "cpu").scores
        got = np.stack(rows.scores.tolist())
        assert got.dtype == np.float32 and got.shape == (len(ids), 4)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)  # softmax: single-label
        best = np.argsort(-want, 1, kind="stable")[:, :4]  # top_k=5 of 4 classes: all 4
        assert np.stack(rows.top_k.tolist()).tolist() == best.tolist()
        labels = [[config["classes"][k] for k in b] for b in best]
        assert [list(x) for x in rows.top_k_labels] == labels
        np.testing.assert_array_equal(np.stack(rows.top_k_scores.tolist()),
                                      np.take_along_axis(got, best, 1))
    meta = json.loads((Path(cfg.out) / META).read_text())
    assert meta["n_videos"] == len(ids) and meta["config"]["videos_per_partition"] == VPP
    classes = json.loads((Path(cfg.out) / "_classes.json").read_text())
    assert classes == {Path(r).name: store.classes for r in cfg.runs}


def test_rows_follow_the_partition_and_times_are_measured(trained, tiny_store, tmp_path):
    """Within a file, rows are (video, run) in the partition's order, whichever order the
    maps were read in; a partition reports what its reading, scoring and writing took."""
    cfg = ScoreConfig(runs=trained, store=tiny_store, out=str(tmp_path / "p"),
                      videos_per_partition=VPP)
    runs = [describe_run(r) for r in trained]
    sel = select(open_store(tiny_store), runs, None, None)
    part = partitions(sel, VPP)[1]
    Path(cfg.out).mkdir()
    times = score_partition(part, runs, cfg.store, cfg.out, 3, "cpu", "job-order")
    df = pd.read_parquet(Path(cfg.out) / part.name)
    assert list(zip(df.video_id, df.run)) == [(v, runs[i].name) for v, which in
                                              zip(part.videos, part.runs) for i in which]
    assert times.rows == len(df) and min(times.read_s, times.score_s, times.write_s) > 0
    assert times.videos == len(part.videos)


def test_partitions_are_sorted_slices(scored):
    cfg, df = scored
    parts = sorted(Path(cfg.out).glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    ids = sorted(set(df.video_id))
    for i, p in enumerate(parts):
        got = pd.read_parquet(p)
        assert sorted(set(got.video_id)) == ids[i * VPP : (i + 1) * VPP]


def test_two_workers_and_file_url_match_in_process(scored, tmp_path):
    cfg, df = scored
    dist = replace(cfg, out=str(tmp_path / "dist"), workers=2)
    res = run(dist)
    assert res.written == len(list(Path(cfg.out).glob("part-*"))) and res.rows == len(df)
    a, b = ordered(df), ordered(pd.read_parquet(dist.out))
    assert a[["video_id", "run", "head", "stream"]].equals(b[["video_id", "run", "head",
                                                             "stream"]])
    np.testing.assert_allclose(np.stack(a.scores), np.stack(b.scores), rtol=0, atol=1e-6)
    assert np.stack(a.top_k).tolist() == np.stack(b.top_k).tolist()
    # the store through a file:// URL: same store, so the same fingerprint and predictions
    url = replace(cfg, out=str(tmp_path / "url"), store=Path(cfg.store).as_uri())
    run(url)
    c = ordered(pd.read_parquet(url.out))
    np.testing.assert_array_equal(np.stack(a.scores), np.stack(c.scores))
    fp = [json.loads((Path(o) / META).read_text())["fingerprint"] for o in (cfg.out, url.out)]
    assert fp[0] == fp[1]


def test_where_selects_by_manifest(scored, tiny_store, tmp_path):
    cfg, _ = scored
    where = "split == 'test' and role == 'action'"
    res = run(replace(cfg, out=str(tmp_path / "w"), where=where))
    want = set(open_store(tiny_store).manifest().query(where).video_id)
    got = pd.read_parquet(tmp_path / "w")
    assert len(want) == 4 and set(got.video_id) == want and res.selected == 4
    with pytest.raises(ValueError, match="pandas query syntax"):
        run(replace(cfg, out=str(tmp_path / "bad"), where="no_such_column == 1"))


def test_ids_file_selects_and_names_bad_line(scored, tmp_path):
    cfg, df = scored
    some = sorted(set(df.video_id))[:3]
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# chosen\n{some[2]}\n\n{some[0]}  # first\n{some[1]}\n")
    res = run(replace(cfg, out=str(tmp_path / "i"), ids=str(ids)))
    assert res.selected == 3 and sorted(set(pd.read_parquet(tmp_path / "i").video_id)) == some
    ids.write_text(f"{some[0]}\n# fine\nnot_a_video\nalso_not\n")
    with pytest.raises(ValueError, match=rf"^{ids}:3: unknown video id 'not_a_video'"):
        run(replace(cfg, out=str(tmp_path / "j"), ids=str(ids)))
    assert not (tmp_path / "j").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="not both"):
        run(replace(cfg, out=str(tmp_path / "k"), ids=str(ids), where="split == 'test'"))


def test_rerun_writes_nothing(scored):
    cfg, _ = scored
    before = mtimes(cfg.out)
    res = run(cfg)
    assert (res.written, res.rows, res.skipped) == (0, 0, res.partitions)
    assert mtimes(cfg.out) == before
    # a task retried after its first attempt renamed the file: counts it, rewrites nothing
    runs = [describe_run(r) for r in cfg.runs]
    part = partitions(select(open_store(cfg.store), runs, None, None), VPP)[1]
    assert score_partition(part, runs, cfg.store, cfg.out, 5, "cpu", "job").rows == \
        len(HEADS) * VPP
    assert mtimes(cfg.out) == before


def test_crash_recovery_writes_only_the_missing_partition(scored, tmp_path):
    cfg, df = scored
    cfg = replace(cfg, out=str(tmp_path / "crash"))
    run(cfg)
    out = Path(cfg.out)
    (out / "part-00002.parquet").unlink()
    stray = out / ".part-00002.parquet.tmp-deadbeef"
    stray.write_bytes(b"half a parquet file")  # what a killed writer leaves
    # readers skip the hidden temporary name: the other partitions read whole meanwhile
    assert len(pd.read_parquet(out)) == len(df) - len(HEADS) * VPP
    before = mtimes(cfg.out)
    res = run(cfg)
    assert (res.written, res.skipped) == (1, res.partitions - 1) and res.rows == len(HEADS) * VPP
    assert not stray.exists()
    after = mtimes(cfg.out)
    assert {k: v for k, v in after.items() if k != "part-00002.parquet"} == {
        k: v for k, v in before.items() if k != stray.name}
    got = ordered(pd.read_parquet(out))
    assert got[["video_id", "run"]].equals(ordered(df)[["video_id", "run"]])
    np.testing.assert_array_equal(np.stack(got.scores), np.stack(ordered(df).scores))


def test_other_selection_or_runs_refused(scored, trained):
    cfg, _ = scored
    for other in (replace(cfg, videos_per_partition=VPP + 1), replace(cfg, runs=trained[:1]),
                  replace(cfg, where="split == 'train'")):
        with pytest.raises(ValueError, match="fingerprint"):
            run(other)


def test_runs_of_two_streams_score_what_each_stream_has(tmp_path):
    """rgb for a, b, c; flow for a, b only: c gets the rgb run's row, not the flow run's."""
    import torch

    from vidattn.heads.avgpool import Config
    from vidattn.tasks.rundir import RunDir, build_head, save_weights

    store = open_store(tmp_path / "store", mode="a")
    store.set_classes(["x", "y", "z"])
    store.write_table("manifest", pd.DataFrame({
        "video_id": ["a", "b", "c"], "path": ["a.mp4", "b.mp4", "c.mp4"], "split": "test",
        "labels": [[0], [1], [2]], "role": "action", "group": ["a", "b", "c"],
        "start_sec": None, "end_sec": None, "dataset": "synthetic"}))
    rng = np.random.default_rng(0)
    for stream, ids in (("rgb", "abc"), ("flow", "ab")):
        rows = [{"video_id": v, "status": "done", "error": None, "n_frames": 16, "fps": 25.0}
                for v in ids]
        maps = {v: rng.standard_normal((2, 3, 3, 1024)).astype(np.float32) for v in ids}
        store.write_part(stream, 0, rows, maps)
    runs = []
    for stream in ("rgb", "flow"):
        torch.manual_seed(len(stream))
        cfg = Config(num_classes=3, multilabel=True)
        run_dir = tmp_path / f"avg-{stream}"
        save_weights(run_dir, build_head("avgpool", cfg))
        RunDir.write(run_dir, {"head": "avgpool", "head_config": vars(cfg), "stream": stream,
                            "classes": ["x", "y", "z"], "multilabel": True,
                            "store": store.url}, {})
        runs.append(str(run_dir))
    res = run(ScoreConfig(runs=tuple(runs), store=store.url, out=str(tmp_path / "o"),
                          top_k=2, videos_per_partition=2))
    df = ordered(pd.read_parquet(tmp_path / "o"))
    assert (res.selected, res.partitions, res.rows) == (3, 2, 5)
    assert list(zip(df.video_id, df.stream)) == [("a", "flow"), ("a", "rgb"), ("b", "flow"),
                                                 ("b", "rgb"), ("c", "rgb")]
    head, _ = load_run(runs[1])
    want = classify.predict(head, StoreDataset(store, ids=["b"], stream="flow"), "cpu").scores[0]
    np.testing.assert_allclose(df.scores[2], want, rtol=0, atol=1e-6)
    assert not np.isclose(df.scores[2].sum(), 1)  # sigmoid per class, not a softmax
    assert all(len(k) == 2 for k in df.top_k) and all(len(s) == 3 for s in df.scores)


def test_cli_scores_a_filtered_selection(trained, tiny_store, tmp_path):
    out = tmp_path / "cli.parquet"
    r = CliRunner().invoke(main, ["score", trained[0], "--store", tiny_store, "--out", str(out),
                                  "--where", "split == 'test'", "--top-k", "2"])
    assert r.exit_code == 0, r.output
    assert re.search(r"\d+ videos/s over [\d.]+ s; tasks spent [\d.]+ s: read maps \d+%, "
                     r"score \d+%, write \d+%", r.output), r.output
    got = pd.read_parquet(out)
    manifest = open_store(tiny_store).manifest()
    tests = set(manifest.loc[manifest.split == "test", "video_id"])
    assert set(got.video_id) == tests and got.top_k.map(len).eq(2).all()
    r = CliRunner().invoke(main, ["score", trained[0], "--store", tiny_store, "--out", str(out),
                                  "--where", "nonsense ==="])
    assert r.exit_code == 1 and "\n" not in r.output.strip()
