"""Video decoding: one clip in, resampled / resized / centre-cropped RGB frames out.

Two backends produce the same frames: decord (fast random access, but unmaintained and
fragile on odd files) and PyAV (robust, sequential).  Both pick frames by one rule:
output frame ``j`` shows the source frame on screen at time ``start + j / fps``, i.e. the
nearest *preceding* source frame.  In ``auto`` mode decord is tried first and any failure
of it falls back to PyAV, so a bad file never depends on decord's quirks.
"""

from __future__ import annotations

import logging
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
# decord reads frames in batches of this many so a long video never sits in memory whole.
_DECORD_BATCH = 32
# PyAV seeks only when the segment starts this far in; for short offsets decoding from
# the start is as cheap and avoids seeking quirks.
_SEEK_MIN_SEC = 1.0
_BACKENDS = ("auto", "decord", "pyav")
_log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass(frozen=True)
class DecodeConfig:
    """How frames are sampled and shaped.

    fps: resample to this rate (None keeps the native rate); short_side: resize so the
    short side has this many pixels; crop: centre crop ``crop x crop`` (None keeps the
    whole resized frame); backend: ``auto`` (decord, then PyAV), ``decord`` or ``pyav``;
    decord_timeout_s: decord calls that take longer are abandoned (``auto`` then falls back
    to PyAV) -- decord can hang on damaged files; None waits forever.
    """

    fps: float | None = 25.0
    short_side: int = 256
    crop: int | None = 224
    backend: str = "auto"
    decord_timeout_s: float | None = 120.0

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


@dataclass
class Clip:
    """Decoded frames and where they came from.

    frames: (N, h, w, 3) uint8 RGB after resample / resize / crop, N >= 1.
    fps: rate of ``frames``; src_fps: native rate; src_size: (height, width) of the source;
    crop_box: (x1, y1, x2, y2) of the kept region, normalised to the source frame;
    backend: ``"decord"`` or ``"pyav"``.
    """

    frames: np.ndarray
    fps: float
    src_fps: float
    src_size: tuple[int, int]
    crop_box: tuple[float, float, float, float]
    backend: str


class _Shaper:
    """Resize (short side, PIL bilinear) then centre crop; the geometry is fixed per clip."""

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
        # The resize maps the whole frame onto the whole frame, so coordinates normalised
        # to the resized frame are normalised to the original one as well.
        x1, y1, x2, y2 = self.box
        self.crop_box = (x1 / new_w, y1 / new_h, x2 / new_w, y2 / new_h)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.resize:
            frame = np.asarray(Image.fromarray(frame).resize(self.size, Image.BILINEAR))
        x1, y1, x2, y2 = self.box
        return np.ascontiguousarray(frame[y1:y2, x1:x2])


def crop_box(height: int, width: int, cfg: DecodeConfig) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of the region ``cfg`` keeps of a height x width frame, normalised."""
    return _Shaper(height, width, cfg).crop_box


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


def _decode_decord(path: Path, cfg: DecodeConfig, start: float, end: float):
    import decord  # optional dependency; imported only when this backend is used

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, fault_tol=0.1)
    n_src, src_fps = len(vr), float(vr.get_avg_fps())
    if n_src < 1 or not math.isfinite(src_fps) or src_fps <= 0:
        raise RuntimeError(f"decord reports {n_src} frames at {src_fps} fps")
    fps = src_fps if cfg.fps is None else float(cfg.fps)
    # decord indexes frames as if the rate were constant.  For variable-rate files use the
    # frame timestamps instead (as PyAV does), so both backends pick the same frames.
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
    idx = np.clip(idx, 0, n_src - 1)
    out: list[np.ndarray] = []
    shaper = None
    for i in range(0, n, _DECORD_BATCH):
        batch = vr.get_batch(idx[i : i + _DECORD_BATCH].tolist()).asnumpy()
        shaper = shaper or _Shaper(batch.shape[1], batch.shape[2], cfg)
        out.extend(shaper(f) for f in batch)
    return out, src_fps, fps, shaper


def _decode_pyav(path: Path, cfg: DecodeConfig, start: float, end: float):
    import av

    src_fps: float | None = None
    for seek in (start >= _SEEK_MIN_SEC, False):
        with av.open(str(path)) as container:
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
            got = _select_pyav(path, container, stream, cfg, start, end, origin, seek, src_fps)
        # None: the seek landed after `start` (inexact on some formats), or on nothing.
        if got is not None:
            return got
    raise AssertionError("unreachable: decoding from the start never asks to retry")


def _select_pyav(path, container, stream, cfg, start, end, origin, seeked, src_fps):
    """Walk the decoded frames once, keeping the nearest preceding frame of each output time."""
    fps = src_fps if cfg.fps is None else float(cfg.fps)
    n_max = _n_out(end - start, fps) if math.isfinite(end) else None
    out: list[np.ndarray] = []
    shaper: _Shaper | None = None
    prev_t, prev = None, None

    def emit(frame) -> None:
        nonlocal shaper
        arr = frame.to_ndarray(format="rgb24")
        shaper = shaper or _Shaper(arr.shape[0], arr.shape[1], cfg)
        out.append(shaper(arr))

    for frame in container.decode(stream):
        if frame.time is None:
            # No timestamp: assume one frame period after the previous frame.
            t = 0.0 if prev_t is None else prev_t + 1.0 / src_fps
        else:
            origin = float(frame.time) if origin is None else origin
            t = float(frame.time) - origin
        if prev is None:
            if seeked and t > start + _TIME_EPS:
                return None
        else:
            # `prev` is on screen until `t`: it serves every output time before then.
            while (n_max is None or len(out) < n_max) and start + len(out) / fps + _TIME_EPS < t:
                emit(prev)
        prev_t, prev = t, frame
        if t >= end:
            break
    if prev is None:
        if seeked:
            return None
        raise VideoDecodeError(path, "no frames could be decoded")
    # The last frame stays on screen for one frame period.
    duration = prev_t + 1.0 / src_fps
    n_total = _n_out(min(end, duration) - start, fps)
    while len(out) < n_total:
        emit(prev)
    if not out:
        raise VideoDecodeError(path, _outside(start, end, duration))
    return out, src_fps, fps, shaper


def _check_file(path: Path) -> None:
    """Reject missing and empty files before any decoder sees them (clearer messages)."""
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")


def _pyav_errors() -> tuple[type[BaseException], ...]:
    import av

    # Truncated or corrupt input surfaces as FFmpeg errors, or as value/index errors from
    # PyAV's own checks; all of them mean "this file cannot be decoded".
    return (av.FFmpegError, ValueError, IndexError, OSError, EOFError)


def probe(path: PathLike) -> dict:
    """Read a video's metadata with PyAV without decoding pixels.

    Returns ``{"fps": float, "n_frames": int, "width": int, "height": int,
    "duration": float}`` (seconds).  Raises VideoDecodeError when the file is missing,
    empty, unreadable or has no video stream.
    """
    import av

    path = Path(path)
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            fps, n_frames = _stream_rate(stream), int(stream.frames or 0)
            if stream.duration:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1e6
            else:
                duration = None
            if fps is None or n_frames <= 0 or duration is None:
                # Sparse metadata (raw streams, some mkv): count packets instead.
                est_fps, count = _rate_from_packets(container, stream)
                fps = fps or est_fps or 25.0
                n_frames = n_frames if n_frames > 0 else count
                duration = duration if duration is not None else n_frames / fps
    except _pyav_errors() as e:
        raise VideoDecodeError(path, f"cannot read video ({type(e).__name__}: {e})") from e
    if width <= 0 or height <= 0:
        raise VideoDecodeError(path, f"video stream has no frame size ({width}x{height})")
    return {"fps": fps, "n_frames": n_frames, "width": width, "height": height,
            "duration": duration}


def load_clip(
    path: PathLike,
    cfg: DecodeConfig = DecodeConfig(),
    start_sec: float | None = None,
    end_sec: float | None = None,
) -> Clip:
    """Decode ``[start_sec, end_sec)`` of a video (None or NaN = from the start / to the end).

    Returns a Clip whose frames are (N, h, w, 3) uint8 RGB with N >= 1; (h, w) is
    (crop, crop), or the resized frame when ``cfg.crop`` is None.  Any failure, including
    a segment outside the video, raises VideoDecodeError naming the file.
    """
    path = Path(path)
    _check_file(path)
    # NaN is how pandas shows a null segment bound in a manifest: treat it as None.
    start = 0.0 if start_sec is None or math.isnan(start_sec) else float(start_sec)
    end = math.inf if end_sec is None or math.isnan(end_sec) else float(end_sec)
    if not (start >= 0 and end > start):
        raise VideoDecodeError(path, f"invalid segment [{start_sec}, {end_sec}]")

    decord_error: BaseException | None = None
    if cfg.backend in ("auto", "decord"):
        try:
            got = _with_timeout(_decode_decord, cfg.decord_timeout_s, path, cfg, start, end)
            if got[0]:
                return _clip(got, "decord")
            raise RuntimeError("decord returned no frames")
        except ImportError:
            if cfg.backend == "decord":
                raise
        except Exception as e:  # decord is unmaintained: any failure means "try PyAV"
            if cfg.backend == "decord":
                if isinstance(e, VideoDecodeError):
                    raise
                raise VideoDecodeError(path, f"decord: {type(e).__name__}: {e}") from e
            decord_error = e
            _log.debug("decord failed on %s (%s); falling back to PyAV", path, e)
    try:
        return _clip(_decode_pyav(path, cfg, start, end), "pyav")
    except VideoDecodeError:
        raise
    except _pyav_errors() as e:
        why = f"cannot decode ({type(e).__name__}: {e})"
        if decord_error is not None:
            why += f"; decord also failed ({type(decord_error).__name__})"
        raise VideoDecodeError(path, why) from e


def _with_timeout(fn, timeout_s: float | None, *args):
    """Run ``fn(*args)`` in a daemon thread; TimeoutError if it outlives ``timeout_s``.

    A hung native decoder cannot be killed from Python, but it can be abandoned: the
    daemon thread never blocks interpreter exit, and decord's FFI releases the GIL, so
    the caller goes on (to PyAV).  A subprocess with a hard kill is the cluster-grade guard.
    """
    if timeout_s is None:
        return fn(*args)
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True, name="vidattn-decord")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"decord did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _clip(got, backend: str) -> Clip:
    frames, src_fps, fps, shaper = got
    return Clip(
        frames=np.stack(frames),
        fps=float(fps),
        src_fps=float(src_fps),
        src_size=shaper.src,
        crop_box=shaper.crop_box,
        backend=backend,
    )


def to_model_input(frames: np.ndarray) -> np.ndarray:
    """Turn (N, h, w, 3) uint8 RGB into (3, N, h, w) float32 in [-1, 1] (``x / 127.5 - 1``).

    This is the input I3D expects: channels first, then time.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"to_model_input expects (N, h, w, 3) uint8, got {frames.shape} {frames.dtype}"
        )
    # C-contiguous in the new layout, so torch.from_numpy gets a dense tensor.
    x = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)
    x /= 127.5
    x -= 1.0
    return x
