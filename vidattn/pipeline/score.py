"""``vidattn score``: re-score a store's videos with trained heads, into parquet partitions.

``--out PREDICTIONS.parquet`` is a directory; pandas ``read_parquet(OUT)`` and duckdb
``read_parquet('OUT/*.parquet')`` read it whole::

    OUT/
      _score.json          fingerprint, config, runs (pyarrow's discovery skips "_" files)
      _classes.json        run name -> its class names (index k of ``scores`` is class k)
      part-00000.parquet   OUTPUT_SCHEMA: one row per (video, run), videos sorted by id
      part-00001.parquet ...

The selected video ids are sorted and cut into fixed slices of ``videos_per_partition``, so
partition i always holds the same videos.  A partition is written whole by one task under a
hidden temporary name and then renamed: it exists complete or not at all.  A re-run therefore
writes exactly the partitions that are missing, and nothing when all exist.  ``_score.json``
records a fingerprint of the runs (config and weight bytes), the store, the selection and the
partition size; an OUT written for anything else is refused instead of mixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vidattn.cluster import ClusterConfig, client, run_tasks, worker_cached
from vidattn.data.maps import StoreMaps, entries
from vidattn.progress import bar as progress
from vidattn.stores import FeatureStore, open_store
from vidattn.stores.files import put_atomic
from vidattn.stores.schema import ARRAYS
from vidattn.tasks.classify import probabilities
from vidattn.tasks.rundir import RunDir, pick_device

OUTPUT_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("run", pa.string()),  # the run directory's name
        ("head", pa.string()),
        ("stream", pa.string()),
        ("scores", pa.list_(pa.float32())),  # (K,) sigmoid (multi-label) or softmax
        ("top_k", pa.list_(pa.int32())),  # class indices, best first
        ("top_k_labels", pa.list_(pa.string())),
        ("top_k_scores", pa.list_(pa.float32())),
    ]
)
META, CLASSES = "_score.json", "_classes.json"


@dataclass(frozen=True)
class ScoreConfig:
    """runs: run directories (rows are labelled by the directory's name, so names must
    differ); store: path or fsspec URL; out: the partition directory, a path or fsspec URL
    every worker can reach.  Selection: videos with a done map of some run's stream,
    narrowed by ``where``, a pandas ``DataFrame.query`` expression over the store's manifest
    columns (e.g. ``split == 'test' and dataset == 'hacs'``), or by ``ids``, a text file of
    video ids, one per line (blank lines and ``#`` comments ignored); not both.
    workers: 0 = in this process, N = a LocalCluster of N processes (from a script, under
    ``if __name__ == "__main__":``); scheduler: the address of a running dask cluster.
    top_k: class indices/labels/scores kept per row; videos_per_partition: videos per
    output file (and per task); device: cpu | cuda | auto, for every worker."""

    runs: tuple[str, ...]
    store: str
    out: str
    workers: int = 0
    scheduler: str | None = None
    where: str | None = None
    ids: str | None = None
    top_k: int = 5
    videos_per_partition: int = 256
    device: str = "cpu"


@dataclass
class ScoreResult:
    out: str
    selected: int = 0  # videos
    partitions: int = 0  # in all
    written: int = 0  # partitions written by this call
    skipped: int = 0  # partitions that were already there
    rows: int = 0  # (video, run) rows written by this call
    seconds: float = 0.0  # wall, start-up (runs, index, cluster) included
    # summed over the partitions written, in whichever process ran them
    videos: int = 0  # in the partitions written by this call
    read_s: float = 0.0  # fetching and decoding maps
    score_s: float = 0.0  # heads, softmax, top-k
    write_s: float = 0.0  # parquet files

    def add(self, t: PartTimes) -> None:
        self.written += 1
        self.videos += t.videos
        self.rows += t.rows
        self.read_s += t.read_s
        self.score_s += t.score_s
        self.write_s += t.write_s

    def where_time_went(self) -> str:
        """One line: throughput, and how the partitions' time divides."""
        busy = self.read_s + self.score_s + self.write_s
        if not self.written or not busy:
            return f"{self.seconds:.1f} s, nothing scored"
        return (f"{self.videos / self.seconds:.0f} videos/s over {self.seconds:.1f} s; tasks spent "
                f"{busy:.1f} s: read maps {100 * self.read_s / busy:.0f}%, score "
                f"{100 * self.score_s / busy:.0f}%, write {100 * self.write_s / busy:.0f}%")


@dataclass(frozen=True)
class RunSpec:
    """What a task needs to load and label a run: small and picklable."""

    name: str
    path: str  # absolute
    digest: str  # sha256 of config.json and the weight files: the cache key and fingerprint
    head: str
    stream: str
    multilabel: bool
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Partition:
    """videos: sorted ids; runs[i]: indices (into the RunSpec list) of the runs scoring
    videos[i] -- those whose stream the video has."""

    index: int
    videos: tuple[str, ...]
    runs: tuple[tuple[int, ...], ...]

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"


def describe_run(run_dir: str | Path) -> RunSpec:
    path = Path(run_dir).expanduser().resolve()
    run = RunDir.open(path)
    run.task.score_check(run)  # e.g. referring runs need a sentence and detections per row
    config, cfg_path = run.config, path / "config.json"
    h = hashlib.sha256()
    # weights are model.safetensors (torch heads) or model*.txt (LightGBM)
    for f in [cfg_path, *sorted(path.glob("model*"))]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return RunSpec(path.name, str(path), h.hexdigest(), config["head"], config["stream"],
                   bool(config["multilabel"]), tuple(config["classes"]))


def read_ids(path: str) -> list[tuple[int, str]]:
    """-> (line number, id) for each id line; blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text().splitlines()
    return [(n, vid) for n, line in enumerate(lines, 1)
            if (vid := line.split("#", 1)[0].strip())]


def select(store: FeatureStore, runs: list[RunSpec], where: str | None,
           ids_file: str | None) -> dict[str, tuple[int, ...]]:
    """-> {video id: indices of the runs that score it}, sorted by id: the videos with a done
    map of at least one run's stream, narrowed by ``where`` or the ids file."""
    if where and ids_file:
        raise ValueError("give --where or --ids, not both")
    index = store.index()
    done = index[index.status == "done"]
    has = {s: set(done.loc[done.stream == s, "video_id"]) for s in {r.stream for r in runs}}
    candidates = set().union(*has.values())
    if where:
        manifest = store.manifest()
        try:
            picked = manifest.query(where)
        except Exception as e:  # pandas raises many types (SyntaxError, UndefinedVariable...)
            raise ValueError(f"--where {where!r}: {type(e).__name__}: {e} (pandas query syntax "
                             f"over columns {', '.join(manifest.columns)})") from None
        candidates &= set(picked.video_id)
    elif ids_file:
        known = set(index.video_id)
        if store.fs.exists(f"{store.root}/manifest.parquet"):  # a store may have none
            known |= set(store.manifest().video_id)
        wanted = read_ids(ids_file)
        for n, vid in wanted:  # the first bad line is the one named
            if vid not in known:
                raise ValueError(f"{ids_file}:{n}: unknown video id {vid!r} "
                                 f"(not in {store.url})")
            if vid not in candidates:
                raise ValueError(f"{ids_file}:{n}: video {vid!r} has no extracted "
                                 f"{'/'.join(sorted(has))} maps in {store.url}")
        candidates = {vid for _, vid in wanted}
    return {v: tuple(i for i, r in enumerate(runs) if v in has[r.stream])
            for v in sorted(candidates)}


def partitions(selection: dict[str, tuple[int, ...]], size: int) -> list[Partition]:
    ids = list(selection)  # already sorted: slices are fixed by the selection alone
    return [Partition(i // size, tuple(ids[i : i + size]),
                      tuple(selection[v] for v in ids[i : i + size]))
            for i in range(0, len(ids), size)]


def fingerprint(runs: list[RunSpec], store: FeatureStore,
                selection: dict[str, tuple[int, ...]], cfg: ScoreConfig) -> str:
    h = hashlib.sha256()
    # a local store is the same store by path or file:// URL
    where = store.root if store.local else store.url
    h.update(json.dumps({"runs": [(r.name, r.digest) for r in runs], "store": where,
                         "videos_per_partition": cfg.videos_per_partition,
                         "top_k": cfg.top_k}).encode())
    for vid, which in selection.items():
        h.update(f"{vid}\t{','.join(map(str, which))}\n".encode())
    return h.hexdigest()


_MAPS: dict[tuple[str, str], tuple[str, StoreMaps]] = {}  # (url, stream) -> (job, maps)


def _job_maps(url: str, stream: str, job: str) -> StoreMaps:
    """Where every done ``stream`` map lies, read once per process and job from the store's
    index (every fragment) and shared by all the job's partitions; a later job re-reads
    it, since a part may have been rewritten since (offsets change)."""
    held = _MAPS.get((url, stream))
    if held is None or held[0] != job:
        store = open_store(url)
        where = entries(store, stream, store.index(stream).video_id)  # the done ones
        channels = ARRAYS[stream].channels if stream in ARRAYS else 0
        _MAPS[(url, stream)] = (job, StoreMaps(url, stream, where, channels))
    return _MAPS[(url, stream)][1]


def _lists(chunks: list, values_type: pa.DataType) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int32)
    flat = [x for c in chunks for x in c] if values_type == pa.string() else (
        np.concatenate(chunks) if chunks else np.zeros(0))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=values_type))


@dataclass
class PartTimes:
    """What one partition cost: its videos, rows written, seconds reading maps (fetch and
    decode), scoring them (heads, softmax, top-k) and writing the parquet file."""

    videos: int = 0
    rows: int = 0
    read_s: float = 0.0
    score_s: float = 0.0
    write_s: float = 0.0


def score_partition(part: Partition, runs: list[RunSpec], store_url: str, out: str,
                    top_k: int, device: str, job: str) -> PartTimes:
    """Score one partition's videos with their runs and write ``OUT/part-NNNNN.parquet``.

    The one task of both modes (dask worker or this process).  Each video's map is read
    once per stream, neighbouring maps in one slice (StoreMaps.read_many), and given to
    every run of that stream.  Rows are (video, run) in the partition's order.
    """
    fs, root = fsspec.core.url_to_fs(out)
    final = f"{root}/{part.name}"
    if fs.exists(final):  # a retried task whose first attempt got as far as the rename
        with fs.open(final, "rb") as f:
            return PartTimes(len(part.videos), pq.ParquetFile(f).metadata.num_rows)
    times = PartTimes(videos=len(part.videos))
    rows: dict[tuple[int, int], tuple] = {}  # (video position, run index) -> row values
    position = {vid: n for n, vid in enumerate(part.videos)}
    for stream in dict.fromkeys(runs[i].stream for which in part.runs for i in which):
        wanted = [v for v, which in zip(part.videos, part.runs)
                  if any(runs[i].stream == stream for i in which)]
        maps = _job_maps(store_url, stream, job)
        t = time.perf_counter()
        for vid, fmap in maps.read_many(wanted):
            t_read = time.perf_counter()
            times.read_s += t_read - t
            x = fmap[None].to(device=device, dtype=torch.float32)  # (1, D, T, H, W)
            for i in part.runs[position[vid]]:
                r = runs[i]
                if r.stream != stream:
                    continue
                head = worker_cached(("score-run", r.path, r.digest, device),
                                     lambda r=r: RunDir.open(r.path).load_head(device))
                with torch.no_grad():
                    logits = head(x)["logits"]
                s = probabilities(logits, r.multilabel)[0].cpu().numpy().astype(np.float32)
                best = np.argsort(-s, kind="stable")[:top_k]  # ties: the lower class index
                rows[(position[vid], i)] = (vid, r.name, r.head, r.stream, s,
                                            best.astype(np.int32),
                                            [r.classes[k] for k in best], s[best])
            t = time.perf_counter()
            times.score_s += t - t_read
    t = time.perf_counter()
    cols = list(zip(*(rows[k] for k in sorted(rows)))) or [[] for _ in OUTPUT_SCHEMA]
    arrays = [pa.array(list(c), f.type) if not pa.types.is_list(f.type)
              else _lists(list(c), f.type.value_type) for c, f in zip(cols, OUTPUT_SCHEMA)]
    table = pa.Table.from_arrays(arrays, schema=OUTPUT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put_atomic(fs, final, buf.getvalue())
    times.rows, times.write_s = table.num_rows, time.perf_counter() - t
    return times


def _prepare_out(fs, root: str, out: str, meta: dict, classes: dict) -> set[str]:
    """Check (or create) OUT for this fingerprint; drop stray temporary files; -> the names
    of the partitions already there."""
    if fs.exists(root) and not fs.isdir(root):
        raise FileExistsError(f"{out}: exists and is not a directory")
    fs.makedirs(root, exist_ok=True)
    names = {p.rsplit("/", 1)[-1] for p in fs.glob(f"{root}/part-*.parquet")}
    meta_path = f"{root}/{META}"
    if fs.exists(meta_path):
        with fs.open(meta_path, "rb") as f:
            old = json.loads(f.read()).get("fingerprint")
        if old != meta["fingerprint"]:
            raise ValueError(f"{out}: holds predictions of other runs, store or selection "
                             f"(fingerprint {str(old)[:12]}, now {meta['fingerprint'][:12]}); "
                             f"use a new --out or delete it")
    elif names:
        raise ValueError(f"{out}: holds partitions but no {META}; refusing to add to them")
    else:  # metadata first: a partition on disk always has its fingerprint beside it
        put_atomic(fs, f"{root}/{CLASSES}", json.dumps(classes, indent=2).encode())
        put_atomic(fs, meta_path, json.dumps(meta, indent=2).encode())
    for stray in fs.glob(f"{root}/.*.tmp-*"):  # from a crash: never renamed, never complete
        fs.rm(stray)
    return names


def run(cfg: ScoreConfig) -> ScoreResult:
    """Score the selected videos with every run; write the partitions that are missing."""
    t0 = time.time()
    if not cfg.runs:
        raise ValueError("no run directories given")
    if cfg.videos_per_partition < 1 or cfg.top_k < 1:
        raise ValueError("videos_per_partition and top_k must be at least 1")
    device = pick_device(cfg.device)
    runs = [describe_run(r) for r in cfg.runs]
    seen: dict[str, str] = {}
    for r in runs:  # the run name labels rows: two runs must not share it
        if r.name in seen:
            raise ValueError(f"runs {seen[r.name]} and {r.path} share the name {r.name!r}")
        seen[r.name] = r.path
    store = open_store(cfg.store)
    selection = select(store, runs, cfg.where, cfg.ids)
    if not selection:
        streams = "/".join(sorted({r.stream for r in runs}))
        raise ValueError(f"{store.url}: no video with extracted {streams} maps is selected")
    parts = partitions(selection, cfg.videos_per_partition)
    out = cfg.out if "://" in cfg.out else str(Path(cfg.out).expanduser().resolve())
    fs, root = fsspec.core.url_to_fs(out)
    meta = {"fingerprint": fingerprint(runs, store, selection, cfg), "config": asdict(cfg),
            "store": store.url, "runs": [asdict(r) for r in runs], "n_videos": len(selection),
            "n_partitions": len(parts), "columns": OUTPUT_SCHEMA.names}
    there = _prepare_out(fs, root, out, meta, {r.name: list(r.classes) for r in runs})
    todo = [p for p in parts if p.name not in there]
    result = ScoreResult(out=out, selected=len(selection), partitions=len(parts),
                         skipped=len(parts) - len(todo))
    job = uuid.uuid4().hex
    args = (runs, store.url, out, cfg.top_k, device, job)
    ccfg = ClusterConfig(workers=cfg.workers, scheduler=cfg.scheduler)
    bar = progress(total=len(todo), desc="score", unit="part")
    with bar:
        if ccfg.enabled and todo:
            with client(ccfg) as c:
                for _, times in run_tasks(c, score_partition, todo, ccfg, *args):
                    result.add(times)
                    bar.update(1)
        else:  # the same task function, in this process
            for p in todo:
                result.add(score_partition(p, *args))
                bar.update(1)
    result.seconds = round(time.time() - t0, 2)
    return result
