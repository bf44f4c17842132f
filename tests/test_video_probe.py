"""vidattn.video_probe: a video's metadata without decoding pixels, and the file checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA, write_video

from vidattn.video import VideoDecodeError, expected_frames, probe

REAL_VIDEO = SHARED_DATA / "activitynet_walking_the_dog.mp4"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """40 frames at 25 fps, 64x48 (w x h): 1.6 s."""
    path = tmp_path_factory.mktemp("probe") / "clip.mp4"
    write_video(path, 40, fps=25)
    return path


def test_probe_reads_rate_count_size_and_duration(clip):
    info = probe(clip)
    assert info["fps"] == pytest.approx(25.0) and info["n_frames"] == 40
    assert (info["width"], info["height"]) == (64, 48)
    assert info["duration"] == pytest.approx(1.6, abs=0.05)


def test_expected_frames_clip_the_segment_to_the_declared_duration(clip):
    assert expected_frames(clip, None, None, 25.0) == 40
    assert expected_frames(clip, 0.4, 1.0, 25.0) == 15
    assert expected_frames(clip, 1.0, 9.0, 10.0) == 6  # ends at 1.6 s, not at 9 s
    assert expected_frames(clip, 2.0, 3.0, 25.0) is None  # after the end


@pytest.mark.parametrize("kind, reason", [("missing", "file not found"),
                                          ("dir", "not a regular file"),
                                          ("empty", "file is empty"),
                                          ("garbage", "cannot read video")])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.mp4"
    if kind == "dir":
        path.mkdir()
    elif kind == "empty":
        path.touch()
    elif kind == "garbage":
        path.write_bytes(b"not a video at all " * 64)
    with pytest.raises(VideoDecodeError) as err:
        probe(path)
    msg = str(err.value)
    assert str(path) in msg and reason in msg and "\n" not in msg


def test_real_video_probe():
    if not REAL_VIDEO.is_file():
        pytest.skip(f"real sample video not present at {REAL_VIDEO.resolve()}")
    info = probe(REAL_VIDEO)
    assert (info["width"], info["height"]) == (480, 360)
    assert info["fps"] == pytest.approx(30.0, abs=0.1)
    assert info["n_frames"] > 0 and info["duration"] > 2.0
