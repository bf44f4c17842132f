"""Decoding: frame selection, geometry, backend agreement, error reporting and streaming."""

from __future__ import annotations

import gc
import os
import pickle
import threading
import time
import tracemalloc
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import vidattn.decode_pyav as DP
import vidattn.video as V
from vidattn.video import (
    Clip,
    ClipStream,
    DecodeConfig,
    VideoDecodeError,
    crop_box,
    decode_of,
    load_clip,
    open_clip,
    probe,
    to_model_input,
)

REAL_VIDEO = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    / "activitynet_walking_the_dog.mp4"
)
BACKENDS = ["decord", "pyav"]
N_COUNTER = 40  # frames in the counter video
STEP, BASE = 6, 10  # grey level of counter frame k is BASE + STEP * k


def _encode(path: Path, frames: np.ndarray, fps: float, fmt: str = "mp4") -> Path:
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


def _index(frames: np.ndarray) -> np.ndarray:
    """Recover the source frame index of each counter frame from its grey level."""
    level = frames[:, frames.shape[1] // 2, frames.shape[2] // 2].mean(axis=-1)
    return np.rint((level - BASE) / STEP).astype(int)


@pytest.fixture(scope="module")
def counter(tmp_path_factory) -> Path:
    """A 25 fps, 64x96 (h x w) video whose frame k is uniformly grey at a level coding k."""
    levels = BASE + STEP * np.arange(N_COUNTER, dtype=np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (N_COUNTER, 64, 96, 3)).copy()
    return _encode(tmp_path_factory.mktemp("video") / "counter.mp4", frames, 25.0)


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> Path:
    """A 25 fps 72x128 video of a moving texture, to compare real pixels across backends."""
    rng = np.random.default_rng(1)
    tex = rng.integers(0, 256, (72, 256, 3), dtype=np.uint8)
    frames = np.stack([np.roll(tex, 3 * i, axis=1)[:, :128] for i in range(30)])
    return _encode(tmp_path_factory.mktemp("video") / "textured.mp4", frames, 25.0)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "decord":
        pytest.importorskip("decord")
    return request.param


def _cfg(backend: str, **kw) -> DecodeConfig:
    kw.setdefault("short_side", 64)
    kw.setdefault("crop", None)
    return DecodeConfig(backend=backend, **kw)


@pytest.mark.parametrize(
    "fps, segment, expected",
    [
        (None, (None, None), np.arange(40)),
        (12.5, (None, None), np.arange(0, 40, 2)),
        (30.0, (None, None), np.floor(np.arange(48) * 25 / 30)),
        (10.0, (None, None), np.floor(np.arange(16) * 2.5)),
        (25.0, (0.4, 1.0), np.arange(10, 25)),
        (12.5, (1.0, 5.0), np.arange(25, 40, 2)),  # end past the video is clipped
        (25.0, (float("nan"), 0.2), np.arange(5)),  # NaN (a pandas null) means "no bound"
    ],
)
def test_frame_selection(counter, backend, fps, segment, expected):
    clip = load_clip(counter, _cfg(backend, fps=fps), *segment)
    assert isinstance(clip, Clip) and clip.backend == backend
    np.testing.assert_array_equal(_index(clip.frames), np.asarray(expected, dtype=int))
    assert clip.fps == (fps or 25.0) and clip.src_fps == pytest.approx(25.0)


def test_geometry(counter, backend):
    full = load_clip(counter, _cfg(backend, short_side=48))
    assert full.frames.shape == (40, 48, 72, 3) and full.frames.dtype == np.uint8
    assert full.src_size == (64, 96) and full.crop_box == (0.0, 0.0, 1.0, 1.0)
    crop = load_clip(counter, _cfg(backend, short_side=48, crop=32))
    assert crop.frames.shape == (40, 32, 32, 3)
    # 72 x 48 resized frame, 32 x 32 centre crop at (20, 8)
    assert crop.crop_box == pytest.approx((20 / 72, 8 / 48, 52 / 72, 40 / 48))
    default = load_clip(counter, DecodeConfig(backend=backend))
    assert default.frames.shape == (40, 224, 224, 3)


def test_backends_agree(textured):
    pytest.importorskip("decord")
    for fps in (None, 12.5, 30.0):
        cfg = dict(fps=fps, short_side=72, crop=64)
        a = load_clip(textured, DecodeConfig(backend="decord", **cfg)).frames.astype(int)
        b = load_clip(textured, DecodeConfig(backend="pyav", **cfg)).frames.astype(int)
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < 1.0


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A (h, w, 3) uint8 frame with stripes and noise: every pixel weight matters."""
    y, x = np.mgrid[:h, :w]
    wave = 60 * np.sin(x / 7.0) * np.cos(y / 5.0)
    noise = np.random.default_rng(seed).normal(0, 30, (h, w, 3))
    return (127 + wave[..., None] + noise).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(360, 480), (272, 640), (720, 1280), (144, 176), (480, 360)])
def test_resizing_the_crop_region_matches_the_whole_frame(size):
    from PIL import Image

    h, w = size
    frame = _texture(h, w)
    whole = DecodeConfig(short_side=256, crop=224, resize="frame")
    region = DecodeConfig(short_side=256, crop=224)
    assert region.resize == "crop" and region.resize_rule == "crop region"
    assert whole.resize_rule is None
    # "frame" is the definition: PIL bilinear of the whole frame, then the centre crop
    s = 256 / min(h, w)
    new_w, new_h = (max(256, round(w * s)), 256) if h <= w else (256, max(256, round(h * s)))
    full = np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR))
    left, top = (new_w - 224) // 2, (new_h - 224) // 2
    expected = full[top:top + 224, left:left + 224]
    np.testing.assert_array_equal(V._Shaper(h, w, whole)(frame), expected)
    # "crop": the same filter and scale on the region only, off by one in a few values
    got = V._Shaper(h, w, region)(frame).astype(int)
    diff = np.abs(got - expected)
    assert got.shape == (224, 224, 3) and diff.max() <= 1 and (diff > 0).mean() < 0.005
    assert crop_box(h, w, region) == crop_box(h, w, whole)


def test_without_a_crop_the_resize_rules_are_one():
    frame = _texture(90, 160)
    a, b = (V._Shaper(90, 160, DecodeConfig(short_side=72, crop=None, resize=r))(frame)
            for r in ("crop", "frame"))
    np.testing.assert_array_equal(a, b)
    assert DecodeConfig(crop=None).resize_rule is None


def test_decode_of_reads_a_stores_preprocessing():
    prep = {"fps": 25.0, "short_side": 256, "crop": 224, "scale": "[-1, 1]"}
    assert decode_of(prep).resize == "frame"  # stores made before the rule was recorded
    assert decode_of({**prep, "resize": "crop region"}) == DecodeConfig()


def _vfr_video(path: Path) -> tuple[Path, np.ndarray]:
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


def test_variable_frame_rate(tmp_path, backend):
    # Frames alternately shown for 40 and 80 ms: selection must follow the timestamps.
    path, pts = _vfr_video(tmp_path / "vfr.mkv")
    clip = load_clip(path, _cfg(backend, fps=10.0, short_side=48))
    times_ms = np.arange(len(clip.frames)) * 100
    expected = np.searchsorted(pts, times_ms, side="right") - 1
    assert len(clip.frames) == 18  # (pts[-1] + 40 ms) at 10 fps
    np.testing.assert_array_equal(_index(clip.frames), expected)


def test_auto_falls_back_to_pyav(tmp_path):
    # A raw H.264 stream has no container frame count; decord refuses it, PyAV copes.
    frames = np.stack([np.full((48, 64, 3), BASE + STEP * k, np.uint8) for k in range(20)])
    path = _encode(tmp_path / "raw.h264", frames, 25.0, fmt="h264")
    clip = load_clip(path, DecodeConfig(fps=None, short_side=48, crop=None))
    np.testing.assert_array_equal(_index(clip.frames), np.arange(20))
    assert clip.src_fps == pytest.approx(25.0)
    info = probe(path)
    assert info["n_frames"] == 20 and (info["width"], info["height"]) == (64, 48)


def test_to_model_input():
    frames = np.zeros((5, 8, 6, 3), np.uint8)
    frames[1] = 255
    frames[2, ..., 0] = 128
    x = to_model_input(frames)
    assert x.shape == (3, 5, 8, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x.min() == -1.0 and x.max() == 1.0
    assert x[0, 2, 0, 0] == pytest.approx(128 / 127.5 - 1, abs=1e-6) and x[1, 2, 0, 0] == -1.0
    with pytest.raises(ValueError):
        to_model_input(frames.astype(np.float32))


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated", "audio", "dir"])
@pytest.mark.parametrize("mode", ["auto", "decord", "pyav"])
def test_bad_files_raise_one_line(tmp_path, counter, kind, mode):
    if mode == "decord":
        pytest.importorskip("decord")
    path = tmp_path / f"bad_{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    elif kind == "truncated":
        path.write_bytes(counter.read_bytes()[:-400])  # the moov atom is at the end
    elif kind == "audio":
        _audio_only(path)
    elif kind == "dir":
        path.mkdir()
    with pytest.raises(VideoDecodeError) as err:
        load_clip(path, DecodeConfig(backend=mode))
    msg = str(err.value)
    assert path.name in msg and "\n" not in msg and msg.startswith(str(path))
    if mode == "auto":
        with pytest.raises(VideoDecodeError, match=path.name):
            probe(path)


def test_segment_errors(counter, backend):
    cfg = _cfg(backend)
    for segment in [(2.0, 3.0), (1.6, None), (0.5, 0.5), (-1.0, 1.0)]:
        with pytest.raises(VideoDecodeError, match="counter.mp4: .*segment"):
            load_clip(counter, cfg, *segment)


def test_error_pickles_and_config_checks():
    err = pickle.loads(pickle.dumps(VideoDecodeError("a/b.mp4", "bad\nthing")))
    assert str(err) == "a/b.mp4: bad thing" and err.reason == "bad thing"
    with pytest.raises(ValueError, match="crop"):
        DecodeConfig(short_side=200, crop=224)
    with pytest.raises(ValueError, match="backend"):
        DecodeConfig(backend="opencv")
    with pytest.raises(ValueError, match="fps"):
        DecodeConfig(fps=0)
    with pytest.raises(ValueError, match="resize"):
        DecodeConfig(resize="area")


@pytest.fixture(scope="module")
def real_video() -> Path:
    if not REAL_VIDEO.is_file():
        pytest.skip(f"real sample video not present at {REAL_VIDEO.resolve()}")
    return REAL_VIDEO


def test_real_video_segment(real_video):
    clip = load_clip(real_video, DecodeConfig(fps=25.0), start_sec=3.0, end_sec=5.0)
    assert clip.frames.shape == (50, 224, 224, 3)
    assert clip.src_size == (360, 480) and clip.src_fps == pytest.approx(30.0, abs=0.1)
    # 256 x 341 after resize, 224 crop: symmetric box, full aspect kept in normalised units
    x1, y1, x2, y2 = clip.crop_box
    assert x1 == pytest.approx(1 - x2, abs=0.01) and y1 == pytest.approx(1 - y2, abs=0.01)
    if clip.backend == "decord":  # compare with the other backend on a real file
        other = load_clip(real_video, DecodeConfig(fps=25.0, backend="pyav"), 3.0, 5.0)
        assert np.abs(clip.frames.astype(int) - other.frames.astype(int)).mean() < 1.0


def test_hung_decord_falls_back_to_pyav(textured, monkeypatch):
    """A decord open that never returns is abandoned after decord_timeout_s."""

    def hang(*args):
        time.sleep(30)

    monkeypatch.setattr(V, "_open_decord", hang)
    t = time.time()
    clip = V.load_clip(textured, V.DecodeConfig(short_side=72, crop=None, decord_timeout_s=0.3))
    assert clip.backend == "pyav" and len(clip.frames) > 0
    assert time.time() - t < 10


# --- streaming ----------------------------------------------------------------------------

N_LONG = 300  # frames in the long video: many chunks of any size the tests read


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """12 s of a moving 64x96 texture at 25 fps."""
    rng = np.random.default_rng(2)
    tex = rng.integers(0, 256, (64, 512, 3), dtype=np.uint8)
    frames = np.stack([np.roll(tex, i, axis=1)[:, :96] for i in range(N_LONG)])
    return _encode(tmp_path_factory.mktemp("video") / "long.mp4", frames, 25.0)


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
        cfg = _cfg(backend, **kw)
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
    vfr, _ = _vfr_video(tmp_path / "vfr.mkv")
    for path, kw, segment in [(vfr, dict(fps=10.0), (0.3, None)),
                              (long_video, dict(fps=7.0), (5.3, 9.1))]:
        cfg = _cfg(backend, **kw)
        clip = load_clip(path, cfg, *segment)
        with open_clip(path, cfg, *segment) as stream:
            np.testing.assert_array_equal(np.concatenate(_read_all(stream, 5)), clip.frames)
    frames = np.stack([np.full((48, 64, 3), BASE + STEP * k, np.uint8) for k in range(20)])
    raw = _encode(tmp_path / "raw.h264", frames, 25.0, fmt="h264")
    auto = DecodeConfig(fps=None, short_side=48, crop=None)
    with open_clip(raw, auto) as stream:
        assert stream.backend == "pyav" and stream.n_frames is None
        np.testing.assert_array_equal(_index(np.concatenate(_read_all(stream, 3))), np.arange(20))


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
    cfg = _cfg(backend, fps=None)
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

    cfg = _cfg("decord", fps=30.0)  # resampled: repeats fall on and across batch edges
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
    cfg = _cfg(backend, fps=None)
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
    cfg = _cfg(backend)
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
    with open_clip(counter, _cfg(backend)) as stream:
        with pytest.raises(ValueError, match="positive"):
            stream.chunks(0)
        stream.chunks(4)
        with pytest.raises(ValueError, match="once"):
            stream.chunks(4)


@pytest.mark.parametrize("segment", [(2.0, 3.0), (1.6, None)])
def test_open_clip_knows_bad_input_at_open(tmp_path, counter, backend, segment):
    with pytest.raises(VideoDecodeError, match="missing.mp4: file not found"):
        open_clip(tmp_path / "missing.mp4", _cfg(backend))
    with pytest.raises(VideoDecodeError, match="audio.mp4"):
        open_clip(_audio_only(tmp_path / "audio.mp4"), _cfg(backend))
    with pytest.raises(VideoDecodeError, match="counter.mp4: .*segment"):
        open_clip(counter, _cfg(backend), *segment)


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
