"""One store part of ``vidattn extract``: decode each video, run the frozen extractors,
write the part (the in-process loop and the dask task run the same :func:`extract_part`).

A part is computed under its claim (``FeatureStore.claim_part``), so two runs on one store
share the parts instead of computing each twice; its arrays are written, index fragment
last, by ``FeatureStore.write_part``.  A video that fails is a "failed" row with a
one-line error; the rest of the part goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vidattn.errors import one_line
from vidattn.registry import EXTRACTORS, resolve
from vidattn.rows import bound, segments
from vidattn.spill import SPILL_BYTES
from vidattn.stores import open_store
from vidattn.stores.schema import ARRAYS


class Extractors:
    """The run's extractors: ``i3d`` (feature maps; None with --streams none) and ``ref``
    (the referring tokens; None without --detector/--boxes).  ``streams`` lists every
    store array they write, I3D's first."""

    def __init__(self, i3d, ref):
        self.i3d, self.ref = i3d, ref
        self.i3d_streams = tuple(i3d.streams) if i3d is not None else ()
        self.streams = self.i3d_streams + (tuple(ref.streams) if ref is not None else ())

    def provenance(self, preprocessing: dict, stream: str) -> dict:
        owner = self.i3d if stream in self.i3d_streams else self.ref
        return owner.provenance(preprocessing, stream)


def build_extractors(name: str, net, ref) -> Extractors:
    from vidattn.extractors.referring import build as build_referring

    i3d = resolve(EXTRACTORS, name, "extractor")(net) if net is not None else None
    return Extractors(i3d, build_referring(ref) if ref is not None else None)


# Frames per decoded chunk: the unit of prefetching and of the flow computation (OpenCV's
# TV-L1 shares a chunk's pairs among processes).  128 frames of 224² are 19 MB.
CHUNK_FRAMES = 128


# A video (or segment) that decodes fewer than this share of the frames its container
# declares for it is failed as truncated, unless --keep-partial.  Resampling to a fixed rate
# changes counts by a frame or two; a truncated file loses far more (7 of 350, in the
# first 40 KB of a 14 s clip).
MIN_DECODED = 0.9


@dataclass(frozen=True)
class Decoded:
    """What decoding gave the extractor: ``n_frames`` frames at ``fps`` (after
    resampling) from ``decoder`` (decord | pyav); ``frames_lost`` of them show the frame
    before a gap of damaged data."""

    n_frames: int
    fps: float
    decoder: str
    frames_lost: int = 0


class _DecordBroke(Exception):
    """decord failed after frames went to the extractor (auto mode): redo with PyAV."""

    def __init__(self, error) -> None:
        super().__init__(str(error))
        self.error = error


def extract_video(extractor, path: Path, decode, meta, arrays: tuple[str, ...],
                  timeout_s: float | None = None, min_decoded: float = MIN_DECODED,
                  opened=None, spill_bytes: int | None = None):
    """Decode one video as a stream and run the extractor on it.

    meta: the video's manifest row (``meta["start_sec"]``, ``meta["end_sec"]``).
    ``opened``: the clip already opened by a :class:`~vidattn.pipeline.subdecode.DecodeFeed`
    (decoded ahead in its child process); else with ``timeout_s`` None the clip is decoded
    in this process, prefetched in a thread, and otherwise in a child process that is
    killed when a chunk takes longer (see subdecode.py).
    Returns (:class:`Decoded`, {array: map}).  Memory: a few chunks of frames plus one
    window of the network, whatever the video's length, and each map up to
    ``spill_bytes`` (beyond it the map is a :class:`~vidattn.spill.SpilledMap` on disk;
    None: in memory).

    Frames kept (decoded minus lost to damaged data) short of ``min_decoded`` times what
    the container declares for the segment (:func:`vidattn.video.expected_frames`) raise a
    VideoDecodeError naming the counts; 0 keeps partial videos.  In ``auto`` mode a decord
    failure part way through redoes the video with PyAV, and an error then names both.
    """
    from vidattn.video import VideoDecodeError

    try:
        return _extract_once(extractor, path, decode, meta, arrays, timeout_s, min_decoded,
                             opened, spill_bytes)
    except _DecordBroke as broke:
        pyav = replace(decode, backend="pyav")
        try:
            return _extract_once(extractor, path, pyav, meta, arrays, timeout_s, min_decoded,
                                 spill_bytes=spill_bytes)
        except VideoDecodeError as e:
            raise VideoDecodeError(path, f"{e.reason}; {broke.error.reason}") from e


def _extract_once(extractor, path, decode, meta, arrays, timeout_s, min_decoded,
                  opened=None, spill_bytes=None):
    from vidattn.pipeline.subdecode import open_subclip
    from vidattn.prefetch import prefetch
    from vidattn.video import VideoDecodeError, open_clip

    n = 0

    def counted(chunks):
        nonlocal n
        for chunk in chunks:
            n += len(chunk)
            yield chunk

    start, end = bound(meta["start_sec"]), bound(meta["end_sec"])
    if opened is not None:
        clip = opened
    elif timeout_s is None:
        clip = open_clip(path, decode, start, end)
    else:
        clip = open_subclip(path, decode, start, end, chunk_frames=CHUNK_FRAMES,
                            timeout_s=timeout_s)
    with clip:
        # A child decodes ahead through its bounded queue: no prefetch thread needed.
        in_process = opened is None and timeout_s is None
        chunks = prefetch(clip.chunks(CHUNK_FRAMES)) if in_process else clip.chunks()
        try:
            out = extractor(counted(chunks), arrays, spill_bytes=spill_bytes)
        except VideoDecodeError as e:
            if decode.backend == "auto" and clip.backend == "decord":
                raise _DecordBroke(e) from e
            raise
        finally:
            chunks.close()  # stops the decoding thread (or child) before the clip is closed
    got = Decoded(n, clip.fps, clip.backend, int(clip.frames_lost))
    if min_decoded > 0:
        from vidattn.video import expected_frames

        want = expected_frames(path, start, end, clip.fps)
        kept = n - got.frames_lost
        if want is not None and kept < min_decoded * want:
            if got.frames_lost:
                where = f"{got.frames_lost} lost to damaged data;"
            else:
                where = ("segment runs past the decodable end?" if start or end
                         else "truncated file?")
            raise VideoDecodeError(path, f"decoded {kept} of {want} frames ({where} "
                                         f"--keep-partial stores what decodes)")
    return got, out


@dataclass(frozen=True)
class PartJob:
    """What every part of a run shares; picklable, sent with each dask task.

    store: the store's URL; extractor: its registry name; net: its I3DExtractorConfig
    or None; ref: the ReferringConfig or None (both hashable: a worker builds one
    extractor per distinct ``(extractor, net, ref)``); decode: the DecodeConfig;
    decode_in: "process" (each part's videos decoded ahead in one child process, see
    subdecode.DecodeFeed) or "thread" (in the extracting process, a thread ahead);
    decode_timeout_s: how long the child may take per chunk before it is killed (None:
    no limit; "thread" decoding has none).
    """

    store: str
    extractor: str
    net: Any
    decode: Any
    decode_timeout_s: float | None = None
    decode_in: str = "process"
    decode_priority: str = "idle"  # the decoding child's (subdecode.PRIORITIES)
    decode_procs: int | str = 1  # decoding children per part, or "auto" (decodepool.py)
    ref: Any = None
    min_decoded: float = MIN_DECODED  # 0: keep partial videos
    malloc: str = "reuse"  # the extracting process's malloc (see vidattn/malloc.py)
    spill_bytes: int | None = SPILL_BYTES  # a bigger map waits on disk (vidattn/spill.py)


@dataclass(frozen=True)
class PartWork:
    """One store part to (re)do whole: its number, the arrays it still lacks, and its
    videos in plan order as plain dicts (video_id, path (absolute), start_sec, end_sec,
    and for the referring streams the keys of vidattn.pipeline.referring.plan)."""

    part: int
    needed: tuple[str, ...]
    videos: tuple[dict, ...] = field(repr=False)
    redo: bool = False  # done already, redone on purpose (--retry-failed)


# How often a run waiting for a part claimed by another run looks again.
CLAIM_POLL_S = 2.0


def extract_part(store, extractors: Extractors, work: PartWork, job: PartJob,
                 on_video: Callable[[dict], None] | None = None,
                 wait: bool = True, head=None) -> list[dict] | None:
    """Extract every video of one part, then write the part's arrays and index fragments
    (``store.write_part`` per needed array: the fragment last, so a part interrupted
    anywhere is redone whole).  Returns the index rows this call wrote (video_id, status,
    error, n_frames, fps, decoder, frames_lost, file_size, file_mtime), one per video;
    ``on_video(row)`` is called as each video finishes.

    The part is computed under its claim (see ``FeatureStore.claim_part``).  When another
    live run holds the claim: with ``wait`` this call waits for that run, without it
    returns None at once.  A part that another run finished meanwhile gives [].

    ``head``: a HeadStart (headstart.py), whose feed is used when it decodes exactly this
    part's clips from unchanged files, and closed otherwise; the caller closes it in any
    case (closing is idempotent).
    """
    while True:
        if not work.redo:  # two runs on one store: do not compute what the other one wrote
            needed = tuple(a for a in work.needed if not store.part_done(a, work.part))
            if not needed:
                return []
            work = replace(work, needed=needed)
        with store.claim_part(work.needed, work.part) as mine:
            if mine:
                if work.redo or all(not store.part_done(a, work.part) for a in work.needed):
                    return _compute_part(store, extractors, work, job, on_video, head)
                continue  # finished by another run between the check and the claim
        if not wait:
            return None
        time.sleep(CLAIM_POLL_S)


def file_stamp(path: Path) -> tuple[int | None, float | None]:
    """(size, mtime) of a video file; (None, None) when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None, None
    return int(st.st_size), float(st.st_mtime)


def _compute_part(store, extractors: Extractors, work: PartWork, job: PartJob,
                  on_video: Callable[[dict], None] | None, head=None) -> list[dict]:
    i3d_needed = tuple(a for a in work.needed if a in extractors.i3d_streams)
    ref_needed = tuple(a for a in work.needed if a not in extractors.i3d_streams)
    # Rows that share a file segment (AVA's persons of one keyframe, the instances of a
    # referring clip) are consecutive in the plan: their maps are computed once.
    clip_of, clips = segments(work.videos)  # row -> the feed's clip
    # before decoding starts: a file that changes during it shows in a later run
    stamps = [file_stamp(Path(v["path"])) for v in work.videos]
    feed = None
    procs = 1
    in_children = bool(i3d_needed) and job.decode_in == "process"  # decoding children
    if in_children:
        from vidattn.pipeline.decodepool import procs_for

        procs = procs_for(job.decode_procs, job.net.device)  # this machine's cores
    if head is not None:  # decoding since start-up: only if it decodes exactly these clips
        now = {str(v["path"]): s for v, s in zip(work.videos, stamps)}
        if in_children and head.fits(clips, job.decode, CHUNK_FRAMES, now, procs):
            feed = head.feed
        else:
            head.close()
    if feed is None and in_children:
        from vidattn.pipeline.decodepool import feed_for

        feed = feed_for(clips, job.decode, procs=procs, chunk_frames=CHUNK_FRAMES,
                        timeout_s=job.decode_timeout_s, malloc=job.malloc,
                        priority=job.decode_priority)
    try:
        rows, maps = _videos(extractors, work, job, stamps, clip_of, feed,
                             i3d_needed, ref_needed, on_video)
    finally:
        if feed is not None:
            feed.close()
    wrote = [store.write_part(array, work.part, rows, maps[array]) for array in work.needed]
    return rows if any(wrote) else []


def _videos(extractors, work, job, stamps, clip_of, feed, i3d_needed, ref_needed,
            on_video) -> tuple[list[dict], dict]:
    """Rows and maps of the part's videos, in plan order (see :func:`_compute_part`)."""
    rows, maps = [], {a: {} for a in work.needed}
    last: tuple | None = None
    for n, video in enumerate(work.videos):
        vid, path = video["video_id"], Path(video["path"])
        size, mtime = stamps[n]
        row = {"video_id": vid, "status": "done", "error": None, "n_frames": 0,
               "fps": job.decode.fps or 0.0, "decoder": None, "frames_lost": 0,
               "file_size": size, "file_mtime": mtime}
        try:
            out = {}
            if i3d_needed:
                key = clip_of[n]
                if last is None or last[0] != key:
                    last = None  # a failure below must not leave the previous maps here
                    opened = feed.open(key) if feed is not None else None
                    last = (key, extract_video(extractors.i3d, path, job.decode, video,
                                               i3d_needed, job.decode_timeout_s,
                                               job.min_decoded, opened, job.spill_bytes))
                got, shared = last[1]
                out = dict(shared)
                row.update(n_frames=got.n_frames, fps=got.fps, decoder=got.decoder,
                           frames_lost=got.frames_lost)
            if ref_needed:
                out.update(extractors.ref(video, ref_needed))
            for array, fmap in out.items():
                ARRAYS[array].check(fmap)  # NaN/Inf or a wrong shape fails this video only
                maps[array][vid] = fmap
        except Exception as e:  # one bad video must not stop the other thousands
            msg = one_line(e)
            row.update(status="failed", error=msg if str(path) in msg else f"{path}: {msg}")
            for array in maps:
                maps[array].pop(vid, None)
        rows.append(row)
        if on_video is not None:
            on_video(row)
    return rows, maps


def extract_part_task(work: PartWork, job: PartJob) -> list[dict]:
    """The dask task of one part (see :func:`extract_part`), run on a worker.

    The extractor is built once per worker process and kept for the next parts.  A failed
    video is a "failed" row, not an exception; an exception (the store unwritable, the
    device missing) fails the task, which dask retries and then raises in the client.
    """
    from vidattn.cluster import worker_cached
    from vidattn.malloc import set_malloc
    from vidattn.pipeline.subdecode import require_child_processes
    from vidattn.tasks.rundir import pick_device

    # A worker that cannot run the part fails its task (and the run) with a clear message,
    # rather than record every video of the archive as failed.
    pick_device((job.net or job.ref).device)
    if job.decode_in == "process":
        require_child_processes()
    set_malloc(job.malloc)
    extractors = worker_cached(("extractor", job.extractor, job.net, job.ref),
                               lambda: build_extractors(job.extractor, job.net, job.ref))
    return extract_part(open_store(job.store, mode="a"), extractors, work, job)
