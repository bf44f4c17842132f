"""Video decoding: one clip in, resampled / resized / centre-cropped RGB frames out.

Two backends produce the same frames: decord (fast random access, but unmaintained and
fragile on odd files) and PyAV (robust, sequential).  Both pick frames by one rule:
output frame ``j`` shows the source frame on screen at time ``start + j / fps``, i.e. the
nearest *preceding* source frame.  In ``auto`` mode decord is tried first and a failure
of it before any frame is handed out falls back to PyAV, so a bad file never depends on
decord's quirks.  Frames are shown as a player shows them: a file whose display matrix
rotates or mirrors its frames (phone video) is turned upright.  decord garbles such files,
so they always go to PyAV; on every other file the two backends give identical frames.

:func:`open_clip` decodes on demand, a chunk of frames at a time, so a long video never
sits in memory whole; :func:`load_clip` is the same stream gathered into one array.

The backends themselves (frame shaping, the decord and PyAV sources, the timeout guard)
live in :mod:`vidattn.decoders`, the metadata (:func:`probe`) in :mod:`vidattn.video_probe`;
this module is the public API.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vidattn.decode_pyav import (
    UPRIGHT,
    UnsupportedOrientation,
    _open_pyav,
    _PyAVSource,
    display_orientation,
)
from vidattn.decoders import (
    DecodeConfig,
    PathLike,
    VideoDecodeError,
    _DecordSource,
    _open_decord,
    _pyav_errors,
    _Shaper,
    _with_timeout,
)
from vidattn.video_probe import _check_file, expected_frames, probe

__all__ = [
    "Clip",
    "ClipStream",
    "DecodeConfig",
    "PathLike",
    "VideoDecodeError",
    "crop_box",
    "decode_of",
    "expected_frames",
    "load_clip",
    "open_clip",
    "probe",
    "to_model_input",
]

# Chunk size load_clip reads its stream with (it keeps every frame anyway).
_LOAD_CHUNK = 64
_log = logging.getLogger(__name__)


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


def decode_of(prep: dict) -> DecodeConfig:
    """The DecodeConfig a store's ``preprocessing`` provenance was decoded with (a store
    that records no ``resize`` rule resampled whole frames, or kept them whole)."""
    return DecodeConfig(prep["fps"], prep["short_side"], prep["crop"],
                        resize="crop" if prep.get("resize") == "crop region" else "frame")


def crop_box(height: int, width: int, cfg: DecodeConfig) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of the region ``cfg`` keeps of a height x width frame, normalised."""
    return _Shaper(height, width, cfg).crop_box


@dataclass(eq=False)
class ClipStream:
    """Frames of a clip, decoded on demand: ``chunks(n)`` yields (k, h, w, 3) uint8 RGB.

    fps, src_fps, src_size, crop_box, backend: as in :class:`Clip`, known once the stream
    is open.  n_frames: the exact number of frames the stream yields when known at open
    (decord: always; PyAV: None).  frames_lost: output frames whose source frame could not
    be decoded (damaged packets PyAV skipped), as far as the stream has been read; those
    times show the frame before the gap.  Should decord fail in ``auto`` mode before the first
    chunk is yielded, the stream switches to PyAV and these fields are updated before
    that chunk is yielded.  Use as a context manager, or call :meth:`close`; exhausting
    the stream or dropping it also releases the decoder.
    """

    fps: float
    src_fps: float
    src_size: tuple[int, int]
    crop_box: tuple[float, float, float, float]
    backend: str
    n_frames: int | None = None
    frames_lost: int = 0
    _source: Any = field(default=None, init=False, repr=False)
    _finalizer: Any = field(default=None, init=False, repr=False)
    # (path, cfg, start, end): what a fallback to PyAV reopens
    _args: tuple = field(default=(), init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)
    _yielded: int = field(default=0, init=False, repr=False)
    # decord failed after yielding frames, in auto mode (load_clip then redoes the clip)
    _decord_broke: bool = field(default=False, init=False, repr=False)

    @classmethod
    def _over(cls, source: _DecordSource | _PyAVSource, args: tuple) -> ClipStream:
        stream = cls(0.0, 0.0, (0, 0), (0.0, 0.0, 0.0, 0.0), "")
        stream._args = args
        stream._use(source)
        return stream

    def _use(self, source: _DecordSource | _PyAVSource) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the source being replaced
        self._source = source
        # Not a method of self: the finalizer must not keep the stream alive.
        self._finalizer = weakref.finalize(self, source.close)
        self.fps, self.src_fps = float(source.fps), float(source.src_fps)
        self.src_size, self.crop_box = source.shaper.src, source.shaper.crop_box
        self.backend, self.n_frames = source.backend, source.n_frames

    def chunks(self, n: int = 64) -> Iterator[np.ndarray]:
        """Yield all frames in order as fresh (k, h, w, 3) uint8 RGB arrays, 1 <= k <= n;
        only the last chunk may be shorter.  A stream can be iterated once; raises
        ValueError when it is closed or already iterated, VideoDecodeError (naming the
        file) when decoding fails.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"ClipStream.chunks: n must be a positive integer, got {n!r}")
        if self._source is None:
            raise ValueError(f"{self._where()}: ClipStream is closed")
        if self._started:
            raise ValueError(f"{self._where()}: ClipStream.chunks() can be iterated only once")
        self._started = True
        return self._iterate(int(n))

    def _iterate(self, n: int) -> Iterator[np.ndarray]:
        try:
            while (chunk := self._read(n)) is not None:
                k = len(chunk)
                self._yielded += k
                yield chunk
                # Hold no reference while decoding the next chunk: the caller decides
                # whether the last one stays alive.
                del chunk
                if k < n:
                    return
        finally:
            self.close()

    def _read(self, n: int) -> np.ndarray | None:
        """The next chunk of at most n frames, or None at the end."""
        path, cfg, start, end = self._args
        while True:
            source = self._source
            if source is None:
                raise ValueError(f"{path}: ClipStream is closed")
            want = n if self.n_frames is None else min(n, self.n_frames - self._yielded)
            if want < 1:
                return None
            buf = np.empty((want, *source.shaper.out_shape), np.uint8)
            pyav_errors = _pyav_errors() if source.backend == "pyav" else ()
            try:
                k = source.fill(buf)
                self.frames_lost = source.frames_lost
            except VideoDecodeError:
                raise
            except pyav_errors as e:
                why = f"cannot decode ({type(e).__name__}: {e})"
                raise VideoDecodeError(path, why) from e
            except Exception as e:
                if source.backend == "pyav":
                    raise
                if self._yielded == 0 and cfg.backend == "auto":
                    # Nothing handed out yet: PyAV can still give the whole clip.
                    _log.debug("decord failed on %s (%s); falling back to PyAV", path, e)
                    self._use(_open_pyav(path, cfg, start, end, e))
                    continue
                # Frames already went out: switching decoders mid-clip could shift them
                # (backends may differ by a grey level), so stop instead.
                self._decord_broke = cfg.backend == "auto"
                raise VideoDecodeError(
                    path, f"decord failed after {self._yielded} frames: {type(e).__name__}: {e}"
                ) from e
            return buf[:k] if k else None

    def _where(self) -> str:
        return str(self._args[0]) if self._args else "ClipStream"

    def close(self) -> None:
        """Release the decoder; calling it again is harmless."""
        if self._finalizer is not None:
            self._finalizer()
        self._source = None

    def __enter__(self) -> ClipStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _segment(path: Path, start_sec: float | None, end_sec: float | None) -> tuple[float, float]:
    # NaN is how pandas shows a null segment bound in a manifest: treat it as None.
    start = 0.0 if start_sec is None or math.isnan(start_sec) else float(start_sec)
    end = math.inf if end_sec is None or math.isnan(end_sec) else float(end_sec)
    if not (start >= 0 and end > start):
        raise VideoDecodeError(path, f"invalid segment [{start_sec}, {end_sec}]")
    return start, end


def open_clip(
    path: PathLike,
    cfg: DecodeConfig = DecodeConfig(),  # noqa: B008 - frozen, safe to share
    start_sec: float | None = None,
    end_sec: float | None = None,
) -> ClipStream:
    """Open ``[start_sec, end_sec)`` of a video for decoding in chunks (None or NaN = from
    the start / to the end).

    The stream yields the frames :func:`load_clip` returns, at most one chunk of them
    decoded at a time.  Raises VideoDecodeError naming the file when it is missing,
    empty or unreadable, has no video stream, or (where the backend knows it up front)
    the segment lies outside the video; other failures surface while iterating.
    """
    path = Path(path)
    _check_file(path)
    start, end = _segment(path, start_sec, end_sec)
    args = (path, cfg, start, end)
    decord_error: BaseException | None = None
    if cfg.backend in ("auto", "decord") and _turned(path):
        # decord garbles files with a display matrix (4 channels, transposed sizes); PyAV
        # turns their frames upright, so both modes give what a player shows.
        if cfg.backend == "decord":
            raise VideoDecodeError(path, "decord does not apply this file's display matrix "
                                         "(rotation); decode it with backend pyav or auto")
        return ClipStream._over(_open_pyav(*args), args)
    if cfg.backend in ("auto", "decord"):
        try:
            # Looked up in this module's globals: tests patch video._open_decord.
            source = _with_timeout(_open_decord, cfg.decord_timeout_s, *args)
            return ClipStream._over(source, args)
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
    return ClipStream._over(_open_pyav(*args, decord_error), args)


def _turned(path: Path) -> bool:
    """Whether the file's display matrix turns its frames (one frame decoded by PyAV).
    A file PyAV cannot read is left to decord, which may still manage it."""
    try:
        return display_orientation(path) != UPRIGHT
    except UnsupportedOrientation:  # PyAV's open says so, naming the file
        return True
    except _pyav_errors():
        return False


def load_clip(
    path: PathLike,
    cfg: DecodeConfig = DecodeConfig(),  # noqa: B008 - frozen, safe to share
    start_sec: float | None = None,
    end_sec: float | None = None,
) -> Clip:
    """Decode ``[start_sec, end_sec)`` of a video (None or NaN = from the start / to the end).

    Returns a Clip whose frames are (N, h, w, 3) uint8 RGB with N >= 1; (h, w) is
    (crop, crop), or the resized frame when ``cfg.crop`` is None.  Any failure, including
    a segment outside the video, raises VideoDecodeError naming the file.  This is
    :func:`open_clip` with every chunk gathered.
    """
    with open_clip(path, cfg, start_sec, end_sec) as stream:
        try:
            frames = _gather(stream)
        except VideoDecodeError as e:
            if not stream._decord_broke:
                raise
            # A stream cannot switch decoders once frames went out, but a whole clip can:
            # in auto mode any decord failure means PyAV decodes the clip, as it always has.
            _log.debug("decord failed on %s part way (%s); decoding again with PyAV", path, e)
            frames, broke = None, e
    if frames is None:
        try:
            return load_clip(path, replace(cfg, backend="pyav"), start_sec, end_sec)
        except VideoDecodeError as e:  # keep both decoders' reasons
            raise VideoDecodeError(path, f"{e.reason}; {broke.reason}") from e
    return Clip(
        frames=frames,
        fps=stream.fps,
        src_fps=stream.src_fps,
        src_size=stream.src_size,
        crop_box=stream.crop_box,
        backend=stream.backend,
    )


def _gather(stream: ClipStream) -> np.ndarray:
    """All frames of ``stream`` as one (N, h, w, 3) array, copied once."""
    out: np.ndarray | None = None
    parts: list[np.ndarray] = []
    k = 0
    for chunk in stream.chunks(_LOAD_CHUNK):
        # The count is final only once the first chunk is out (a fallback may change it).
        if k == 0 and stream.n_frames is not None:
            out = np.empty((stream.n_frames, *chunk.shape[1:]), np.uint8)
        if out is not None:
            out[k : k + len(chunk)] = chunk
        else:
            parts.append(chunk)
        k += len(chunk)
    return out[:k] if out is not None else np.concatenate(parts)


def check_rgb_frames(frames: np.ndarray, who: str) -> None:
    """Refuse anything but (N, h, w, 3) uint8 RGB frames: ValueError naming ``who``, the
    function that wanted them."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{who} expects (N, h, w, 3) uint8, got {frames.shape} {frames.dtype}")


def to_model_input(frames: np.ndarray) -> np.ndarray:
    """Turn (N, h, w, 3) uint8 RGB into (3, N, h, w) float32 in [-1, 1] (``x / 127.5 - 1``).

    This is the input I3D expects: channels first, then time.
    """
    check_rgb_frames(frames, "to_model_input")
    # C-contiguous in the new layout, so torch.from_numpy gets a dense tensor.
    x = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)
    x /= 127.5
    x -= 1.0
    return x
