"""DecodePool: a part's clips dealt round-robin to several decoding children."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import decoding_children, same_chunks, stalling_video

from vidattn.pipeline.decodepool import (
    AUTO_MAX,
    DecodePool,
    feed_for,
    gpu_build,
    likely_device,
    procs_for,
)
from vidattn.pipeline.headstart import HeadStart
from vidattn.pipeline.subdecode import DecodeFeed
from vidattn.video import DecodeConfig, VideoDecodeError, open_clip

WHOLE = DecodeConfig(short_side=64, crop=None)  # chunks through the queue
CROPPED = DecodeConfig(short_side=64, crop=48)  # chunks through shared memory


def _in_process(path: Path, cfg: DecodeConfig, start=None, end=None,
                n: int = 5) -> list[np.ndarray]:
    with open_clip(path, cfg, start, end) as clip:
        return list(clip.chunks(n))


@pytest.mark.parametrize("cfg", [WHOLE, CROPPED], ids=["queue", "ring"])
def test_a_pool_decodes_every_clip_in_order_and_a_bad_one_fails_alone(tiny_sample, tmp_path,
                                                                       cfg):
    a, b, c = sorted((tiny_sample / "videos").glob("*.mp4"))[:3]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video\n" * 100)
    items = [(a, None, None), (junk, None, None), (b, 0.2, 0.5), (c, None, None),
             (a, 0.1, None)]
    with feed_for(items, cfg, procs=2, chunk_frames=5, timeout_s=30) as pool:
        assert isinstance(pool, DecodePool) and len(pool.feeds) == 2
        assert [f.items for f in pool.feeds] == [pool.items[0::2], pool.items[1::2]]
        pool.prefetch()  # both children start at once
        assert len(decoding_children()) == 2
        first = pool.open(0)
        assert same_chunks(list(first.chunks()), _in_process(a, cfg))
        with pytest.raises(VideoDecodeError) as e:
            pool.open(1)
        assert str(e.value).startswith(f"{junk}: ") and "\n" not in str(e.value)
        clip = pool.open(2)
        assert clip.process.pid == first.process.pid  # clips 0, 2, 4: the first child
        assert same_chunks(list(clip.chunks()), _in_process(b, cfg, 0.2, 0.5))
        clip = pool.open(3)
        assert clip.process.pid != first.process.pid  # the second child went on
        assert same_chunks(list(clip.chunks()), _in_process(c, cfg))
        assert same_chunks(list(pool.open(4).chunks()), _in_process(a, cfg, 0.1, None))
        with pytest.raises(ValueError, match="in order"):
            pool.open(3)
    assert not decoding_children()


def test_clips_left_unread_are_skipped_by_the_child_that_decodes_them(tiny_sample):
    a, b, c = sorted((tiny_sample / "videos").glob("*.mp4"))[:3]
    items = [(a, None, None), (b, None, None), (c, None, None), (a, None, None),
             (b, None, None)]
    pool = DecodePool(items, CROPPED, 2, chunk_frames=2, timeout_s=30, depth=1,
                      malloc="system", priority="low")
    try:
        chunks = pool.open(0).chunks()
        next(chunks)  # one chunk of clip 0 read, the rest abandoned
        chunks.close()
        # clips 1 and 2 never opened: one of each child's clips is skipped
        assert same_chunks(list(pool.open(3).chunks()), _in_process(a, CROPPED, n=2))
        assert same_chunks(list(pool.open(4).chunks()), _in_process(b, CROPPED, n=2))
    finally:
        pool.close()
    assert not decoding_children()


def test_a_hung_clip_is_killed_and_only_its_child_is_replaced(tiny_sample, tmp_path):
    a, b, c = sorted((tiny_sample / "videos").glob("*.mp4"))[:3]
    hung = stalling_video(tmp_path)
    items = [(a, None, None), (hung, None, None), (b, None, None), (c, None, None)]
    with feed_for(items, CROPPED, procs=2, chunk_frames=5, timeout_s=2) as pool:
        pool.prefetch()
        other = pool.feeds[1].process.pid  # the child that will hang
        first = pool.open(0)
        assert same_chunks(list(first.chunks()), _in_process(a, CROPPED))
        with pytest.raises(VideoDecodeError, match=r"stall\.m3u8: decoder hung.*within 2 s"):
            pool.open(1)
        clip = pool.open(2)
        assert clip.process.pid == first.process.pid  # the first child was left alone
        assert same_chunks(list(clip.chunks()), _in_process(b, CROPPED))
        clip = pool.open(3)
        assert clip.process.pid not in (other, first.process.pid)  # a new second child
        assert same_chunks(list(clip.chunks()), _in_process(c, CROPPED))
    assert not decoding_children()


def test_feed_for_gives_one_feed_when_one_child_is_enough(tiny_sample):
    a, b = sorted((tiny_sample / "videos").glob("*.mp4"))[:2]
    args = {"chunk_frames": 4, "timeout_s": None}
    assert type(feed_for([(a, None, None), (b, None, None)], WHOLE, **args)) is DecodeFeed
    assert type(feed_for([(a, None, None)], WHOLE, procs=4, **args)) is DecodeFeed
    pool = feed_for([(a, None, None), (b, None, None)], WHOLE, procs=4, **args)
    assert isinstance(pool, DecodePool) and pool.procs == 2  # no more children than clips
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="procs"):
            feed_for([(a, None, None)], WHOLE, procs=bad, **args)
    with pytest.raises(ValueError, match="procs >= 2"):
        DecodePool([(a, None, None)], WHOLE, 1, **args)
    with pytest.raises(ValueError, match="chunk_frames"):  # the feeds' own checks
        feed_for([(a, None, None), (b, None, None)], WHOLE, procs=2, chunk_frames=0,
                 timeout_s=None)


def test_a_head_start_serves_a_part_only_with_as_many_children(tiny_sample):
    a, b, c = sorted((tiny_sample / "videos").glob("*.mp4"))[:3]
    clips = [(str(a), None, None), (str(b), None, None), (str(c), None, None)]
    pool = feed_for(clips, WHOLE, procs=2, chunk_frames=8, timeout_s=None)
    head = HeadStart(pool, {})
    assert head.fits(clips, WHOLE, 8, {}, procs=2)
    assert not head.fits(clips, WHOLE, 8, {}, procs=1)
    assert not head.fits(clips, WHOLE, 8, {}, procs=3)
    assert not head.fits(clips[:2], WHOLE, 8, {}, procs=2)
    one = HeadStart(feed_for(clips[:1], WHOLE, procs=1, chunk_frames=8, timeout_s=None), {})
    assert one.fits(clips[:1], WHOLE, 8, {}, procs=4)  # one clip: one child either way
    head.close()
    one.close()


def test_auto_is_one_child_on_a_cpu_and_fills_a_gpu_machines_cores(monkeypatch):
    assert procs_for("auto", "cpu", cores=64) == 1  # the network needs the cores
    assert procs_for("auto", "cuda", cores=16) == 7
    assert procs_for("auto", "cuda:1", cores=9) == 3
    assert procs_for("auto", "cuda", cores=2) == 1  # never none
    assert procs_for("auto", "cuda", cores=128) == AUTO_MAX == 8  # nor a node's worth
    assert procs_for(5, "cpu") == 5 and procs_for(1, "cuda") == 1  # a number is kept
    from vidattn.pipeline import decodepool

    for cores, want in ((10, 4), (3, 1), (40, 8)):  # by default, the cores usable here
        monkeypatch.setattr(decodepool, "usable_cores", lambda cores=cores: cores)
        assert procs_for("auto", "cuda") == want
    for bad in (0, "two", 1.5, True, None):
        with pytest.raises(ValueError, match="decode_procs must be an int >= 1 or 'auto'"):
            procs_for(bad, "cpu")


def test_the_guess_of_auto_device_reads_torchs_build_and_the_driver(tmp_path, monkeypatch):
    assert likely_device("cpu") == "cpu" and likely_device("cuda:1") == "cuda:1"
    assert gpu_build("cuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n")
    assert gpu_build("cuda = None\nhip: Optional[str] = '6.2.41133'\n")
    assert not gpu_build("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n"
                         "hip: Optional[str] = None\n")
    (tmp_path / "nvidiactl").touch()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    import torch

    built = torch.version.cuda is not None or torch.version.hip is not None
    assert likely_device("auto", dev=tmp_path) == ("cuda" if built else "cpu")
    assert likely_device("auto", dev=tmp_path / "none") == "cpu"  # no driver
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # every GPU hidden
    assert likely_device("auto", dev=tmp_path) == "cpu"
