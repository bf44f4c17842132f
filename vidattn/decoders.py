"""Decoding backends behind :mod:`vidattn.video`: each turns one segment of a file into
resampled, resized, centre-cropped RGB frames, a chunk at a time.

Users import from :mod:`vidattn.video`, which re-exports :class:`DecodeConfig` and
:class:`VideoDecodeError` (defined here because the backends need them, so the import
goes one way only: ``video`` -> ``decoders``).  What lives here:

- ``_Shaper``: the per-clip resize (short side, PIL bilinear) + centre crop.
- ``_DecordSource`` / ``_open_decord``: decord, random access; output frame indices are
  fixed at open and pixels are read in batches of at most ``_DECORD_BATCH``, the next
  batch in a thread while the current one is resized.
- ``_PyAVSource`` / ``_open_pyav`` / ``_select_pyav``: PyAV, one sequential pass over
  the decoded frames, seeking first when the segment starts far in.
- ``_stream_rate`` / ``_rate_from_packets``: the frame rate from metadata, or estimated
  from packet timestamps when the metadata has none.
- ``_Call`` / ``_with_timeout``: the guard every decord call runs under.

Frame selection, the same for both backends: output frame ``j`` shows the source frame
on screen at time ``start + j / fps``, i.e. the nearest *preceding* source frame (with
``_TIME_EPS`` of slack, so float rounding never decides a coincidence).  Variable-rate
files are indexed by frame timestamps, not by ``index / rate``, so the backends agree.

Why decord runs under a timeout: decord is unmaintained and can hang inside native code
on damaged files, at open or on any later read.  A hung native call cannot be killed
from Python, so it runs in a daemon thread that is abandoned after
``DecodeConfig.decord_timeout_s``; the caller sees TimeoutError (and ``auto`` mode falls
back to PyAV).

Each source has the same small interface, used by :class:`vidattn.video.ClipStream`:
``backend``, ``fps``, ``src_fps``, ``n_frames`` (None when unknown up front), ``shaper``,
``frames_lost`` (output frames standing in for undecodable ones, so far), ``fill(out) -> int``
and ``close()``.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Slack when comparing a target time with a frame timestamp: timestamps are rationals
# converted to floats, so an exact coincidence (e.g. 0.2 s at 25 and 30 fps) must not be
# decided by rounding noise.  Far below any frame period.
_TIME_EPS = 1e-6
# decord reads at most this many frames per call: its raw (unresized) frames stay bounded
# whatever chunk size the caller asks for.
_DECORD_BATCH = 32
# ... and at most this many bytes of source frames per batch: 32 frames of 4K are ~800 MB,
# which under a memory cap makes decord abort the process (std::bad_alloc, uncatchable).
# Small batches also cost less CPU: a fresh process page-faults every byte its batches
# ever hold (decord's array, its numpy copy, the batch read ahead), and under `--malloc
# system` glibc serves blocks over 32 MiB from fresh pages each time.  Decoding the
# bench's six clips in a new process took 3.3-3.6 s of CPU with 16 MiB, 3.5-4.6 s with
# 64 MiB (a 1280x720 clip: 5 frames per batch, against 23); the frames are the same.
_DECORD_BATCH_BYTES = 16 << 20
_BACKENDS = ("auto", "decord", "pyav")
_RESIZES = ("crop", "frame")

PathLike = str | os.PathLike


@dataclass(frozen=True)
class DecodeConfig:
    """How frames are sampled and shaped.

    fps: resample to this rate (None keeps the native rate); short_side: resize so the
    short side has this many pixels; crop: centre crop ``crop x crop`` (None keeps the
    whole resized frame); backend: ``auto`` (decord, then PyAV), ``decord`` or ``pyav``;
    decord_timeout_s: decord calls that take longer are abandoned (``auto`` then falls back
    to PyAV) -- decord can hang on damaged files; None waits forever.  resize: ``crop``
    resamples only the crop's region of the frame (same bilinear filter, same scale; about
    2x faster, as the rows and columns cut away are never computed), ``frame`` the whole
    frame before cropping.  The two differ by 1 in about 0.1% of the pixel values (PIL
    rounds its fixed-point weights from the region's origin); with ``crop=None`` they are
    the same thing.
    """

    fps: float | None = 25.0
    short_side: int = 256
    crop: int | None = 224
    backend: str = "auto"
    decord_timeout_s: float | None = 120.0
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"DecodeConfig: fps must be positive or None, got {self.fps}")
        if self.short_side < 1:
            raise ValueError(f"DecodeConfig: short_side must be >= 1, got {self.short_side}")
        # The resized short side equals short_side exactly, so this is the only way the
        # crop can be larger than the resized frame.
        if self.crop is not None and not 1 <= self.crop <= self.short_side:
            raise ValueError(
                f"DecodeConfig: crop {self.crop} does not fit in a frame whose short side "
                f"is resized to {self.short_side}"
            )
        if self.backend not in _BACKENDS:
            raise ValueError(
                f"DecodeConfig: backend must be one of {_BACKENDS}, got {self.backend!r}"
            )
        if self.resize not in _RESIZES:
            raise ValueError(
                f"DecodeConfig: resize must be one of {_RESIZES}, got {self.resize!r}"
            )

    @property
    def resize_rule(self) -> str | None:
        """What a store records of ``resize``: None where it makes no difference (no crop)
        or for ``frame``, the rule of every store made before ``crop`` existed."""
        return "crop region" if self.crop is not None and self.resize == "crop" else None


class VideoDecodeError(RuntimeError):
    """A video could not be decoded; ``str(e)`` is one line, ``"<path>: <reason>"``."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        # Library messages may span lines; logs and the store's error column want one.
        self.reason = " ".join(str(reason).split()) or "unknown error"
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):
        # Default pickling would call cls(message) and lose `reason`; worker processes
        # send these back to the parent, so keep both arguments.
        return (type(self), (self.path, self.reason))


class _Shaper:
    """Resize (short side, PIL bilinear) then centre crop; the geometry is fixed per clip.

    With ``resize="crop"`` PIL resamples the crop's region straight from the source
    (``box`` in source pixels), so the cut-away rows and columns are never filtered.
    """

    def __init__(self, height: int, width: int, cfg: DecodeConfig) -> None:
        self.src = (height, width)
        s = cfg.short_side
        # Pin the short side to exactly `s` so rounding can never make it smaller than crop.
        if height <= width:
            new_h, new_w = s, max(s, round(width * s / height))
        else:
            new_h, new_w = max(s, round(height * s / width)), s
        self.size = (new_w, new_h)  # PIL order
        self.resize = (new_w, new_h) != (width, height)
        c = cfg.crop
        left, top = (0, 0) if c is None else ((new_w - c) // 2, (new_h - c) // 2)
        self.box = (left, top, new_w if c is None else left + c, new_h if c is None else top + c)
        self.out_shape = (self.box[3] - top, self.box[2] - left, 3)  # (h, w, 3) of a frame
        # The resize maps the whole frame onto the whole frame, so coordinates normalised
        # to the resized frame are normalised to the original one as well.
        x1, y1, x2, y2 = self.box
        self.crop_box = (x1 / new_w, y1 / new_h, x2 / new_w, y2 / new_h)
        # the crop's region in source pixels: resampled to the crop's size it has the
        # resize's scale, so the filter's support and the sample centres are the same
        self.src_box = None
        if self.resize and c is not None and cfg.resize == "crop":
            sx, sy = width / new_w, height / new_h
            self.src_box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.src_box is not None:
            out_w, out_h = self.box[2] - self.box[0], self.box[3] - self.box[1]
            return np.asarray(Image.fromarray(frame).resize((out_w, out_h), Image.BILINEAR,
                                                            box=self.src_box))
        if self.resize:
            frame = np.asarray(Image.fromarray(frame).resize(self.size, Image.BILINEAR))
        x1, y1, x2, y2 = self.box
        return np.ascontiguousarray(frame[y1:y2, x1:x2])


def _n_out(span: float, fps: float) -> int:
    """How many output times ``j / fps`` lie in ``[0, span)``."""
    return max(0, math.ceil(span * fps - _TIME_EPS)) if span > 0 else 0


def _outside(start: float, end: float, duration: float) -> str:
    shown = "end" if math.isinf(end) else f"{end:.3f}s"
    return f"segment [{start:.3f}s, {shown}] lies outside the video (duration {duration:.3f}s)"


def _stream_rate(stream) -> float | None:
    """The stream's frame rate from metadata, or None when it declares none."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return None


def _rate_from_packets(container, stream) -> tuple[float | None, int]:
    """Estimate the rate from packet timestamps (median spacing); also count packets."""
    packets = [p.pts for p in container.demux(stream) if p.size]
    count = len(packets)
    pts = sorted(t for t in packets if t is not None)
    gaps = np.diff(np.asarray(pts, dtype=np.float64)) * float(stream.time_base)
    gaps = gaps[gaps > 0]
    return (1.0 / float(np.median(gaps)) if gaps.size else None), count


class _DecordSource:
    """decord behind the chunk interface: every output frame index is fixed at open (cheap,
    from the frame count and timestamps); pixels are read when a chunk asks for them.

    Built inside ``_with_timeout`` by :func:`_open_decord`.  The first output frame is
    decoded right away: that proves the file decodes and gives the frame size.
    """

    backend = "decord"
    frames_lost = 0  # decord either decodes a frame or fails (auto mode then uses PyAV)

    def __init__(self, path: Path, cfg: DecodeConfig, start: float, end: float) -> None:
        import decord  # optional dependency; imported only when this backend is used

        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, fault_tol=0.1)
        n_src, src_fps = len(vr), float(vr.get_avg_fps())
        if n_src < 1 or not math.isfinite(src_fps) or src_fps <= 0:
            raise RuntimeError(f"decord reports {n_src} frames at {src_fps} fps")
        fps = src_fps if cfg.fps is None else float(cfg.fps)
        # decord indexes frames as if the rate were constant.  For variable-rate files use
        # the frame timestamps instead (as PyAV does), so both backends pick the same frames.
        stamps = vr.get_frame_timestamp(np.arange(n_src)).astype(np.float64)
        starts = stamps[:, 0] - stamps[0, 0]
        vfr = np.abs(starts - np.arange(n_src) / src_fps).max() > 0.5 / src_fps
        duration = stamps[-1, 1] - stamps[0, 0] if vfr else n_src / src_fps
        n = _n_out(min(end, duration) - start, fps)
        if n < 1:
            raise VideoDecodeError(path, _outside(start, end, duration))
        times = start + np.arange(n) / fps
        if vfr:  # timestamps are float32: allow for their rounding
            idx = np.searchsorted(starts, times + 1e-4, side="right") - 1
        else:
            idx = np.floor((times + _TIME_EPS) * src_fps).astype(np.int64)
        self.idx = np.clip(idx, 0, n_src - 1)  # (n,) source frame of each output frame
        self.n_frames, self.src_fps, self.fps = n, src_fps, fps
        self._vr, self._timeout = vr, cfg.decord_timeout_s
        first = _get_batch(vr, self.idx[:1])  # already under the caller's timeout
        self.shaper = _Shaper(first.shape[1], first.shape[2], cfg)
        self.frame_bytes = first[0].nbytes  # one source frame, uint8 RGB
        self._held: np.ndarray | None = self.shaper(first[0])
        self._pos = 1  # next index of `idx` to read
        self._per_batch = 0  # frames a read asks for: set by the first fill
        self._reading: _Call | None = None  # the next batch, being read
        self._batch: np.ndarray | None = None  # the batch being resized, from _at on
        self._at = 0

    def _read_next(self) -> None:
        """Start reading the next batch in a thread (decord releases the GIL); None at the
        end.  One read at a time: the reader is never used by two threads at once."""
        self._reading = None
        if self._pos < self.n_frames:
            take = min(self._per_batch, self.n_frames - self._pos)
            self._reading = _Call(_get_batch, self._vr, self.idx[self._pos : self._pos + take])
            self._pos += take

    def fill(self, out: np.ndarray) -> int:
        """Write the next output frames into ``out`` (k, h, w, 3); return how many (0: done).

        While a batch is resized, decord reads the next in a thread, so a decoder with two
        cores uses both.  Batches are as long as the first ``out`` (at most
        ``_DECORD_BATCH`` frames, ``_DECORD_BATCH_BYTES``): with the batch read ahead, the
        source frames held are two batches."""
        k = 0
        if self._held is not None:
            out[0], self._held, k = self._held, None, 1
        if not self._per_batch:
            self._per_batch = max(1, min(len(out), _DECORD_BATCH,
                                         _DECORD_BATCH_BYTES // self.frame_bytes))
            self._read_next()
        while k < len(out):
            if self._batch is None or self._at == len(self._batch):
                if self._reading is None:
                    break
                # decord can hang on damaged data anywhere in a file, not only at open:
                # a read that fails or hangs is dropped here, never waited for again.
                reading, self._reading = self._reading, None
                self._batch, self._at = reading.result(self._timeout), 0
                self._read_next()
            out[k] = self.shaper(self._batch[self._at])
            self._at += 1
            k += 1
        return k

    def close(self) -> None:
        if self._reading is not None:  # it holds the reader, and so the file, open
            try:
                self._reading.result(self._timeout)
            except Exception:  # noqa: BLE001 - its frames are not wanted any more
                pass
        # decord has no close: dropping the reader frees it (a read abandoned by the
        # timeout keeps its own reference until it returns).
        self._vr = self._held = self._reading = self._batch = None


def _open_decord(path: Path, cfg: DecodeConfig, start: float, end: float) -> _DecordSource:
    """Open ``path`` with decord; the call ``open_clip`` runs under ``cfg.decord_timeout_s``."""
    return _DecordSource(path, cfg, start, end)


def _pyav_errors() -> tuple[type[BaseException], ...]:
    import av

    # Truncated or corrupt input surfaces as FFmpeg errors, or as value/index errors from
    # PyAV's own checks; all of them mean "this file cannot be decoded".
    return (av.FFmpegError, ValueError, IndexError, OSError, EOFError)


def _get_batch(vr, indices: np.ndarray) -> np.ndarray:
    """decord's (k, H, W, 3) uint8 source frames at ``indices``."""
    return vr.get_batch(indices.tolist()).asnumpy()


class _Call:
    """``fn(*args)`` started in a daemon thread; :meth:`result` waits for it.

    A hung native decoder cannot be killed from Python, but it can be abandoned: the
    daemon thread never blocks interpreter exit, and decord's FFI releases the GIL, so
    the caller goes on (to PyAV).  A subprocess with a hard kill is the cluster-grade guard.
    """

    def __init__(self, fn, *args) -> None:
        self._box: dict = {}

        def target() -> None:
            try:
                self._box["value"] = fn(*args)
            except BaseException as e:  # re-raised in the caller's thread
                self._box["error"] = e

        self._thread = threading.Thread(target=target, daemon=True, name="vidattn-decord")
        self._thread.start()

    def result(self, timeout_s: float | None):
        """The call's value (or its exception); TimeoutError if it is still running after
        waiting ``timeout_s`` more seconds (None: as long as it takes)."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"decord did not finish within {timeout_s:g} s")
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]


def _with_timeout(fn, timeout_s: float | None, *args):
    """``fn(*args)``; with a ``timeout_s``, run in a thread and abandoned after it
    (TimeoutError), see :class:`_Call`."""
    if timeout_s is None:
        return fn(*args)
    return _Call(fn, *args).result(timeout_s)
