"""``vidattn extract``: decode a dataset's videos, run a frozen extractor, fill the store.

Resumable by construction (see stores/zarr_store.py): the plan fixes parts up front, a
part is done once its index fragment exists, and an unfinished part is redone whole with
the same videos in the same order — so a run killed at any point and restarted ends with
exactly the arrays of an uninterrupted run.  A video that fails is recorded (status
"failed", one-line error) and the rest go on.

Distributed (``workers`` > 0 or ``scheduler``): one dask task per store part
(:func:`vidattn.pipeline.parts.extract_part_task`), so a shard never has two writers; the
task runs the same ``extract_part`` as the in-process loop, with the extractor built once
per worker process.  A worker that dies mid-part has its task re-run by the scheduler: the part is
redone whole, as after a crash of a local run.  Videos are decoded in a child process
(``decode_in``), killed after ``decode_timeout_s`` without a chunk, so that a hung decoder
fails its video instead of stalling a worker for good.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from vidattn.malloc import set_malloc
from vidattn.pipeline.extract_config import (
    ExtractConfig,
    decode_config,
    decoding_provenance,
    extractor_config,
    referring_config,
)
from vidattn.progress import bar as progress
from vidattn.rows import has_descriptions, part_videos, video_path


@dataclass
class ExtractResult:
    store: str
    n_videos: int = 0
    n_extracted: int = 0
    n_skipped: int = 0
    n_partial: int = 0  # of n_extracted: stored with frames lost to damaged data
    # failed videos of the plan: this run's first (n_failed_now), then earlier runs'
    failures: list[tuple[str, str]] = field(default_factory=list)
    n_failed_now: int = 0
    n_pending: int = 0  # planned, in no finished part (left to a run that stopped)
    missing: list[str] = field(default_factory=list)  # manifest rows whose file is absent
    notices: list[str] = field(default_factory=list)  # e.g. parts invalidated by a new version
    seconds: float = 0.0


def summary(res: ExtractResult) -> str:
    """One line; its counts add up to the planned videos."""
    n_before = len(res.failures) - res.n_failed_now
    parts = [f"{res.n_extracted} extracted now"
             + (f" ({res.n_partial} with frames lost to damaged data)" if res.n_partial else ""),
             f"{res.n_skipped} already done", f"{res.n_failed_now} failed now"]
    if n_before:
        parts.append(f"{n_before} failed before (--retry-failed retries them)")
    if res.n_pending:
        parts.append(f"{res.n_pending} not extracted yet")
    return f"videos: {res.n_videos} planned: {', '.join(parts)} ({res.seconds:.1f} s)"


def _changed_files(store, streams: tuple[str, ...], rows_by_id, root: Path) -> dict[str, int]:
    """Videos stored done whose file now differs in size or mtime from when it was
    extracted: video_id -> part.  Rows without a recorded stamp (older stores) and files
    that are gone (their maps are kept) do not count."""
    from vidattn.pipeline.parts import file_stamp

    changed: dict[str, int] = {}
    stamps: dict[Path, tuple] = {}  # one stat per file: streams and segments share files
    for s in streams:
        idx = store.index(s)
        idx = idx[(idx.status == "done") & idx.file_size.notna()
                  & idx.video_id.isin(rows_by_id.index)]
        for r in idx.itertuples():
            if r.video_id in changed:
                continue
            path = video_path(rows_by_id.at[r.video_id, "path"], root)
            if path not in stamps:
                stamps[path] = file_stamp(path)
            size, mtime = stamps[path]
            if size is not None and (size != r.file_size or abs(mtime - r.file_mtime) > 1e-3):
                changed[r.video_id] = int(r.part)
    return changed


def _tally(result: ExtractResult, wrote: list[dict], idx, plan) -> None:
    """Fill the result's counts: what this run wrote, and what the store holds for the
    rest of the plan, each planned video counted once."""
    planned = set(plan.video_id)
    mine = {r["video_id"]: r for r in wrote if r["video_id"] in planned}
    result.n_extracted = sum(r["status"] == "done" for r in mine.values())
    result.n_partial = sum(r["status"] == "done" and (r.get("frames_lost") or 0) > 0
                           for r in mine.values())
    now = [(v, r["error"]) for v, r in mine.items() if r["status"] != "done"]
    idx = idx[idx.video_id.isin(planned)].drop_duplicates("video_id", keep="last")
    before = idx[~idx.video_id.isin(set(mine))]
    result.n_skipped = int((before.status == "done").sum())
    earlier = [(r.video_id, r.error) for r in before.itertuples() if r.status != "done"]
    result.failures = now + earlier
    result.n_failed_now = len(now)
    result.n_pending = len(planned) - len(mine) - len(before)


def run(cfg: ExtractConfig) -> ExtractResult:
    # This module imports neither pandas nor zarr at its top: the forkserver (below) then
    # starts while they load, on the core the command's first second leaves idle.
    t0 = time.time()
    cfg.decode_timeout()  # refuses --decode-timeout with thread decoding before any work
    from vidattn.pipeline.decodepool import AUTO, check_procs

    check_procs(cfg.decode_procs, "decode_procs", auto=True)
    if cfg.decode_procs not in (1, AUTO) and cfg.decode_in != "process":
        raise ValueError("--decode-procs starts decoding child processes: it needs "
                         "--decode-in process")
    if cfg.spill_mb < 0:
        raise ValueError(f"spill_mb must be >= 0 (MiB held in memory per map), got "
                         f"{cfg.spill_mb}")
    if cfg.decode_in == "process" and not cfg.distributed:
        from vidattn.pipeline.subdecode import require_child_processes, warm_up

        require_child_processes()
        warm_up()
    from vidattn.datasets import load_dataset

    ds = load_dataset(cfg.dataset, cfg.root, cfg.options or None)
    sentences = has_descriptions(ds.manifest)
    # the referring sample must not land in the plain sample's default store
    url = cfg.store or f"stores/{ds.name}" + ("-referring" if ds.name == "sample" and sentences
                                              else "")
    decode = decode_config(cfg, ds.name)
    head = _head_start(cfg, ds, url, decode)  # before torch is imported
    try:
        return _extract(cfg, ds, url, decode, sentences, head, t0)
    finally:
        if head is not None:
            head.close()


def _head_start(cfg: ExtractConfig, ds, url: str, decode):
    """The first part's decoding, started now (see headstart.py); None where the run
    decodes elsewhere (workers, a thread) or not at all."""
    if cfg.decode_in != "process" or cfg.distributed or cfg.no_i3d:
        return None
    from vidattn.pipeline import headstart
    from vidattn.pipeline.decodepool import likely_device, procs_for
    from vidattn.pipeline.parts import CHUNK_FRAMES

    manifest = ds.manifest if cfg.limit is None else ds.manifest.head(cfg.limit)
    return headstart.start(url, manifest, Path(ds.root), cfg.part_size,
                           cfg.stream_names, decode,
                           cfg.decode_timeout(), CHUNK_FRAMES, cfg.malloc, cfg.decode_priority,
                           procs_for(cfg.decode_procs, likely_device(cfg.device)))


def _extract(cfg: ExtractConfig, ds, url: str, decode, sentences: bool, head,
             t0: float) -> ExtractResult:
    from vidattn.pipeline import referring
    from vidattn.pipeline.parts import (
        MIN_DECODED,
        PartJob,
        PartWork,
        build_extractors,
        extract_part,
        extract_part_task,
    )
    from vidattn.stores import open_store
    from vidattn.tasks.rundir import pick_device

    # Distributed: an explicit device is the workers' (checked there), not this machine's.
    explicit = cfg.distributed and cfg.device != "auto"
    device = cfg.device if explicit else pick_device(cfg.device)
    net = extractor_config(cfg, device)
    ref = referring_config(cfg, device, sentences)

    planned = referring.plan(ds.manifest, ds.boxes) if ref is not None else None
    if ref is not None and ref.boxes == "annotations" and not any(
            p["persons"] is not None or p["track"] for p in planned.values()):
        raise ValueError(f"{ds.source or ds.root}: dataset {ds.name!r} has no annotated "
                         f"person boxes for --boxes annotations; use --detector detr")
    if cfg.distributed:  # built here only for provenance: keep this machine's GPU free
        from vidattn.extractors.referring import on_device

        extractor = build_extractors(cfg.extractor, net and replace(net, device="cpu"),
                                     ref and on_device(ref, "cpu"))
    else:
        set_malloc(cfg.malloc)  # before the model's first allocation
        extractor = build_extractors(cfg.extractor, net, ref)
    prep = {"fps": decode.fps, "short_side": decode.short_side, "crop": decode.crop,
            "scale": "[-1, 1]"}
    if decode.resize_rule:  # absent where it makes no difference, as in older stores
        prep["resize"] = decode.resize_rule
    store = open_store(url, mode="a")
    notices = []
    # How frames were decoded: recorded, not compared (every decoder gives the same frames)
    decoding = decoding_provenance(decode, 0.0 if cfg.keep_partial else MIN_DECODED)
    for stream in extractor.streams:  # refuse before writing anything
        prov = {**extractor.provenance(prep, stream), "decoding": decoding}
        notice = store.claim_stream(stream, prov)
        if notice:
            notices.append(notice)
    store.set_classes(list(ds.classes))
    manifest = ds.manifest if cfg.limit is None else ds.manifest.head(cfg.limit)
    manifest = store.merge_manifest(manifest)
    if len(ds.pairs) or not len(store.pairs()):  # keep pairs mined earlier from features
        store.write_table("pairs", ds.pairs)
    if ds.boxes is not None:
        store.write_table("boxes", ds.boxes)
    if extractor.ref is not None:  # class names embedded once per store, not per token
        store.write_table("label_text", extractor.ref.label_table())
    store.update_attrs({"dataset": {"name": ds.name, "root": str(Path(ds.root).resolve()),
                                    "multilabel": bool(ds.multilabel),
                                    "conjugates": ds.conjugates}})
    # files the adapter could not find are listed in the manifest, never planned
    missing = manifest[manifest.status == "missing"]
    if len(missing) == len(manifest):
        raise FileNotFoundError(f"{ds.root}: none of the {len(manifest)} videos of the "
                                f"manifest exist")
    plan = store.extend_plan(manifest.loc[manifest.status != "missing", "video_id"].tolist(),
                             cfg.part_size)

    first = extractor.streams[0]
    # a part is done per stream: adding the flow stream to an RGB store redoes flow only
    fresh = {s: store.done_parts(s) for s in extractor.streams}  # before --retry-failed
    done = {s: set(parts) for s, parts in fresh.items()}
    if cfg.retry_failed:
        for s in extractor.streams:
            idx = store.index(s)
            done[s] -= set(idx.loc[idx.status == "failed", "part"].tolist())
    rows_by_id = manifest.set_index("video_id")
    changed = _changed_files(store, extractor.streams, rows_by_id, Path(ds.root))
    if changed:
        for s in extractor.streams:
            done[s] -= set(changed.values())
        notices.append(f"{len(changed)} video file(s) changed on disk since they were "
                       f"extracted (size or mtime), e.g. {next(iter(changed))}: their "
                       f"parts are extracted again")
    if ref is not None:  # the merged manifest: rows of earlier runs may be redone too
        planned = referring.plan(manifest, ds.boxes)
    todo = plan[~plan.part.isin(set.intersection(*done.values()))]
    result = ExtractResult(store=url, n_videos=len(plan),
                           missing=missing.video_id.tolist(), notices=notices)
    works = [PartWork(int(part), tuple(s for s in extractor.streams if part not in done[s]),
                      part_videos(group.video_id, rows_by_id, ds.root, planned),
                      redo=any(part in fresh[s] for s in extractor.streams))
             for part, group in todo.groupby("part", sort=True)]
    job = PartJob(store=store.url, extractor=cfg.extractor, net=net, decode=decode,
                  decode_timeout_s=cfg.decode_timeout(), decode_in=cfg.decode_in, ref=ref,
                  decode_priority=cfg.decode_priority, decode_procs=cfg.decode_procs,
                  min_decoded=0.0 if cfg.keep_partial else MIN_DECODED, malloc=cfg.malloc,
                  spill_bytes=cfg.spill_mb << 20)
    bar = progress(total=len(todo), desc=f"extract {','.join(extractor.streams)}", unit="video")
    wrote: list[dict] = []  # the index rows this run wrote (first stream's view)

    with bar:
        if cfg.distributed and works:
            from vidattn.cluster import client, run_tasks

            ccfg = cfg.cluster_config()
            with client(ccfg) as c:
                for work, rows in run_tasks(c, extract_part_task, works, ccfg, job):
                    wrote += rows
                    bar.update(len(work.videos))
                    bar.set_postfix(part=work.part)
        else:
            def on_video(part: int, row: dict) -> None:
                bar.update(1)
                bar.set_postfix(part=part)

            # Parts claimed by another live run are left to it, then waited for at the end.
            deferred = []
            for work in works:  # the task's own function, in this process
                rows = extract_part(store, extractor, work, job, partial(on_video, work.part),
                                    wait=False, head=head)
                if head is not None:  # only ever the first part's: unused, it stops now
                    head.close()
                    head = None
                if rows is None:
                    deferred.append(work)
                else:
                    wrote += rows
            for work in deferred:
                bar.set_postfix(part=work.part, waiting="another run")
                wrote += extract_part(store, extractor, work, job,
                                      partial(on_video, work.part))
    _tally(result, wrote, store.index(first), plan)
    if cfg.mine and not result.failures and net is not None:
        from vidattn.pipeline.mine import NEAREST_NEGATIVE, MineConfig
        from vidattn.pipeline.mine import run as mine

        if ds.name in NEAREST_NEGATIVE:
            mine(MineConfig(url, stream=first))
    result.seconds = round(time.time() - t0, 2)
    return result
