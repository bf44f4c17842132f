"""Decode a clip in a child process, so that a decoder that hangs can be killed.

A native decoder stuck in FFmpeg or decord (a damaged file, a stalled network mount, a pipe
that never delivers) cannot be interrupted from Python: a thread can only be abandoned,
and it keeps its memory and file handles.  A child process can be killed.  So the clip is
opened and decoded in a child started with multiprocessing's "forkserver" method (or
"spawn" where there is none; never "fork", which would copy a parent's CUDA context and
locked mutexes), and its chunks come back through a bounded queue:

* memory: at most ``depth`` chunks wait in the queue, plus the one being sent;
* timeout: each message (the opening, then every chunk) must arrive within ``timeout_s``,
  else the child is killed and :class:`VideoDecodeError` names the file;
* early stop: closing the stream (or its ``chunks()`` generator) kills the child;
* errors: an exception in the child is re-raised in the parent with its one-line message;
* orphans: a child whose parent dies (e.g. a dask worker killed by its nanny) exits too.

The frames are those of :func:`vidattn.video.open_clip` (the child runs exactly that).
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


def start_context() -> mp.context.BaseContext:
    """The multiprocessing context children are started with: forkserver, else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)  # takes effect when the server first starts
        return ctx
    return mp.get_context("spawn")


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


def _child(path: str, cfg: DecodeConfig, start_sec: float | None, end_sec: float | None,
           n: int, out, alive) -> None:
    """The child's main: open the clip, send its metadata, then every chunk, then "end";
    an exception is sent instead of whatever was next."""
    from vidattn.video import open_clip

    threading.Thread(target=_exit_when_orphaned, args=(alive,), daemon=True).start()
    try:
        with open_clip(path, cfg, start_sec, end_sec) as clip:
            out.put(("open", _meta(clip)))
            first = True
            for chunk in clip.chunks(n):
                # An auto-mode fallback to PyAV updates the fields before the first chunk.
                out.put(("chunk", chunk, _meta(clip) if first else None))
                first = False
            meta = _meta(clip)  # frames_lost is final only now
        out.put(("end", meta))
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent
        out.put(("error", _portable(e)))
    finally:
        out.close()
        out.join_thread()  # all messages are in the pipe before the process exits


class SubprocessClip:
    """A clip decoded by a child process; the counterpart of :class:`ClipStream`.

    fps, src_fps, src_size, crop_box, backend, n_frames: as in ClipStream, set once the
    child has opened the clip (and updated with the first chunk); frames_lost: set when the
    stream is exhausted.  :meth:`chunks` yields
    (k, h, w, 3) uint8 RGB arrays of ``chunk_frames`` frames (only the last may be
    shorter).  Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: PathLike, cfg: DecodeConfig, start_sec: float | None,
                 end_sec: float | None, *, chunk_frames: int, timeout_s: float,
                 depth: int = 2):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if isinstance(chunk_frames, bool) or chunk_frames < 1 or depth < 1:
            raise ValueError(f"chunk_frames and depth must be >= 1, got {chunk_frames}, "
                             f"{depth}")
        require_child_processes()
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.fps, self.src_fps, self.backend = 0.0, 0.0, ""
        self.src_size: tuple[int, int] = (0, 0)
        self.crop_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
        self.n_frames: int | None = None
        self.frames_lost = 0
        self._started = False
        ctx = start_context()
        self._queue = ctx.Queue(maxsize=depth)
        # The child reads from `watch`; closing `self._alive` (or dying) tells it to exit.
        watch, self._alive = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_child, name=_CHILD_NAME, daemon=True,
            args=(str(self.path), cfg, start_sec, end_sec, int(chunk_frames), self._queue,
                  watch))
        self.process.start()
        watch.close()  # the child holds its own copy; ours would keep the pipe open
        try:
            _, meta = self._get("open the clip")
        except BaseException:
            self.close()
            raise
        self._update(meta)

    def _update(self, meta: dict | None) -> None:
        if meta:
            for key, value in meta.items():
                setattr(self, key, value)

    def _get(self, what: str) -> tuple:
        """The child's next message, re-raising its exception; a VideoDecodeError (child
        killed) when none arrives within the timeout or the child died without one."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                msg = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                pass
            if not self.process.is_alive():
                try:  # its last message may have landed just before it exited
                    msg = self._queue.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    code = self.process.exitcode
                    self.close()
                    raise VideoDecodeError(
                        self.path, f"decoder process died (exit code {code}) before it "
                                   f"could {what}") from None
            if time.monotonic() >= deadline:
                self.close()
                raise VideoDecodeError(
                    self.path, f"decoder hung: could not {what} within {self.timeout_s:g} s "
                               f"(decoder process killed)")
        if msg[0] == "error":
            self.close()
            raise msg[1]
        return msg

    def chunks(self) -> Iterator[np.ndarray]:
        """Yield every frame in order, in chunks; the child is killed when the generator is
        closed early, and is gone once it is exhausted.  Can be iterated once."""
        if self._started:
            raise ValueError(f"{self.path}: SubprocessClip.chunks() can be iterated only once")
        self._started = True
        return self._iterate()

    def _iterate(self) -> Iterator[np.ndarray]:
        try:
            while True:
                msg = self._get("deliver the next frames")
                if msg[0] == "end":
                    self._update(msg[1])
                    self.process.join(_EXIT_GRACE_S)  # let a child that is done exit by itself
                    return
                self._update(msg[2])
                yield msg[1]
        finally:
            self.close()

    def close(self) -> None:
        """Kill the child (if still running) and release the queue; harmless twice."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self._alive.close()
        # A killed child may leave bytes in the pipe: never wait to flush or read them.
        self._queue.cancel_join_thread()
        self._queue.close()

    def __enter__(self) -> SubprocessClip:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_subclip(path: PathLike, cfg: DecodeConfig = DecodeConfig(),  # noqa: B008 - frozen
                 start_sec: float | None = None, end_sec: float | None = None, *,
                 chunk_frames: int = 64, timeout_s: float = 600.0,
                 depth: int = 2) -> SubprocessClip:
    """:func:`vidattn.video.open_clip` in a child process (see the module docstring).

    Waits until the child has opened the clip (at most ``timeout_s``); raises what
    open_clip would (VideoDecodeError naming the file), or VideoDecodeError on a timeout.
    """
    return SubprocessClip(path, cfg, start_sec, end_sec, chunk_frames=chunk_frames,
                          timeout_s=timeout_s, depth=depth)
