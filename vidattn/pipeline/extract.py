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

from vidattn.extractors import is_hub
from vidattn.malloc import set_malloc
from vidattn.pipeline.parts import (
    CHUNK_FRAMES,
    MIN_DECODED,
    SPILL_BYTES,
    PartJob,
    PartWork,
    build_extractors,
    extract_part,
    extract_part_task,
    file_stamp,
)
from vidattn.progress import bar as progress
from vidattn.rows import has_descriptions, part_videos, video_path
from vidattn.stores import open_store

# Preprocessing a dataset is best extracted with, unless the user says otherwise.  The
# sample's frames are 128 px: upsampling them to 256 would only quadruple I3D's compute.
# ActX's datasets: full frames, as the paper's T x 8 x 11 x 1024 maps imply (Sec 4.1; see
# vidattn.protocols); the 224 centre crop would keep 7 x 7 and lose the frame's edges.
DATASET_DECODE: dict[str, dict] = {
    "sample": {"short_side": 128, "crop": None},
    **{name: {"short_side": 256, "crop": None}
       for name in ("hollywood2", "actionthread", "hacs", "hacs30")},
}
DEFAULT_DECODE = {"fps": 25.0, "short_side": 256, "crop": 224}
# decode_timeout_s of a distributed run that sets none: a hung decoder must not hold a
# worker (and its GPU) for good, and no sane clip takes 10 minutes to deliver 128 frames.
DISTRIBUTED_DECODE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str = "sample"
    root: str | None = None  # dataset root; None = the dataset's default location
    store: str | None = None  # path or URL; None = stores/<dataset> (sample-referring)
    extractor: str = "i3d"
    i3d_rgb: str | None = None  # None = packaged Kinetics-400 weights; "random"; or a path
    i3d_flow: str | None = None  # no packaged flow weights: None = seeded random, loudly
    streams: str = "rgb"  # "rgb", "flow" or "rgb,flow" (maps aligned in time)
    backbone: str = "inception"  # inception (I3D) | r50 (I3D R50) | pytorchvideo:NAME
    ptv_rgb: str | None = None  # a pytorchvideo:NAME backbone's .pyth checkpoint, or "random"
    endpoints: str = ""  # extra endpoints stored too, e.g. "Mixed_4f" (see two_stream.py)
    flow_method: str | None = None  # tvl1 | tvl1-torch | dis; None: by device (see flow.py)
    device: str = "auto"
    fps: float | None = None  # None = a hub backbone's trained rate, the dataset's, or 25
    short_side: int | None = None
    crop: str | None = None  # "224" | "full" | None (dataset default)
    resize: str = "crop"  # crop: resample the crop's region only | frame: the whole frame
    part_size: int = 16  # videos per part (= per writer)
    retry_failed: bool = False
    keep_partial: bool = False  # store videos that decode short of their declared length
    decoder: str = "auto"  # auto (decord, then PyAV) | decord | pyav
    limit: int | None = None  # extract only the first N manifest rows (quick looks)
    options: dict = field(default_factory=dict)  # the dataset adapter's Options, key -> str
    mine: bool = True  # mine feature-based conjugates (HACS) once features are stored
    workers: int = 0  # dask: 0 = extract in this process; N = a LocalCluster of N workers
    scheduler: str | None = None  # address of a running dask scheduler (overrides workers)
    gpus_per_task: int = 0  # tag each part's task resources={"GPU": n}
    # Kill the decoding child when a chunk takes longer than this; None: no limit
    # (distributed runs: DISTRIBUTED_DECODE_TIMEOUT_S).
    decode_timeout_s: float | None = None
    # process: each part's videos decoded ahead in one child process (off the cores'
    # critical path, killable); thread: in this process, a thread ahead.
    decode_in: str = "process"
    # idle: the decoding child runs only on cores the network leaves idle (SCHED_IDLE);
    # low: at niceness +10 only (vidattn/pipeline/subdecode.py).
    decode_priority: str = "idle"
    window_steps: int | None = None  # None: I3D streams; else its window core (8-frame steps)
    trust_checkpoint: bool = False  # allow pickled checkpoints (files you trust only)
    malloc: str = "reuse"  # reuse: keep freed memory for the next chunk (vidattn/malloc.py)
    spill_mb: int = SPILL_BYTES >> 20  # a bigger map waits on disk (vidattn/spill.py)
    precision: str = "auto"  # fp32 | bf16 (autocast) | auto: bf16 on CUDA, fp32 on the CPU
    # The referring streams (RefAtomNet): detection tokens from "detr" or "annotations"
    # (the dataset's person boxes), and the referring sentence's tokens.
    detector: str | None = None
    detr: str | None = None  # facebook/detr-resnet-50 directory or detr-r50 .pth
    detr_size: int = 800  # DETR's input short side; smaller is faster on CPU
    keyframe_every: float | None = None  # seconds; None = the dataset's keyframes
    text_encoder: str | None = None  # HF directory; None = the packaged MiniLM
    text: bool | None = None  # sentence tokens; None = when detections and sentences exist

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler) or self.workers > 0

    def cluster_config(self):
        """The :class:`vidattn.cluster.ClusterConfig` of a distributed run."""
        from vidattn.cluster import ClusterConfig

        return ClusterConfig(workers=self.workers, scheduler=self.scheduler,
                             gpus_per_task=self.gpus_per_task)

    def decode_timeout(self) -> float | None:
        """The decode timeout this run uses (None: none)."""
        if self.decode_in == "thread":
            if self.decode_timeout_s is not None:
                raise ValueError("--decode-timeout kills a decoding child process: it needs "
                                 "--decode-in process")
            return None
        if self.decode_timeout_s is None and self.distributed:
            return DISTRIBUTED_DECODE_TIMEOUT_S
        return self.decode_timeout_s


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


def decoding_provenance(decode, min_decoded: float) -> dict:
    """The decode settings and library versions behind a store's maps."""
    from importlib.metadata import PackageNotFoundError, version

    import av

    try:  # from the metadata: importing decord maps its own FFmpeg into memory
        decord_version = version("decord")
    except PackageNotFoundError:
        decord_version = None
    return {"backend": decode.backend, "decord": decord_version, "av": av.__version__,
            "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
            "frame_rule": "output frame j shows the source frame on screen at start + j/fps",
            "display_matrix": "applied (rotated or mirrored files decode with PyAV)",
            "damaged_data": "packets skipped; index frames_lost counts their frames",
            "min_decoded": min_decoded}


def decode_config(cfg: ExtractConfig, dataset: str):
    from vidattn.video import DecodeConfig

    values = {**DEFAULT_DECODE, **DATASET_DECODE.get(dataset, {})}
    if is_hub(cfg.backbone):  # the rate the checkpoint was trained at (30 fps / stride)
        from vidattn.extractors.hub import hub_model

        values["fps"] = hub_model(cfg.backbone).fps
    if cfg.fps is not None:
        values["fps"] = cfg.fps
    if cfg.short_side is not None:
        values["short_side"] = cfg.short_side
    if cfg.crop is not None:
        values["crop"] = None if cfg.crop in ("full", "none") else int(cfg.crop)
    return DecodeConfig(**values, backend=cfg.decoder, resize=cfg.resize)


def _streams(cfg: ExtractConfig) -> tuple[str, ...]:
    """``--streams`` as a tuple of names (``("none",)`` or () for no I3D stream)."""
    return tuple(s.strip() for s in cfg.streams.split(",") if s.strip())


def extractor_config(cfg: ExtractConfig, device: str):
    """The I3DExtractorConfig of ``cfg`` on ``device`` (frozen and hashable: the key of
    a worker's extractor cache), or None for ``--streams none``.  The flow method is pinned
    here, where the device is known, so that an extractor built elsewhere records the same
    provenance."""
    from vidattn.extractors.flow import default_method
    from vidattn.extractors.two_stream import I3DExtractorConfig, resolve_precision

    streams = _streams(cfg)
    if streams in ((), ("none",)):
        if cfg.detector is None:
            raise ValueError("--streams none extracts nothing without --detector/--boxes")
        return None
    endpoints = tuple(e.strip() for e in cfg.endpoints.split(",") if e.strip())
    rgb = cfg.i3d_rgb
    if is_hub(cfg.backbone):
        if cfg.i3d_rgb:
            raise ValueError(f"--backbone {cfg.backbone} takes its checkpoint from --ptv-rgb, "
                             f"not --i3d-rgb")
        rgb = cfg.ptv_rgb
    elif cfg.ptv_rgb:
        raise ValueError("--ptv-rgb is the checkpoint of a --backbone pytorchvideo:NAME")
    return I3DExtractorConfig(rgb_weights=rgb, flow_weights=cfg.i3d_flow,
                              streams=streams, backbone=cfg.backbone, endpoints=endpoints,
                              flow_method=cfg.flow_method or default_method(device),
                              device=device, window_steps=cfg.window_steps,
                              trust_checkpoint=cfg.trust_checkpoint,
                              # resolved here: a distributed run's local copy is on the CPU
                              precision=resolve_precision(cfg.precision, device))


def referring_config(cfg: ExtractConfig, device: str, sentences: bool):
    """The ReferringConfig of ``cfg`` (None without --detector/--boxes); ``sentences``:
    whether the dataset has referring sentences (the text stream's default)."""
    if cfg.detector is None:
        if cfg.text:
            raise ValueError("--text needs --detector detr or --boxes annotations")
        return None
    from vidattn.extractors.referring import ReferringConfig
    from vidattn.extractors.text import TextConfig

    detr = None
    if cfg.detector == "detr":
        from vidattn.extractors.detr import DetrConfig

        if cfg.detr is None:
            raise ValueError("--detector detr needs --detr PATH (a facebook/detr-resnet-50 "
                             "directory or a detr-r50 .pth)")
        detr = DetrConfig(checkpoint=str(Path(cfg.detr).resolve()), size=cfg.detr_size,
                          device=device, trust_checkpoint=cfg.trust_checkpoint)
    text_model = str(Path(cfg.text_encoder).resolve()) if cfg.text_encoder else None
    return ReferringConfig(boxes=cfg.detector, detr=detr,
                           text=TextConfig(model=text_model, device=device),
                           keyframe_every=cfg.keyframe_every, device=device,
                           with_text=sentences if cfg.text is None else cfg.text)


def _changed_files(store, streams: tuple[str, ...], rows_by_id, root: Path) -> dict[str, int]:
    """Videos stored done whose file now differs in size or mtime from when it was
    extracted: video_id -> part.  Rows without a recorded stamp (older stores) and files
    that are gone (their maps are kept) do not count."""
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
    from vidattn.datasets import load_dataset

    t0 = time.time()
    cfg.decode_timeout()  # refuses --decode-timeout with thread decoding before any work
    if cfg.spill_mb < 0:
        raise ValueError(f"spill_mb must be >= 0 (MiB held in memory per map), got "
                         f"{cfg.spill_mb}")
    if cfg.decode_in == "process" and not cfg.distributed:
        from vidattn.pipeline.subdecode import require_child_processes, warm_up

        require_child_processes()
        warm_up()
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
    streams = _streams(cfg)
    if cfg.decode_in != "process" or cfg.distributed or streams in ((), ("none",)):
        return None
    from vidattn.pipeline import headstart

    manifest = ds.manifest if cfg.limit is None else ds.manifest.head(cfg.limit)
    return headstart.start(url, manifest, Path(ds.root), cfg.part_size, streams, decode,
                           cfg.decode_timeout(), CHUNK_FRAMES, cfg.malloc, cfg.decode_priority)


def _extract(cfg: ExtractConfig, ds, url: str, decode, sentences: bool, head,
             t0: float) -> ExtractResult:
    from vidattn.pipeline import referring
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
                  decode_priority=cfg.decode_priority,
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
