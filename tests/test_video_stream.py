"""Decoding on demand: ClipStream chunks against load_clip, seeking, fallbacks, bounded
memory and files released, decord hangs mid-stream."""

from __future__ import annotations

import gc
import os
import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from made_videos import (
    BASE,
    STEP,
    audio_only_file,
    decode_cfg,
    encode_video,
    frame_index,
    vfr_video,
)

import vidattn.decode_pyav as DP
import vidattn.video as V
from vidattn.video import (
    ClipStream,
    DecodeConfig,
    VideoDecodeError,
    load_clip,
    open_clip,
)

N_LONG = 300  # frames in the long video: many chunks of any size the tests read


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """12 s of a moving 64x96 texture at 25 fps."""
    rng = np.random.default_rng(2)
    tex = rng.integers(0, 256, (64, 512, 3), dtype=np.uint8)
    frames = np.stack([np.roll(tex, i, axis=1)[:, :96] for i in range(N_LONG)])
    return encode_video(tmp_path_factory.mktemp("video") / "long.mp4", frames, 25.0)


def _read_all(stream: ClipStream, n: int) -> list[np.ndarray]:
    chunks = list(stream.chunks(n))
    sizes = [len(c) for c in chunks]
    assert all(k == n for k in sizes[:-1]) and 1 <= sizes[-1] <= n, sizes
    assert all(c.dtype == np.uint8 and c.ndim == 4 and c.shape[-1] == 3 for c in chunks)
    return chunks


STREAM_CASES = {
    "resampled": (dict(fps=12.5), (None, None)),
    "native": (dict(fps=None), (None, None)),
    "upsampled-crop": (dict(fps=30.0, short_side=48, crop=32), (None, None)),
    "segment": (dict(fps=25.0), (0.4, 1.0)),
    "seek": (dict(fps=10.0), (1.0, None)),
}


@pytest.mark.parametrize("case", STREAM_CASES)
@pytest.mark.parametrize("n", [1, 7, 64])
def test_stream_equals_load_clip(counter, textured, backend, case, n):
    kw, segment = STREAM_CASES[case]
    for video in (counter, textured):
        cfg = decode_cfg(backend, **kw)
        clip = load_clip(video, cfg, *segment)
        with open_clip(video, cfg, *segment) as stream:
            meta = (stream.fps, stream.src_fps, stream.src_size, stream.crop_box, stream.backend)
            n_frames = stream.n_frames
            frames = np.concatenate(_read_all(stream, n))
        assert meta == (clip.fps, clip.src_fps, clip.src_size, clip.crop_box, clip.backend)
        assert stream.backend == backend
        np.testing.assert_array_equal(frames, clip.frames)
        assert n_frames == (len(frames) if backend == "decord" else None)


def test_stream_vfr_seek_and_fallback(tmp_path, long_video, backend):
    # Timestamps of a variable-rate file, a seek deep into a long one, and a raw stream
    # that decord refuses (auto -> PyAV).
    vfr, _ = vfr_video(tmp_path / "vfr.mkv")
    for path, kw, segment in [(vfr, dict(fps=10.0), (0.3, None)),
                              (long_video, dict(fps=7.0), (5.3, 9.1))]:
        cfg = decode_cfg(backend, **kw)
        clip = load_clip(path, cfg, *segment)
        with open_clip(path, cfg, *segment) as stream:
            np.testing.assert_array_equal(np.concatenate(_read_all(stream, 5)), clip.frames)
    frames = np.stack([np.full((48, 64, 3), BASE + STEP * k, np.uint8) for k in range(20)])
    raw = encode_video(tmp_path / "raw.h264", frames, 25.0, fmt="h264")
    auto = DecodeConfig(fps=None, short_side=48, crop=None)
    with open_clip(raw, auto) as stream:
        assert stream.backend == "pyav" and stream.n_frames is None
        got = frame_index(np.concatenate(_read_all(stream, 3)))
        np.testing.assert_array_equal(got, np.arange(20))


def _counting(frames, counts: list[int]):
    """Pass PyAV's decoded frames through, counting them."""
    for frame in frames:
        counts[0] += 1
        yield frame


def _count_decoded(monkeypatch, backend: str) -> list[int]:
    """Count source frames decoded (PyAV) or requested from the decoder (decord)."""
    counts = [0]
    if backend == "pyav":
        select = DP._select_pyav

        def counting_select(path, frames, *args):
            return select(path, _counting(frames, counts), *args)

        monkeypatch.setattr(DP, "_select_pyav", counting_select)
    else:
        import decord

        get_batch = decord.VideoReader.get_batch

        def counting_get_batch(self, indices):
            counts[0] += len(indices)
            return get_batch(self, indices)

        monkeypatch.setattr(decord.VideoReader, "get_batch", counting_get_batch)
    return counts


def test_stream_decodes_on_demand(long_video, backend, monkeypatch):
    counts = _count_decoded(monkeypatch, backend)
    cfg = decode_cfg(backend, fps=None)
    with open_clip(long_video, cfg) as stream:
        assert counts[0] <= 2  # open decodes the first frame only
        chunks = stream.chunks(16)
        assert len(next(chunks)) == 16
        if backend == "pyav":
            # PyAV decodes one frame past the chunk to know the last one is still on screen.
            assert 16 <= counts[0] <= 17
            assert len(next(chunks)) == 16 and counts[0] <= 33
        else:
            # decord reads batches as long as a chunk, the next one ahead in a thread
            assert 17 <= counts[0] <= 33
            assert len(next(chunks)) == 16 and counts[0] <= 49
    assert stream.n_frames in (N_LONG, None)


def test_decord_batches_are_bounded_in_bytes(counter, monkeypatch):
    """Large frames come a few per decord call (``_DECORD_BATCH_BYTES``), and the frames
    selected across those batch edges are the ones one batch per chunk gives."""
    pytest.importorskip("decord")
    import decord

    import vidattn.decoders as D

    cfg = decode_cfg("decord", fps=30.0)  # resampled: repeats fall on and across batch edges
    whole = load_clip(counter, cfg).frames
    sizes: list[int] = []
    get_batch = decord.VideoReader.get_batch

    def recording(self, indices):
        sizes.append(len(indices))
        return get_batch(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", recording)
    monkeypatch.setattr(D, "_DECORD_BATCH_BYTES", 3 * 64 * 96 * 3 - 1)  # under 3 frames
    bounded = load_clip(counter, cfg).frames
    np.testing.assert_array_equal(bounded, whole)
    assert sizes[0] == 1 and max(sizes) == 2 and sum(sizes) == len(whole)


def test_stream_memory_is_bounded(long_video, backend):
    cfg = decode_cfg(backend, fps=None)
    frame_bytes = 64 * 96 * 3
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        total = 0
        with open_clip(long_video, cfg) as stream:
            for chunk in stream.chunks(16):
                total += len(chunk)
                del chunk
        stream_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        clip = load_clip(long_video, cfg)
        load_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == len(clip.frames) == N_LONG
    assert load_peak >= N_LONG * frame_bytes  # the whole clip is traced
    # The chunk being filled, decord's batch being resized and the next one being read:
    # about three chunks' worth (16 frames each), far below the 300-frame clip.
    assert stream_peak < 4 * 16 * frame_bytes, (stream_peak, load_peak)


def _fds_on(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc/self/fd")
    target, n = str(path.resolve()), 0
    for fd in fd_dir.iterdir():
        try:
            n += os.readlink(fd) == target
        except OSError:  # the listing's own descriptor is gone by now
            pass
    return n


def test_stream_close_releases_the_file(long_video, backend):
    cfg = decode_cfg(backend)
    before = _fds_on(long_video)
    stream = open_clip(long_video, cfg)
    assert _fds_on(long_video) > before
    chunks = stream.chunks(8)
    assert len(next(chunks)) == 8
    stream.close()
    assert _fds_on(long_video) == before
    stream.close()  # harmless
    with pytest.raises(ValueError, match="closed"):
        next(chunks)
    with pytest.raises(ValueError, match="closed"):
        stream.chunks()
    # Exhausting a stream, or dropping it unread, also closes it.
    with open_clip(long_video, cfg) as stream:
        assert sum(len(c) for c in stream.chunks(100)) > 0
        assert _fds_on(long_video) == before
    stream = open_clip(long_video, cfg)
    del stream
    gc.collect()
    assert _fds_on(long_video) == before


def test_stream_usage_errors(counter, backend):
    with open_clip(counter, decode_cfg(backend)) as stream:
        with pytest.raises(ValueError, match="positive"):
            stream.chunks(0)
        stream.chunks(4)
        with pytest.raises(ValueError, match="once"):
            stream.chunks(4)


@pytest.mark.parametrize("segment", [(2.0, 3.0), (1.6, None)])
def test_open_clip_knows_bad_input_at_open(tmp_path, counter, backend, segment):
    with pytest.raises(VideoDecodeError, match="missing.mp4: file not found"):
        open_clip(tmp_path / "missing.mp4", decode_cfg(backend))
    with pytest.raises(VideoDecodeError, match="audio.mp4"):
        open_clip(audio_only_file(tmp_path / "audio.mp4"), decode_cfg(backend))
    with pytest.raises(VideoDecodeError, match="counter.mp4: .*segment"):
        open_clip(counter, decode_cfg(backend), *segment)


@pytest.fixture
def hang_decord_batch(monkeypatch):
    """``arm(k)``: decord's get_batch works k times, then blocks (until the test ends)."""
    decord = pytest.importorskip("decord")
    get_batch = decord.VideoReader.get_batch
    release = threading.Event()
    calls = [0, None]

    def blocking_get_batch(self, indices):
        calls[0] += 1
        if calls[0] > calls[1]:
            release.wait(30)
        return get_batch(self, indices)

    def arm(k: int) -> None:
        calls[:] = [0, k]

    monkeypatch.setattr(decord.VideoReader, "get_batch", blocking_get_batch)
    yield arm
    release.set()


def test_decord_hang_mid_stream_names_the_file(textured, hang_decord_batch, monkeypatch):
    cfg = DecodeConfig(short_side=72, crop=None, decord_timeout_s=0.5)
    pyav = load_clip(textured, replace(cfg, backend="pyav"))
    # Calls 1 and 2 (first frame at open, rest of the first chunk) work, the third hangs.
    for backend in ("auto", "decord"):
        hang_decord_batch(2)
        t = time.time()
        with open_clip(textured, replace(cfg, backend=backend)) as stream:
            chunks = stream.chunks(8)
            assert len(next(chunks)) == 8 and stream.backend == "decord"
            with pytest.raises(VideoDecodeError, match="textured.mp4: decord failed after 8"):
                next(chunks)
        assert time.time() - t < 10
    # load_clip keeps its contract: in auto mode PyAV decodes the whole clip instead.
    monkeypatch.setattr(V, "_LOAD_CHUNK", 8)  # so that load_clip reads more than one chunk
    hang_decord_batch(2)
    clip = load_clip(textured, cfg)
    assert clip.backend == "pyav"
    np.testing.assert_array_equal(clip.frames, pyav.frames)
    hang_decord_batch(2)
    with pytest.raises(VideoDecodeError, match="textured.mp4: decord failed after"):
        load_clip(textured, replace(cfg, backend="decord"))


def test_decord_hang_in_first_chunk_falls_back(textured, hang_decord_batch):
    cfg = DecodeConfig(short_side=72, crop=None, decord_timeout_s=0.5)
    pyav = load_clip(textured, replace(cfg, backend="pyav"))
    hang_decord_batch(1)  # the open works, the rest of the first chunk hangs
    with open_clip(textured, cfg) as stream:
        assert stream.backend == "decord" and stream.n_frames == len(pyav.frames)
        frames = np.concatenate(_read_all(stream, 8))
        assert stream.backend == "pyav" and stream.n_frames is None
    np.testing.assert_array_equal(frames, pyav.frames)
