"""The PyAV backend behind :mod:`vidattn.video`: one sequential pass over a segment's
decoded frames, seeking first when the segment starts far in.  Two things set it apart
from a bare ``container.decode`` loop:

- **It keeps what decodes.**  A packet the decoder rejects as damaged data is skipped and
  counted; decoding goes on with the next one.  The frames that never came out are counted
  too (``frames_lost``, in output frames), so the caller can judge the video by the same
  rule as a truncated file.  Output times that fall in a gap show the last frame decoded
  before it, so the time axis never shifts.
- **It shows frames as a player does.**  Phones store portrait video as landscape frames
  plus a display matrix; every frame is turned by that matrix (rotations by multiples of
  90 degrees and mirrors) before it is resized.  decord mishandles such files, so
  :func:`vidattn.video.open_clip` sends them here (:func:`display_orientation`).

Frame selection is the rule of :mod:`vidattn.decoders`: output frame ``j`` shows the
source frame on screen at ``start + j / fps``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vidattn.decoders import (
    _TIME_EPS,
    DecodeConfig,
    VideoDecodeError,
    _n_out,
    _outside,
    _pyav_errors,
    _rate_from_packets,
    _Shaper,
    _stream_rate,
)

# PyAV seeks only when the segment starts this far in; for short offsets decoding from
# the start is as cheap and avoids seeking quirks.
_SEEK_MIN_SEC = 1.0


class Orientation(NamedTuple):
    """How a decoded (rows, cols) frame becomes the displayed picture: transpose first,
    then reverse rows and/or columns."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, C) as stored -> the displayed (H', W', C), contiguous."""
        if self == UPRIGHT:
            return frame
        if self.transpose:
            frame = frame.transpose(1, 0, 2)
        if self.flip_rows:
            frame = frame[::-1]
        if self.flip_cols:
            frame = frame[:, ::-1]
        return np.ascontiguousarray(frame)


UPRIGHT = Orientation()


class UnsupportedOrientation(Exception):
    """A display matrix that is not a multiple of 90 degrees (turning it would resample)."""


def orientation(frame) -> Orientation:
    """The :class:`Orientation` of a decoded PyAV frame's display matrix (UPRIGHT without
    one).  FFmpeg's matrix maps a stored pixel (p, q) = (column, row) to the displayed
    (a p + c q, b p + d q) plus a shift, a..d in 16.16 fixed point.  Raises
    UnsupportedOrientation for a rotation that is not a multiple of 90 degrees."""
    for side in frame.side_data:
        if side.type.name != "DISPLAYMATRIX":
            continue
        m = np.frombuffer(bytes(side), "<i4").astype(np.float64) / 65536.0
        a, b, c, d = m[0], m[1], m[3], m[4]
        if max(abs(b), abs(c)) < 1e-3 and min(abs(a), abs(d)) > 1e-3:
            return Orientation(False, d < 0, a < 0)
        if max(abs(a), abs(d)) < 1e-3 and min(abs(b), abs(c)) > 1e-3:
            # transposed: displayed rows follow stored columns (b), columns follow rows (c)
            return Orientation(True, b < 0, c < 0)
        angle = math.degrees(math.atan2(b, a))
        raise UnsupportedOrientation(f"display matrix rotates by {angle:.1f} degrees; only "
                                     f"multiples of 90 are supported")
    return UPRIGHT


def display_orientation(path: Path) -> Orientation:
    """The orientation of ``path``'s first decodable video frame (decodes up to it)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return UPRIGHT
        for frame in _decoded(container, container.streams.video[0], Losses()):
            return orientation(frame)
    return UPRIGHT


class Losses:
    """What one pass lost: packets the decoder rejected, and the source frames that never
    came out, judged from timestamps (a packet's pts with no decoded frame at it)."""

    def __init__(self) -> None:
        self.rejected = 0
        self.reason = ""  # the decoder's first complaint
        self._packets: set[int] = set()
        self._frames: set[int] = set()

    def source_frames_lost(self, lo: int | None, hi: int | None) -> int:
        """Packets with pts in [lo, hi] (None: open) that gave no frame."""
        def inside(t: int) -> bool:
            return (lo is None or t >= lo) and (hi is None or t <= hi)

        return sum(1 for t in self._packets - self._frames if inside(t))


def _decoded(container, stream, losses: Losses):
    """Decoded frames of ``stream`` in presentation order, skipping rejected packets."""
    import av

    for packet in container.demux(stream):
        if packet.size and packet.pts is not None:
            losses._packets.add(packet.pts)
        try:
            frames = packet.decode()
        except av.InvalidDataError as e:  # damaged bytes: the next packet may be fine
            losses.rejected += 1
            losses.reason = losses.reason or f"{type(e).__name__}: {e}"
            continue
        for frame in frames:
            if frame.pts is not None:
                losses._frames.add(frame.pts)
            yield frame


class _SeekMissed(Exception):
    """The seek landed after the segment start (inexact on some formats), or on nothing."""


def _select_pyav(path, frames, start, end, origin, seeked, src_fps, fps, losses=None):
    """Walk the decoded ``frames`` once; yield, for j = 0, 1, ..., the frame on screen at
    ``start + j / fps`` (a frame serving several output times is yielded once per time).

    Only the previous decoded frame is kept, so memory does not grow with the clip.
    Raises _SeekMissed before yielding anything when a seek went wrong.
    """
    n_max = _n_out(end - start, fps) if math.isfinite(end) else None
    j = 0
    prev_t, prev = None, None
    for frame in frames:
        if frame.time is None:
            # No timestamp: assume one frame period after the previous frame.
            t = 0.0 if prev_t is None else prev_t + 1.0 / src_fps
        else:
            origin = float(frame.time) if origin is None else origin
            t = float(frame.time) - origin
        if prev is None:
            if seeked and t > start + _TIME_EPS:
                raise _SeekMissed
        else:
            # `prev` is on screen until `t`: it serves every output time before then.
            while (n_max is None or j < n_max) and start + j / fps + _TIME_EPS < t:
                yield prev
                j += 1
        prev_t, prev = t, frame
        if t >= end:
            break
    if prev is None:
        if seeked:
            raise _SeekMissed
        why = "no frames could be decoded"
        if losses is not None and losses.rejected:
            why += f" ({losses.rejected} packets rejected, first: {losses.reason})"
        raise VideoDecodeError(path, why)
    # The last frame stays on screen for one frame period.
    duration = prev_t + 1.0 / src_fps
    n_total = _n_out(min(end, duration) - start, fps)
    while j < n_total:
        yield prev
        j += 1
    if j == 0:
        raise VideoDecodeError(path, _outside(start, end, duration))


class _PyAVSource:
    """PyAV behind the chunk interface of :mod:`vidattn.decoders`.

    The first output frame is decoded at open (it fixes the frame size and orientation,
    and settles a seek that has to be redone from the start).  Whether the segment lies in
    the video is known only once decoding reaches it, so the frame count stays unknown.
    ``frames_lost``: output frames whose source frame could not be decoded, so far.
    """

    backend = "pyav"
    n_frames = None

    def __init__(self, path: Path, cfg: DecodeConfig, start: float, end: float) -> None:
        import av

        src_fps: float | None = None
        for seek in (start >= _SEEK_MIN_SEC, False):
            container = av.open(str(path))
            try:
                if not container.streams.video:
                    raise VideoDecodeError(path, "no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                src_fps = src_fps or _stream_rate(stream)
                if src_fps is None:
                    # No rate in the metadata: learn it from timestamps, then start over.
                    src_fps = _rate_from_packets(container, stream)[0] or 25.0
                    container.seek(0)
                tb = stream.time_base
                origin = None if stream.start_time is None else float(stream.start_time * tb)
                seek = seek and origin is not None
                if seek:
                    container.seek(int((start + origin) / tb), stream=stream)
                fps = src_fps if cfg.fps is None else float(cfg.fps)
                losses = Losses()
                frames = _select_pyav(path, _decoded(container, stream, losses), start, end,
                                      origin, seek, src_fps, fps, losses)
                first = next(frames)
                turn = orientation(first)
                arr = turn.apply(first.to_ndarray(format="rgb24"))
            except _SeekMissed:
                container.close()
                continue
            except UnsupportedOrientation as e:
                container.close()
                raise VideoDecodeError(path, str(e)) from e
            except BaseException:
                container.close()
                raise
            self._container, self._frames, self._turn = container, frames, turn
            self._losses, self._tb = losses, tb
            # The segment in pts: losses outside it do not count against it.
            o = origin or 0.0
            self._lo = int(round((start + o) / tb))
            self._hi = int(round((end + o) / tb)) if math.isfinite(end) else None
            self.src_fps, self.fps = src_fps, fps
            self.orientation = turn
            self.shaper = _Shaper(arr.shape[0], arr.shape[1], cfg)
            self._held: np.ndarray | None = self.shaper(arr)
            # Resampling up repeats frames: shape each decoded frame once.
            self._last = (first, self._held)
            self._last_pts = first.pts
            return
        raise AssertionError("unreachable: decoding from the start never asks to retry")

    @property
    def frames_lost(self) -> int:
        """Output frames (at ``fps``) whose source frame was lost, up to the last one read."""
        hi = self._last_pts if self._hi is None or self._last_pts is None else min(
            self._hi, self._last_pts)
        lost = self._losses.source_frames_lost(self._lo, hi)
        return int(round(lost * self.fps / self.src_fps))

    def fill(self, out: np.ndarray) -> int:
        """Write the next output frames into ``out`` (k, h, w, 3); return how many (0: done)."""
        k = 0
        if self._held is not None:
            out[0], self._held, k = self._held, None, 1
        while k < len(out):
            frame = next(self._frames, None)
            if frame is None:
                break
            if frame is not self._last[0]:
                arr = self._turn.apply(frame.to_ndarray(format="rgb24"))
                self._last = (frame, self.shaper(arr))
                if frame.pts is not None:
                    self._last_pts = frame.pts
            out[k] = self._last[1]
            k += 1
        return k

    def close(self) -> None:
        if self._container is not None:
            self._frames.close()  # leaves the decode loop before the container goes
            self._container.close()
            self._container = self._held = self._last = None


def _open_pyav(path: Path, cfg: DecodeConfig, start: float, end: float,
               decord_error: BaseException | None = None) -> _PyAVSource:
    """Open the PyAV source; errors name the file, and carry decord's reason when PyAV is
    the fallback of a decord failure."""
    try:
        return _PyAVSource(path, cfg, start, end)
    except VideoDecodeError as e:
        if decord_error is None:
            raise
        raise VideoDecodeError(path, f"{e.reason}; decord: {_reason(decord_error)}") from e
    except _pyav_errors() as e:
        why = f"cannot decode ({type(e).__name__}: {e})"
        if decord_error is not None:
            why += f"; decord: {_reason(decord_error)}"
        raise VideoDecodeError(path, why) from e


def _reason(e: BaseException) -> str:
    """An error's own words, without a path the message already starts with."""
    if isinstance(e, VideoDecodeError):
        return e.reason
    return f"{type(e).__name__}: {e}"
