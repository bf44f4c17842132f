"""Cluster benchmarks: dask scheduler overhead per task, and re-scoring / extraction with 2
workers against 1 on the same store (target >= 1.7x).  Workers run one thread each, so the
comparison is of workers, not of threads inside one process."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _noop(x: int) -> int:
    return x


def _synthetic_store(url: str, n: int = 240) -> None:
    """n videos of 8x7x7x1024 maps, 4 classes, half train half test."""
    import pandas as pd

    from vidattn.stores import open_store

    rng = np.random.default_rng(0)
    store = open_store(url, "a")
    ids = [f"v{i:04d}" for i in range(n)]
    store.set_classes(["a", "b", "c", "d"])
    store.merge_manifest(pd.DataFrame({"video_id": ids, "path": [f"{v}.mp4" for v in ids],
                                       "split": ["train" if i % 2 else "test"
                                                 for i in range(n)],
                                       "labels": [[i % 4] for i in range(n)],
                                       "role": "action", "group": ids, "start_sec": None,
                                       "end_sec": None, "dataset": "synthetic"}))
    plan = store.extend_plan(ids, 16)
    for part, group in plan.groupby("part"):
        vids = group.video_id.tolist()
        maps = {v: np.maximum(rng.normal(size=(8, 7, 7, 1024)), 0).astype(np.float32)
                for v in vids}
        rows = [{"video_id": v, "status": "done", "error": None, "n_frames": 64, "fps": 25.0}
                for v in vids]
        store.write_part("rgb", int(part), rows, maps)


# Jobs a user has: a dataset's clips scored by two heads to compare.  The store holds the
# larger; the smaller job selects its first ids (--ids).
SCORE_JOBS = (2000, 6000)


def bench_cluster(rows: list) -> None:
    from vidattn.cluster import ClusterConfig, client, run_tasks

    cfg = ClusterConfig(workers=2)
    with client(cfg) as c:
        list(run_tasks(c, _noop, range(20), cfg))  # warm
        t = time.perf_counter()
        n = len(list(run_tasks(c, _noop, range(500), cfg)))
        sec = time.perf_counter() - t
    rows.append(("dask: 500 no-op tasks through run_tasks (2 workers, <= 4 in flight)",
                 f"{sec / n * 1000:.1f} ms/task", f"{n / sec:.0f} tasks/s"))

    tmp = Path(tempfile.mkdtemp())
    try:
        store = str(tmp / "store")
        _synthetic_store(store, max(SCORE_JOBS))
        _bench_reads(rows, store)
        _bench_score(rows, tmp, store)
        _bench_extract(rows, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench_reads(rows: list, store: str) -> None:
    """Every map of the store read one by one against neighbours in one slice."""
    from vidattn.data.maps import StoreMaps, entries
    from vidattn.stores import open_store

    s = open_store(store)
    ids = s.video_ids("rgb")
    t = time.perf_counter()
    for v in ids:
        s.read(v, "rgb")
    alone = time.perf_counter() - t
    maps = StoreMaps(store, "rgb", entries(s, "rgb", ids), 1024)
    t = time.perf_counter()
    for _ in maps.read_many(ids):
        pass
    many = time.perf_counter() - t
    rows.append((f"read {len(ids)} maps (8x7x7x1024 float16, zstd), one by one", f"{alone:.2f} s",
                 f"{len(ids) / alone:.0f} maps/s"))
    rows.append((f"read the same {len(ids)} maps, neighbours in one slice (read_many)",
                 f"{many:.2f} s", f"{len(ids) / many:.0f} maps/s = {alone / many:.1f}x"))


def _bench_score(rows: list, tmp: Path, store: str) -> None:
    """`vidattn score` with an avgpool and an ActX run: in this process (torch's threads),
    then on 1 and 2 dask workers (one thread each), cluster start-up included."""
    from click.testing import CliRunner

    from vidattn.cli import main
    from vidattn.pipeline.score import ScoreConfig
    from vidattn.pipeline.score import run as score

    runs = []
    for head in ("avgpool", "actx"):
        runs.append(str(tmp / head))
        r = CliRunner().invoke(main, ["train-head", head, "--store", store, "--out", runs[-1],
                                      "--epochs", "1", "--device", "cpu"])
        assert r.exit_code == 0, r.output
    from vidattn.stores import open_store

    every = sorted(open_store(store).video_ids("rgb"))
    for n in SCORE_JOBS:
        ids = tmp / f"ids{n}.txt"
        ids.write_text("\n".join(every[:n]) + "\n")
        took = {}
        for workers in (0, 1, 2):
            t = time.perf_counter()
            res = score(ScoreConfig(runs=tuple(runs), store=store, ids=str(ids),
                                    out=str(tmp / f"p{n}-{workers}"), workers=workers))
            took[workers] = time.perf_counter() - t
            who = "in this process" if not workers else f"{workers} worker(s)"
            rows.append((f"score {res.selected} videos (8x7x7x1024) with avgpool + actx, {who}",
                         f"{took[workers]:.1f} s", res.where_time_went()))
        rows.append((f"re-scoring {n} videos: 2 workers vs 1 (target >= 1.7x)", "",
                     f"{took[1] / took[2]:.2f}x; 2 workers vs this process: "
                     f"{took[0] / took[2]:.2f}x"))


def _bench_extract(rows: list, tmp: Path) -> None:
    from vidattn.datasets.sample import SampleConfig, ensure_sample
    from vidattn.pipeline.extract import ExtractConfig
    from vidattn.pipeline.extract import run as extract

    root = ensure_sample(tmp / "sample", SampleConfig(n_train_per_class=6, n_test_per_class=2,
                                                      n_frames=40))

    def extract_with(workers: int) -> int:
        return extract(ExtractConfig(root=str(root), store=str(tmp / f"x{workers}"),
                                     device="cpu", workers=workers, part_size=4)).n_videos

    _one_vs_two(rows, "extraction", "extract {n} sample clips (40 frames, 128 px, Kinetics "
                "I3D)", "{rate:.2f} videos/s", extract_with)


def _one_vs_two(rows: list, what: str, label: str, rate: str, job) -> None:
    """Time ``job(workers)`` (-> items done) with 1 and 2 workers, cluster start included;
    a row each, and the speed-up."""
    took = {}
    for workers in (1, 2):
        t = time.perf_counter()
        n = job(workers)
        took[workers] = time.perf_counter() - t
        rows.append((f"{label.format(n=n)}, {workers} worker(s)", f"{took[workers]:.1f} s",
                     f"{rate.format(rate=n / took[workers])} incl. cluster start"))
    rows.append((f"{what}: 2 workers vs 1 (target >= 1.7x)", "", f"{took[1] / took[2]:.2f}x"))
