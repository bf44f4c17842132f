"""Reading a video's metadata without decoding pixels: :func:`probe` and
:func:`expected_frames` (both re-exported by :mod:`vidattn.video`), and the file checks
every decoder runs first."""

from __future__ import annotations

from pathlib import Path

from vidattn.decoders import (
    PathLike,
    VideoDecodeError,
    _pyav_errors,
    _rate_from_packets,
    _stream_rate,
)


def _check_file(path: Path) -> None:
    """Reject missing and empty files before any decoder sees them (clearer messages)."""
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")


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


def expected_frames(path: PathLike, start_sec: float | None, end_sec: float | None,
                    fps: float) -> int | None:
    """Frames a segment should yield at ``fps``, by the container's own account: the
    segment clipped to the file's declared duration, times the rate.  None when that is
    empty.  A file without a declared duration is measured by the packets it holds (see
    :func:`probe`), so it is never called short of itself.
    """
    duration = probe(path)["duration"]
    if duration is None:
        return None
    start = start_sec or 0.0
    end = duration if end_sec is None else min(end_sec, duration)
    n = int(round((end - start) * fps))
    return n if n > 0 else None
