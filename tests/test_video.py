"""Decoding: frame selection, geometry, backend agreement, resizing and error reporting
(streaming: test_video_stream.py; metadata: test_video_probe.py)."""

from __future__ import annotations

import pickle
import time
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

import vidattn.video as V
from vidattn.video import (
    Clip,
    DecodeConfig,
    VideoDecodeError,
    crop_box,
    decode_of,
    load_clip,
    probe,
    to_model_input,
)

REAL_VIDEO = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    / "activitynet_walking_the_dog.mp4"
)
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
    clip = load_clip(counter, decode_cfg(backend, fps=fps), *segment)
    assert isinstance(clip, Clip) and clip.backend == backend
    np.testing.assert_array_equal(frame_index(clip.frames), np.asarray(expected, dtype=int))
    assert clip.fps == (fps or 25.0) and clip.src_fps == pytest.approx(25.0)


def test_geometry(counter, backend):
    full = load_clip(counter, decode_cfg(backend, short_side=48))
    assert full.frames.shape == (40, 48, 72, 3) and full.frames.dtype == np.uint8
    assert full.src_size == (64, 96) and full.crop_box == (0.0, 0.0, 1.0, 1.0)
    crop = load_clip(counter, decode_cfg(backend, short_side=48, crop=32))
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


def test_variable_frame_rate(tmp_path, backend):
    # Frames alternately shown for 40 and 80 ms: selection must follow the timestamps.
    path, pts = vfr_video(tmp_path / "vfr.mkv")
    clip = load_clip(path, decode_cfg(backend, fps=10.0, short_side=48))
    times_ms = np.arange(len(clip.frames)) * 100
    expected = np.searchsorted(pts, times_ms, side="right") - 1
    assert len(clip.frames) == 18  # (pts[-1] + 40 ms) at 10 fps
    np.testing.assert_array_equal(frame_index(clip.frames), expected)


def test_auto_falls_back_to_pyav(tmp_path):
    # A raw H.264 stream has no container frame count; decord refuses it, PyAV copes.
    frames = np.stack([np.full((48, 64, 3), BASE + STEP * k, np.uint8) for k in range(20)])
    path = encode_video(tmp_path / "raw.h264", frames, 25.0, fmt="h264")
    clip = load_clip(path, DecodeConfig(fps=None, short_side=48, crop=None))
    np.testing.assert_array_equal(frame_index(clip.frames), np.arange(20))
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
        audio_only_file(path)
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
    cfg = decode_cfg(backend)
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
