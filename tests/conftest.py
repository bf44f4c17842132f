"""Shared fixtures: a tiny sample dataset and a store extracted from it with real weights."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from made_videos import BACKENDS, BASE, N_COUNTER, STEP, encode_video

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# 4 classes x (2 train + 1 test) actions, each with its conjugate: 24 clips of 16 frames.
TINY = {"n_train_per_class": 2, "n_test_per_class": 1, "n_frames": 16}


@pytest.fixture()
def one_thread():
    """Small convolutions: one intra-op thread is fastest and immune to busy CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> Path:
    from vidattn.datasets.sample import SampleConfig, ensure_sample

    return ensure_sample(tmp_path_factory.mktemp("tiny") / "sample", SampleConfig(**TINY))


@pytest.fixture(scope="session")
def tiny_store(tiny_sample, tmp_path_factory) -> str:
    """The tiny sample extracted with the packaged Kinetics-400 I3D, 4 videos per part."""
    from vidattn.pipeline.extract import ExtractConfig, run

    store = str(tmp_path_factory.mktemp("stores") / "tiny")
    res = run(ExtractConfig(root=str(tiny_sample), store=store, part_size=4, device="cpu"))
    assert not res.failures, res.failures
    return store


def write_video(path: Path, n_frames: int, fps: int = 25, codec: str | None = None) -> None:
    """A tiny real 64x48 video whose probe reports exactly ``n_frames`` at ``fps``.

    The container follows the suffix; the codec defaults to MPEG-4 part 2 for .avi (as
    Hollywood2's files) and H.264 otherwise.  Frame k is a flat grey of level 3k.
    """
    import av

    codec = codec or ("mpeg4" if path.suffix.lower() == ".avi" else "libx264")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps), options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n_frames):
            img = np.full((48, 64, 3), 3 * i % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def stalling_video(folder: Path) -> Path:
    """An HLS playlist whose one segment is a named pipe nobody writes to: FFmpeg (and
    decord) block for good in open(2) on it, the hang of a stalled network mount."""
    os.mkfifo(folder / "stall.ts")
    playlist = folder / "stall.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n"
                        "#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\nstall.ts\n#EXT-X-ENDLIST\n")
    return playlist


def same_chunks(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    """Whether two lists of decoded chunks hold the same frames, chunk by chunk (and are
    not both empty)."""
    return len(got) == len(want) >= 1 and all(
        np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def decoding_children() -> list[str]:
    """The decoding child processes of this process still alive."""
    import multiprocessing as mp

    return [p.name for p in mp.active_children() if p.name == "vidattn-decode"]


# ---- the decoding tests' videos (tests/made_videos.py)
@pytest.fixture(scope="module")
def counter(tmp_path_factory) -> Path:
    """A 25 fps, 64x96 (h x w) video whose frame k is uniformly grey at a level coding k."""
    levels = BASE + STEP * np.arange(N_COUNTER, dtype=np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (N_COUNTER, 64, 96, 3)).copy()
    return encode_video(tmp_path_factory.mktemp("video") / "counter.mp4", frames, 25.0)


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> Path:
    """A 25 fps 72x128 video of a moving texture, to compare real pixels across backends."""
    rng = np.random.default_rng(1)
    tex = rng.integers(0, 256, (72, 256, 3), dtype=np.uint8)
    frames = np.stack([np.roll(tex, 3 * i, axis=1)[:, :128] for i in range(30)])
    return encode_video(tmp_path_factory.mktemp("video") / "textured.mp4", frames, 25.0)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "decord":
        pytest.importorskip("decord")
    return request.param
