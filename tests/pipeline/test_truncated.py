"""Truncated and partial files: a video that decodes far fewer frames than its container
declares is a failure that says so, unless --keep-partial."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA, write_video

from vidattn.pipeline.extract import ExtractConfig, run
from vidattn.stores import open_store
from vidattn.video import expected_frames

CLIP = SHARED_DATA / "activitynet_walking_the_dog.mp4"


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Two good videos, an empty file, noise named .mp4, and the first 40 KB of a real
    420-frame mp4 (its header declares 14 s; 7 frames decode)."""
    if not CLIP.is_file():
        pytest.skip("the shared ActivityNet clip is missing")
    root = tmp_path / "videos"
    write_video(root / "good_a.mp4", 40)
    write_video(root / "good_b.mp4", 24, fps=12)
    (root / "empty.mp4").write_bytes(b"")
    (root / "noise.mp4").write_bytes(bytes(range(256)) * 64)
    (root / "cut.mp4").write_bytes(CLIP.read_bytes()[: 40 * 1024])
    return root


def test_expected_frames_follow_the_container():
    if not CLIP.is_file():
        pytest.skip("the shared ActivityNet clip is missing")
    assert expected_frames(CLIP, None, None, 25.0) == 350  # 14 s declared
    assert expected_frames(CLIP, 2.0, 4.0, 25.0) == 50
    assert expected_frames(CLIP, 13.0, 20.0, 25.0) == 25  # clipped to the declared end
    assert expected_frames(CLIP, 15.0, 20.0, 25.0) is None


def test_truncated_files_fail_and_say_so(folder, tmp_path):
    res = run(ExtractConfig(dataset="folder", root=str(folder), store=str(tmp_path / "s"),
                            device="cpu", crop="112", short_side=128))
    store = open_store(tmp_path / "s")
    assert sorted(store.video_ids()) == ["good_a", "good_b"]
    idx = store.index("rgb").set_index("video_id")
    failed = idx[idx.status == "failed"]
    assert sorted(failed.index) == ["cut", "empty", "noise"]
    assert "decoded 7 of 350 frames (truncated file?" in failed.error["cut"]
    assert "empty" in failed.error["empty"].lower()
    assert all("\n" not in e and e for e in failed.error)
    assert len(res.failures) == 3
    # knowingly kept: the partial video is stored with the frames that decode
    run(ExtractConfig(dataset="folder", root=str(folder), store=str(tmp_path / "k"),
                      device="cpu", crop="112", short_side=128, keep_partial=True))
    kept = open_store(tmp_path / "k")
    assert "cut" in kept.video_ids()
    assert kept.index("rgb").set_index("video_id").n_frames["cut"] == 7


def _count_frames(chunks, arrays, spill_bytes=None):
    """A stand-in extractor: consumes the frames, returns no maps."""
    for _ in chunks:
        pass
    return {}


def test_a_segment_past_the_decodable_end_fails_alone(tmp_path):
    from vidattn.pipeline.parts import extract_video
    from vidattn.video import DecodeConfig, VideoDecodeError

    if not CLIP.is_file():
        pytest.skip("the shared ActivityNet clip is missing")
    cut = tmp_path / "cut.mp4"
    data = CLIP.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])  # the header still declares 14 s
    decode = DecodeConfig(fps=25.0, short_side=64, crop=64)
    early = {"start_sec": 0.0, "end_sec": 3.0}  # well inside what decodes
    got, _ = extract_video(_count_frames, cut, decode, early, ("rgb",))
    assert got.n_frames == 75 and got.frames_lost == 0
    late = {"start_sec": 6.0, "end_sec": 13.0}  # a conjugate running past the cut
    with pytest.raises(VideoDecodeError, match=r"decoded \d+ of 175 frames \(segment runs "
                                               r"past the decodable end\?"):
        extract_video(_count_frames, cut, decode, late, ("rgb",))
    kept, _ = extract_video(_count_frames, cut, decode, late, ("rgb",), min_decoded=0.0)
    assert 0 < kept.n_frames < 0.9 * 175
