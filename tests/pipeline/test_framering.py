"""FrameRing: decoded chunks through shared-memory slots instead of the queue's pipe."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import numpy as np
import pytest

from vidattn.pipeline import framering
from vidattn.pipeline.framering import FrameRing, pump, ticket_of
from vidattn.pipeline.subdecode import DecodeFeed
from vidattn.video import DecodeConfig, open_clip

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"),
                                reason="no memfd_create on this OS: frames use the queue")
CTX = mp.get_context("spawn")  # only its Semaphore is used here


def _frames(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_slots_are_reused_in_turn_and_each_chunk_comes_back_intact():
    ring = FrameRing.create(CTX, 2, 4 * 8 * 8 * 3)
    end = ring.child_end()  # used in this process: the slots are the same memory
    try:
        sent = [_frames(4, 8, k) for k in range(5)] + [_frames(3, 8, 9)]  # a short last one
        got = []
        for chunk in sent:  # at most one slot held: never waits on the semaphore
            ticket = end.put(chunk)
            assert ticket_of(ticket) and ticket[1] == len(got) % 2
            got.append(ring.take(ticket))
        assert all(np.array_equal(g, s) for g, s in zip(got, sent, strict=True))
        assert not np.shares_memory(got[0], got[2])  # copies, not views of a reused slot
    finally:
        ring.close()
        ring.close()  # harmless twice


def test_what_does_not_fit_a_slot_is_left_to_the_queue():
    ring = FrameRing.create(CTX, 2, 4 * 8 * 8 * 3)
    end = ring.child_end()
    try:
        assert end.put(_frames(5, 8, 0)) is None  # too many bytes
        assert end.put(_frames(4, 8, 0).astype(np.float32)[:1]) is None  # not uint8
        assert end.put(_frames(4, 8, 0)[:, ::2]) is None  # not contiguous
        assert FrameRing.create(CTX, 2, None) is None  # size unknown (no crop)
    finally:
        ring.close()


def test_the_child_waits_for_a_free_slot_and_runs_ahead_in_its_backlog():
    ring = FrameRing.create(CTX, 2, 2 * 4 * 4 * 3)
    out = []
    send, finish = pump(type("Out", (), {"put": staticmethod(out.append)})(),
                        ring.child_end(), depth=8)
    sent = [_frames(2, 4, k) for k in range(5)]
    for chunk in sent:
        send(("chunk", 0, chunk, None))  # returns at once: the backlog holds 8
    done = threading.Thread(target=finish, daemon=True)
    done.start()
    done.join(0.5)
    # two slots filled, then the mover waits for the parent to free one
    assert done.is_alive() and len(out) == 2
    got = []
    deadline = time.monotonic() + 10
    while len(got) < len(sent):
        while len(out) <= len(got):  # each take frees the slot the mover waits for
            assert time.monotonic() < deadline, f"the mover stalled after {len(out)} chunks"
            time.sleep(0.01)
        got.append(ring.take(out[len(got)][2]))
    done.join(5)
    assert not done.is_alive()
    assert all(np.array_equal(g, s) for g, s in zip(got, sent, strict=True))
    ring.close()


def test_a_feed_without_memfd_sends_frames_through_the_queue(tiny_sample, monkeypatch):
    def refused(*a):
        raise OSError("memfd_create refused")

    monkeypatch.setattr(framering.os, "memfd_create", refused)
    cfg = DecodeConfig(short_side=64, crop=48)
    a = sorted((tiny_sample / "videos").glob("*.mp4"))[0]
    with DecodeFeed([(a, None, None)], cfg, chunk_frames=5, timeout_s=30) as feed:
        clip = feed.open(0)
        assert feed._ring is None
        got = list(clip.chunks())
    with open_clip(a, cfg) as clip:
        want = list(clip.chunks(5))
    assert len(got) == len(want) > 1
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
