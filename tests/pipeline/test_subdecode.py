"""DecodeFeed: a part's clips decoded ahead, in order, by one child process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import decoding_children, same_chunks, stalling_video

from vidattn.pipeline.subdecode import DECODE_NICE, DecodeFeed
from vidattn.video import DecodeConfig, VideoDecodeError, open_clip

DECODE = DecodeConfig(short_side=64, crop=None)
# With a crop every frame has a known size: chunks travel through shared memory (a
# framering.FrameRing); without one, through the queue.
CROPPED = DecodeConfig(short_side=64, crop=48)


@pytest.fixture(params=[DECODE, CROPPED], ids=["queue", "ring"])
def decode(request, monkeypatch):
    """The decoding settings of a feed test; afterwards, the chunks must have come through
    the ring exactly when the frames' size was known."""
    from vidattn.pipeline.framering import FrameRing

    taken = []
    take = FrameRing.take
    monkeypatch.setattr(FrameRing, "take", lambda self, t: taken.append(t) or take(self, t))
    yield request.param
    assert bool(taken) == (request.param.crop is not None)


def _in_process(path: Path, start=None, end=None, n: int = 5,
                cfg: DecodeConfig = DECODE) -> list[np.ndarray]:
    with open_clip(path, cfg, start, end) as clip:
        return list(clip.chunks(n))


def test_one_child_decodes_every_clip_in_order_and_a_bad_one_fails_alone(tiny_sample,
                                                                          tmp_path, decode):
    a, b = sorted((tiny_sample / "videos").glob("*.mp4"))[:2]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video\n" * 100)
    items = [(a, None, None), (junk, None, None), (b, 0.2, 0.5), (a, 0.1, None)]
    with DecodeFeed(items, decode, chunk_frames=5, timeout_s=30) as feed:
        first = feed.open(0)
        pid = first.process.pid
        want = _in_process(a, cfg=decode)
        assert same_chunks(list(first.chunks()), want)
        assert first.fps == 25.0 and first.n_frames == sum(len(c) for c in want)
        with pytest.raises(VideoDecodeError) as e:
            feed.open(1)
        assert str(e.value).startswith(f"{junk}: ") and "\n" not in str(e.value)
        clip = feed.open(2)
        assert same_chunks(list(clip.chunks()), _in_process(b, 0.2, 0.5, cfg=decode))
        clip = feed.open(3)
        assert clip.process.pid == pid  # the same child went on after the bad file
        assert same_chunks(list(clip.chunks()), _in_process(a, 0.1, None, cfg=decode))
    assert not decoding_children()


def test_a_clip_left_unread_is_skipped_and_clips_open_in_order(tiny_sample, decode):
    a, b, c = sorted((tiny_sample / "videos").glob("*.mp4"))[:3]
    feed = DecodeFeed([(a, None, None), (b, None, None), (c, None, None)], decode,
                      chunk_frames=2, timeout_s=30, depth=1)
    try:
        chunks = feed.open(0).chunks()
        next(chunks)  # one chunk of clip 0 read, the rest abandoned
        chunks.close()
        # clip 1 skipped; the skipped chunks' ring slots (far more than the ring has) are
        # freed as they pass, or the child would wait for a slot and this would time out
        assert same_chunks(list(feed.open(2).chunks()), _in_process(c, n=2, cfg=decode))
        with pytest.raises(ValueError, match="in order"):
            feed.open(1)
    finally:
        feed.close()
    assert not decoding_children()


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no process niceness on this OS")
@pytest.mark.parametrize("priority", ["idle", "low"])
def test_the_decoding_child_yields_a_contested_core_to_the_network(tiny_sample, priority):
    a, b = sorted((tiny_sample / "videos").glob("*.mp4"))[:2]
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    # depth 1, nothing read past the first chunk: the child waits on the queue, alive
    with DecodeFeed([(a, None, None), (b, None, None)], DECODE, chunk_frames=2,
                    timeout_s=30, depth=1, priority=priority) as feed:
        clip = feed.open(0)
        next(clip.chunks())
        child = os.getpriority(os.PRIO_PROCESS, clip.process.pid)
        child_policy = (os.sched_getscheduler(clip.process.pid) if policy is not None
                        else None)
    assert child == min(mine + DECODE_NICE, 19) > mine or mine == 19
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # the parent keeps its own
    if hasattr(os, "SCHED_IDLE"):
        assert (child_policy == os.SCHED_IDLE) == (priority == "idle")
        assert os.sched_getscheduler(0) == policy


def test_a_hung_clip_is_killed_and_the_next_clips_get_a_new_child(tiny_sample, tmp_path,
                                                                  decode):
    a, b = sorted((tiny_sample / "videos").glob("*.mp4"))[:2]
    hung = stalling_video(tmp_path)
    with DecodeFeed([(a, None, None), (hung, None, None), (b, None, None)], decode,
                    chunk_frames=5, timeout_s=2) as feed:
        clip = feed.open(0)
        pid = clip.process.pid
        assert same_chunks(list(clip.chunks()), _in_process(a, cfg=decode))
        with pytest.raises(VideoDecodeError, match=r"stall\.m3u8: decoder hung.*within 2 s"):
            feed.open(1)
        assert clip.process.exitcode is not None  # killed
        clip = feed.open(2)
        assert clip.process.pid != pid
        assert same_chunks(list(clip.chunks()), _in_process(b, cfg=decode))  # through a new ring
    assert not decoding_children()


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        DecodeFeed([], DECODE, chunk_frames=4, timeout_s=0)
    with pytest.raises(ValueError, match="chunk_frames"):
        DecodeFeed([], DECODE, chunk_frames=0, timeout_s=None)


def test_extraction_stores_the_same_maps_whichever_way_it_decodes(tiny_sample, tmp_path):
    """Decoded in a child (--decode-procs auto: one on a CPU), two children or a thread,
    maps held in memory or spilled to disk (--spill-mb 0): the same arrays and checksums."""
    from vidattn.pipeline.extract import ExtractConfig, run
    from vidattn.stores import open_store

    fast = {"root": str(tiny_sample), "part_size": 3, "device": "cpu", "i3d_rgb": "random",
            "short_side": 64, "limit": 5}
    stores = {}
    for how, spill_mb, procs in (("process", 16, "auto"), ("thread", 16, 1), ("process", 0, 1),
                                 ("process", 16, 2)):
        name = f"{how}-{spill_mb}-{procs}"
        res = run(ExtractConfig(store=str(tmp_path / name), decode_in=how, spill_mb=spill_mb,
                                decode_procs=procs, **fast))
        assert res.n_extracted == 5 and not res.failures
        stores[name] = open_store(str(tmp_path / name))
    assert not decoding_children()
    ref = stores.pop("process-16-auto")
    ids = ref.video_ids("rgb")
    assert len(ids) == 5
    for other in stores.values():
        assert other.video_ids("rgb") == ids
        for vid in ids:
            np.testing.assert_array_equal(other.read(vid, verify=True), ref.read(vid))
        key = ["video_id", "offset", "checksum"]
        assert other.index().sort_values("video_id")[key].reset_index(drop=True).equals(
            ref.index().sort_values("video_id")[key].reset_index(drop=True))
    with pytest.raises(ValueError, match="spill_mb must be >= 0"):
        run(ExtractConfig(store=str(tmp_path / "t"), spill_mb=-1, **fast))
    with pytest.raises(ValueError, match="decode_procs must be an int >= 1"):
        run(ExtractConfig(store=str(tmp_path / "t"), decode_procs=0, **fast))
    with pytest.raises(ValueError, match="--decode-procs .* needs --decode-in process"):
        run(ExtractConfig(store=str(tmp_path / "t"), decode_in="thread", decode_procs=2,
                          **fast))
    with pytest.raises(ValueError, match="needs --decode-in process"):
        run(ExtractConfig(store=str(tmp_path / "t"), decode_in="thread", decode_timeout_s=5,
                          **fast))


class _Out:
    """What the child puts on its queue, kept in a list."""

    def __init__(self):
        self.got = []

    def put(self, msg):
        self.got.append(msg)

    def close(self):
        pass

    def join_thread(self):
        pass


@pytest.mark.parametrize("mode", ["reuse", "system"])
def test_the_decoding_child_takes_the_run_s_malloc_mode(tiny_sample, monkeypatch, mode):
    from vidattn.pipeline import subdecode

    # _child run in this process: its niceness and its orphan watch are the child's own
    applied = []
    monkeypatch.setattr(subdecode, "set_malloc", applied.append)
    monkeypatch.setattr(subdecode.os, "nice", lambda n: 0)
    monkeypatch.setattr(subdecode, "_exit_when_orphaned", lambda alive: None)
    monkeypatch.setattr(subdecode.os, "sched_setscheduler", lambda *a: None)
    a = sorted((tiny_sample / "videos").glob("*.mp4"))[0]
    out = _Out()
    subdecode._child([(0, str(a), None, None)], DECODE, 5, out, None, mode)
    assert applied == [mode]
    assert [m[0] for m in out.got][0] == "open" and out.got[-1][0] == "end"
    chunks = [m[2] for m in out.got if m[0] == "chunk"]
    assert same_chunks(chunks, _in_process(a))


def test_a_feed_refuses_an_unknown_malloc_mode_or_priority(tiny_sample):
    a = sorted((tiny_sample / "videos").glob("*.mp4"))[0]
    with pytest.raises(ValueError, match="malloc must be one of"):
        DecodeFeed([(a, None, None)], DECODE, chunk_frames=5, timeout_s=5, malloc="jemalloc")
    with pytest.raises(ValueError, match="priority must be one of"):
        DecodeFeed([(a, None, None)], DECODE, chunk_frames=5, timeout_s=5, priority="high")


def test_auto_decode_procs_give_the_head_start_and_the_part_as_many_children(
        tiny_sample, tmp_path, monkeypatch):
    """--decode-procs auto is resolved for the head start (its device guessed before torch
    loads) and again for the part (the device known): alike, the head start's children
    serve the part.  Here as on a 6-core GPU machine: 2 children."""
    from vidattn.pipeline import decodepool
    from vidattn.pipeline.extract import ExtractConfig, run

    asked, made = [], []
    real_procs, real_feed = decodepool.procs_for, decodepool.feed_for

    def procs_for(procs, device, cores=None):
        asked.append((procs, device))
        return real_procs(procs, "cuda", cores=6)

    def feed_for(items, cfg, **kw):
        made.append(kw["procs"])
        return real_feed(items, cfg, **kw)

    monkeypatch.setattr(decodepool, "procs_for", procs_for)
    monkeypatch.setattr(decodepool, "feed_for", feed_for)
    res = run(ExtractConfig(store=str(tmp_path / "s"), root=str(tiny_sample), part_size=3,
                            limit=3, device="cpu", i3d_rgb="random", short_side=64))
    assert res.n_extracted == 3 and not res.failures
    assert asked == [("auto", "cpu"), ("auto", "cpu")]
    assert made == [2]  # the head start's pool, taken by the part
    assert not decoding_children()
