"""Decode clips in a child process: off the network's thread, and killable when it hangs.

A native decoder stuck in FFmpeg or decord (a damaged file, a stalled network mount, a pipe
that never delivers) cannot be interrupted from Python: a thread can only be abandoned,
and it keeps its memory and file handles.  A child process can be killed.  So a part's
clips are opened and decoded, in order, by one child (a :class:`DecodeFeed`) started with
multiprocessing's "forkserver" method (or "spawn" where there is none; never "fork", which
would copy a parent's CUDA context and locked mutexes), and their chunks come back through
one bounded queue, so the next clip is decoding while the network finishes this one:

* memory: at most ``depth`` chunks wait, plus the one being sent: in the queue, or,
  when the frames' size is known and they travel through the shared memory of a
  :class:`~vidattn.pipeline.framering.FrameRing`, in the child plus the ring's two slots;
* timeout: each message (an opening, then every chunk) must arrive within ``timeout_s``,
  else the child is killed, :class:`VideoDecodeError` names the file, and the clips after
  it go to a new child;
* a bad clip: its exception is re-raised in the parent with its one-line message, and the
  child goes on with the next clip;
* early stop: a clip left unread is skipped; closing the feed kills the child;
* orphans: a child whose parent dies (e.g. a dask worker killed by its nanny) exits too.

:func:`open_subclip` is a feed of one clip.  The frames are those of
:func:`vidattn.video.open_clip` (the child runs exactly that).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vidattn.decoders import DecodeConfig, PathLike, VideoDecodeError
from vidattn.errors import one_line
from vidattn.malloc import MODES as MALLOC_MODES
from vidattn.malloc import set_malloc
from vidattn.pipeline.framering import RING_SLOTS, FrameRing, pump, ticket_of

# How often the parent checks that the child is still alive while it waits for a message.
_POLL_S = 0.1
# How long a child that has sent its last chunk may take to exit before it is killed.
_EXIT_GRACE_S = 2.0
# Imported once in the forkserver, so a child per video starts in tens of milliseconds
# rather than importing numpy and FFmpeg again (missing modules are skipped).  A child
# still runs the parent's main script as ``__mp_main__`` (multiprocessing's rule), cheap
# for ``vidattn`` and ``python -m pytest``; a script with heavy top-level imports pays them
# once per video.
_PRELOAD = ["vidattn.video", "av", "decord"]
_CHILD_NAME = "vidattn-decode"
# Added to a decoding child's niceness.  decord decodes and converts on two threads, so
# a child alone takes about 1.6 cores; at the same priority it delayed the parent's
# single-threaded start-up (import torch, load the model) by 0.7-1.2 s on 2 cores (0.05-0.35
# s at +10).  Decoding is about 8% of the network's CPU and runs ahead through a queue: the
# network, not the decoder, should win a contested core; an idle core still goes to it.
DECODE_NICE = 10
# What a decoding child yields to the network (DecodeFeed's ``priority``).  "idle": Linux's
# SCHED_IDLE on top of the niceness, so the child runs only on a core nothing else wants:
# during start-up it has a whole core, during the forward it takes the moments torch's
# threads wait, and when the network catches up and waits for frames it gets both cores.
# At +10 alone it still takes ~10% of a contested core, and each slice it takes stalls
# the other torch thread at the next barrier: measured, 3 rounds on 2 cores, the whole
# command took 0.7-2.5 s less of ~44 s with "idle".  On a machine whose cores other
# programs keep busy, an idle child decodes only when this run waits for it: "low" then.
PRIORITIES = ("idle", "low")


def start_context() -> mp.context.BaseContext:
    """The multiprocessing context children are started with: forkserver, else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)  # takes effect when the server first starts
        return ctx
    return mp.get_context("spawn")


def warm_up() -> None:
    """Start the forkserver now: it imports the decoders beside whatever the caller does
    next (loading a model), instead of when the first clip is wanted."""
    if start_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def require_child_processes() -> None:
    """Raise a clear RuntimeError where this process may not start children: multiprocessing
    refuses them to a daemonic process (a dask worker, unless configured) with a bare
    assertion."""
    if mp.current_process().daemon:
        raise RuntimeError(
            "decoding in a child process needs a non-daemonic process; dask workers are "
            "daemonic unless started with DASK_DISTRIBUTED__WORKER__DAEMON=False (or set "
            "decode_timeout_s to None)")


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling both ways, else a RuntimeError with its one-line text
    (an exception that cannot be rebuilt in the parent would fail the queue's ``get``)."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(one_line(e, with_type=True))


def _exit_when_orphaned(alive) -> None:
    """Block until the parent closes its end of ``alive`` (or dies), then exit at once:
    the decoder may be stuck in native code, so nothing gentler would do."""
    try:
        alive.recv()
    except (EOFError, OSError):
        pass
    os._exit(0)


def _meta(clip) -> dict:
    return {"fps": clip.fps, "src_fps": clip.src_fps, "src_size": clip.src_size,
            "crop_box": clip.crop_box, "backend": clip.backend, "n_frames": clip.n_frames,
            "frames_lost": clip.frames_lost}


def _child(items: list[tuple[int, str, float | None, float | None]], cfg: DecodeConfig,
           n: int, out, alive, malloc: str = "system", priority: str = "low",
           ring=None, depth: int = 2) -> None:
    """The child's main: for each (index, path, start, end) in order, open the clip and
    send ("open", i, meta), every ("chunk", i, frames, meta | None), then ("end", i, meta);
    a failure sends ("error", i, exception) instead of what was next, and the child goes
    on with the next video.  With a ring (framering.RingEnd), a chunk's frames travel in
    shared memory and the message carries its ticket; up to ``depth`` messages wait in
    the child."""
    from vidattn.video import open_clip

    # Every frame decoded and resized allocates a few MB; with "reuse" they come back from
    # the heap instead of fresh pages (about 10% of decoding's CPU on 2 cores).
    set_malloc(malloc)
    if hasattr(os, "nice"):
        os.nice(DECODE_NICE)
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:  # threads started from here on (decord's) inherit it
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass  # refused (a sandbox's policy): the niceness above still holds
    threading.Thread(target=_exit_when_orphaned, args=(alive,), daemon=True).start()
    send, finish = pump(out, ring, depth)
    try:
        for i, path, start_sec, end_sec in items:
            try:
                with open_clip(path, cfg, start_sec, end_sec) as clip:
                    send(("open", i, _meta(clip)))
                    first = True
                    for chunk in clip.chunks(n):
                        # An auto-mode fallback to PyAV updates the fields before the first
                        # chunk.
                        send(("chunk", i, chunk, _meta(clip) if first else None))
                        first = False
                    meta = _meta(clip)  # frames_lost is final only now
                send(("end", i, meta))
            except Exception as e:  # noqa: BLE001 - every failure goes to the parent
                send(("error", i, _portable(e)))
    finally:
        finish()
        out.close()
        out.join_thread()  # all messages are in the pipe before the process exits


class DecodeFeed:
    """Decode a list of clips, in order, in one child process that runs ahead of the
    consumer through a bounded queue (``depth`` chunks of ``chunk_frames`` frames).

    items: (path, start_sec, end_sec) per clip.  :meth:`open` (i) returns clip i as a
    :class:`FedClip` once the child has opened it; clips are opened in increasing order,
    and a clip left unread is skipped.  ``timeout_s``: how long one message (an opening, a
    chunk) may take; past it, or when the child dies, the child is killed,
    :class:`VideoDecodeError` names the clip's file, and the next :meth:`open` starts a
    new child from that clip on.  None waits as long as the child lives.
    """

    procs = 1  # decoding children (a decodepool.DecodePool has several)

    def __init__(self, items, cfg: DecodeConfig, *, chunk_frames: int,
                 timeout_s: float | None, depth: int = 2, malloc: str = "system",
                 priority: str = "low"):
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if isinstance(chunk_frames, bool) or chunk_frames < 1 or depth < 1:
            raise ValueError(f"chunk_frames and depth must be >= 1, got {chunk_frames}, "
                             f"{depth}")
        if malloc not in MALLOC_MODES:
            raise ValueError(f"malloc must be one of {MALLOC_MODES}, got {malloc!r}")
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        require_child_processes()
        self.items = [(str(p), a, b) for p, a, b in items]
        self.cfg, self.chunk_frames, self.depth = cfg, int(chunk_frames), int(depth)
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.malloc = malloc  # the child's malloc mode (vidattn/malloc.py)
        self.priority = priority  # what the child yields to the network (PRIORITIES)
        self.process = None  # the running child; None before the first open and once closed
        self._ring = None  # the running child's FrameRing, if frames travel through one
        self._opened = -1

    def _start(self, first: int) -> None:
        ctx = start_context()
        self._queue = ctx.Queue(maxsize=self.depth)
        crop = self.cfg.crop  # without one a frame's size is known only once a file opens
        self._ring = FrameRing.create(ctx, RING_SLOTS,
                                      crop and self.chunk_frames * crop * crop * 3)
        # The child reads from `watch`; closing `self._alive` (or dying) tells it to exit.
        watch, self._alive = ctx.Pipe(duplex=False)
        todo = [(i, *self.items[i]) for i in range(first, len(self.items))]
        self.process = ctx.Process(
            target=_child, name=_CHILD_NAME, daemon=True,
            args=(todo, self.cfg, self.chunk_frames, self._queue, watch, self.malloc,
                  self.priority, self._ring and self._ring.child_end(), self.depth))
        self.process.start()
        watch.close()  # the child holds its own copy; ours would keep the pipe open

    def prefetch(self) -> None:
        """Start the child now, before the first :meth:`open`: it decodes up to ``depth``
        chunks ahead while the caller does something else (builds its model)."""
        if self.process is None and self._opened < 0:
            self._start(0)

    def open(self, i: int) -> FedClip:
        """Clip ``i``, opened (raises what open_clip would, naming the file)."""
        if not 0 <= i < len(self.items) or i <= self._opened:
            raise ValueError(f"DecodeFeed.open({i}): clips open once, in order "
                             f"(last opened {self._opened}, {len(self.items)} clips)")
        self._opened = i
        if self.process is None:  # the first clip, or the child was killed: a new one
            self._start(i)
        while True:
            msg = self._get(i, "open the clip")
            if msg[1] < i:
                continue  # what is left of a clip the consumer stopped reading
            if msg[0] == "error":
                raise msg[2]
            return FedClip(self, i, msg[2])

    def _get(self, i: int, what: str) -> tuple:
        """The child's next message; a VideoDecodeError naming clip i (child killed) when
        none arrives within the timeout or the child died without one."""
        path = Path(self.items[i][0])
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            try:
                return self._frames(self._queue.get(timeout=_POLL_S))
            except queue.Empty:
                pass
            if not self.process.is_alive():
                try:  # its last message may have landed just before it exited
                    return self._frames(self._queue.get(timeout=_POLL_S))
                except queue.Empty:
                    code = self.process.exitcode
                    self.close()
                    raise VideoDecodeError(
                        path, f"decoder process died (exit code {code}) before it could "
                              f"{what}") from None
            if deadline is not None and time.monotonic() >= deadline:
                self.close()
                raise VideoDecodeError(
                    path, f"decoder hung: could not {what} within {self.timeout_s:g} s "
                          f"(decoder process killed)")

    def _frames(self, msg: tuple) -> tuple:
        """``msg`` with a ring ticket replaced by its frames (which frees the slot, also
        for a chunk that will be skipped)."""
        if msg[0] == "chunk" and ticket_of(msg[2]):
            return (*msg[:2], self._ring.take(msg[2]), *msg[3:])
        return msg

    def _next(self, i: int, what: str) -> tuple:
        """The next message of clip i (re-raising its error)."""
        if self.process is None:
            raise VideoDecodeError(Path(self.items[i][0]), "decoder process was stopped")
        msg = self._get(i, what)
        if msg[0] == "error":
            raise msg[2]
        return msg

    def close(self) -> None:
        """Kill the child (if still running) and release the queue; harmless twice."""
        if self.process is None:
            return
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self._alive.close()
        # A killed child may leave bytes in the pipe: never wait to flush or read them.
        self._queue.cancel_join_thread()
        self._queue.close()
        if self._ring is not None:
            self._ring.close()
        self.process = None  # the next open() starts a new child from its clip on

    def __enter__(self) -> DecodeFeed:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FedClip:
    """One clip of a :class:`DecodeFeed`; the counterpart of :class:`ClipStream`.

    fps, src_fps, src_size, crop_box, backend, n_frames: as in ClipStream, set once the
    child has opened the clip (and updated with the first chunk); frames_lost: set when the
    stream is exhausted.  :meth:`chunks` yields (k, h, w, 3) uint8 RGB arrays of the feed's
    ``chunk_frames`` frames (only the last may be shorter).  ``owns_feed``: closing the
    clip closes the feed too (a one-clip feed, :func:`open_subclip`).
    """

    def __init__(self, feed: DecodeFeed, i: int, meta: dict, owns_feed: bool = False):
        self.feed, self.index, self.owns_feed = feed, i, owns_feed
        self.process = feed.process  # the child that decodes (decoded) this clip
        self.path = Path(feed.items[i][0])
        self.fps, self.src_fps, self.backend = 0.0, 0.0, ""
        self.src_size: tuple[int, int] = (0, 0)
        self.crop_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
        self.n_frames: int | None = None
        self.frames_lost = 0
        self._started = False
        self._update(meta)

    def _update(self, meta: dict | None) -> None:
        if meta:
            for key, value in meta.items():
                setattr(self, key, value)

    def chunks(self) -> Iterator[np.ndarray]:
        """Yield every frame in order, in chunks.  Can be iterated once; stopping early
        leaves the rest to be skipped (a one-clip feed's child is killed)."""
        if self._started:
            raise ValueError(f"{self.path}: chunks() can be iterated only once")
        self._started = True
        return self._iterate()

    def _iterate(self) -> Iterator[np.ndarray]:
        try:
            while True:
                msg = self.feed._next(self.index, "deliver the next frames")
                if msg[0] == "end":
                    self._update(msg[2])
                    if self.owns_feed:  # let a child that is done exit by itself
                        self.feed.process.join(_EXIT_GRACE_S)
                    return
                self._update(msg[3])
                yield msg[2]
        finally:
            if self.owns_feed:
                self.feed.close()

    def close(self) -> None:
        if self.owns_feed:
            self.feed.close()

    def __enter__(self) -> FedClip:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_subclip(path: PathLike, cfg: DecodeConfig = DecodeConfig(),  # noqa: B008 - frozen
                 start_sec: float | None = None, end_sec: float | None = None, *,
                 chunk_frames: int = 64, timeout_s: float | None = 600.0,
                 depth: int = 2) -> FedClip:
    """:func:`vidattn.video.open_clip` in a child process (see the module docstring).

    Waits until the child has opened the clip (at most ``timeout_s``); raises what
    open_clip would (VideoDecodeError naming the file), or VideoDecodeError on a timeout.
    """
    feed = DecodeFeed([(path, start_sec, end_sec)], cfg, chunk_frames=chunk_frames,
                      timeout_s=timeout_s, depth=depth)
    try:
        clip = feed.open(0)
    except BaseException:
        feed.close()
        raise
    clip.owns_feed = True
    return clip
