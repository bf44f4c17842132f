"""Small videos made for the decoding tests, and how to read them back."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidattn.video import DecodeConfig

BACKENDS = ["decord", "pyav"]
N_COUNTER = 40  # frames in the counter video
STEP, BASE = 6, 10  # grey level of counter frame k is BASE + STEP * k


def encode_video(path: Path, frames: np.ndarray, fps: float, fmt: str = "mp4") -> Path:
    """Write (n, h, w, 3) uint8 frames as H.264 (near lossless, so levels survive)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                options={"crf": "4", "threads": "1"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def frame_index(frames: np.ndarray) -> np.ndarray:
    """Recover the source frame index of each counter frame from its grey level."""
    level = frames[:, frames.shape[1] // 2, frames.shape[2] // 2].mean(axis=-1)
    return np.rint((level - BASE) / STEP).astype(int)


def decode_cfg(backend: str, **kw) -> DecodeConfig:
    kw.setdefault("short_side", 64)
    kw.setdefault("crop", None)
    return DecodeConfig(backend=backend, **kw)


def audio_only_file(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def vfr_video(path: Path) -> tuple[Path, np.ndarray]:
    """Counter frames alternately shown for 40 and 80 ms; also returns their pts (ms)."""
    pts = np.cumsum([0] + [40 if k % 2 == 0 else 80 for k in range(29)])
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "4", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), BASE + STEP * k, np.uint8))
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path, pts
