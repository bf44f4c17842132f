"""Decoding: frame selection, geometry, backend agreement and error reporting."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidattn.video import Clip, DecodeConfig, VideoDecodeError, load_clip, probe, to_model_input

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


def test_variable_frame_rate(tmp_path, backend):
    # Frames alternately shown for 40 and 80 ms: selection must follow the timestamps.
    pts = np.cumsum([0] + [40 if k % 2 == 0 else 80 for k in range(29)])
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "4", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), BASE + STEP * k, np.uint8))
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
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


def test_probe(counter):
    info = probe(counter)
    assert info["fps"] == pytest.approx(25.0) and info["n_frames"] == 40
    assert (info["width"], info["height"]) == (96, 64)
    assert info["duration"] == pytest.approx(1.6, abs=0.05)


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


@pytest.fixture(scope="module")
def real_video() -> Path:
    if not REAL_VIDEO.is_file():
        pytest.skip(f"real sample video not present at {REAL_VIDEO.resolve()}")
    return REAL_VIDEO


def test_real_video_probe(real_video):
    info = probe(real_video)
    assert (info["width"], info["height"]) == (480, 360)
    assert info["fps"] == pytest.approx(30.0, abs=0.1)
    assert info["n_frames"] > 0 and info["duration"] > 2.0


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
    """A decord call that never returns is abandoned after decord_timeout_s."""
    import time

    import vidattn.video as V

    def hang(*args):
        time.sleep(30)

    monkeypatch.setattr(V, "_decode_decord", hang)
    t = time.time()
    clip = V.load_clip(textured, V.DecodeConfig(short_side=72, crop=None, decord_timeout_s=0.3))
    assert clip.backend == "pyav" and len(clip.frames) > 0
    assert time.time() - t < 10
