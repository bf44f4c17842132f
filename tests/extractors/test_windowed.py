"""Long clips: windowed maps equal a single pass (<= 1e-4), chunk by chunk; the padding rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidattn.extractors.i3d import I3D, I3DConfig, random_init
from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig, windowed_forward
from vidattn.extractors.windows import WindowedMaps, pad_to_unit
from vidattn.video import to_model_input

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> I3D:
    return random_init(I3D(I3DConfig()), seed=3).eval()


def _frames(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _padded(frames: np.ndarray, unit: int) -> np.ndarray:
    """The padding rule spelled out: repeat the last frame up to a multiple of ``unit``."""
    extra = pad_to_unit(len(frames), unit) - len(frames)
    return np.concatenate([frames, np.repeat(frames[-1:], extra, axis=0)])


def _single_pass(model, frames, endpoints=("Mixed_5c",)) -> dict[str, torch.Tensor]:
    x = torch.from_numpy(to_model_input(_padded(frames, 8)))[None]
    with torch.no_grad():
        return {e: v[0] for e, v in model.features(x, endpoints).items()}


def _chunks(frames: np.ndarray, seed: int):
    """Split a clip at random points, as a decoder's stream would deliver it."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(frames)), size=min(5, len(frames) - 1),
                              replace=False)) if len(frames) > 1 else []
    return np.split(frames, cuts)


@pytest.mark.parametrize("n", [203, 200, 161, 9])
def test_windows_stitch_to_the_single_pass(model, n):
    frames = _frames(n)
    full = _single_pass(model, frames)["Mixed_5c"]
    got = windowed_forward(model, frames, window_steps=4, margin_steps=7, device="cpu")
    assert got.shape == full.shape == (1024, -(-n // 8), 1, 1)
    # float16 storage: compare at its resolution (values here are O(1))
    assert (got - full).abs().max().item() <= 2e-3 * max(1.0, full.abs().max().item())


def test_stream_of_chunks_and_extra_endpoints_match_the_single_pass(model):
    """Pushed in uneven chunks, with Mixed_4f (T = N/4) kept beside Mixed_5c; compared in
    float32 before the float16 rounding, so the windowing itself is held to 1e-4."""
    frames = _frames(187, seed=1)
    full = _single_pass(model, frames, ("Mixed_4f", "Mixed_5c"))

    def forward(x):
        with torch.no_grad():
            out = model.features(torch.from_numpy(to_model_input(x))[None],
                                 ("Mixed_4f", "Mixed_5c"))
        return {e: v[0] for e, v in out.items()}

    cores = {}

    def spy(x):
        out = forward(x)
        cores.setdefault("calls", []).append(len(x))
        return out

    maps = WindowedMaps(spy, 8, {"Mixed_4f": 4, "Mixed_5c": 8}, window_steps=3, margin_steps=7)
    for chunk in _chunks(frames, seed=2):
        maps.push(chunk)
        # memory bound: never more than a window plus one chunk of frames held
        assert sum(len(c) for c in maps.chunks) <= 8 * (3 + 2 * 7) + len(chunk)
    out = maps.finish()
    assert out["Mixed_5c"].shape == (24, 1, 1, 1024) and out["Mixed_5c"].dtype == np.float16
    assert out["Mixed_4f"].shape == (48, 2, 2, 832)
    for e in ("Mixed_4f", "Mixed_5c"):
        want = full[e].permute(1, 2, 3, 0).numpy()
        np.testing.assert_allclose(out[e].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    assert all(c % 8 == 0 for c in cores["calls"])  # every window a whole number of steps
    assert len(cores["calls"]) == 8  # ceil(24 / 3) windows


def test_window_equality_in_float32(model):
    """The exactness claim itself (<= 1e-4), with float32 cores."""
    frames = _frames(203, seed=4)
    full = _single_pass(model, frames)["Mixed_5c"].permute(1, 2, 3, 0).numpy()

    def forward(x):
        with torch.no_grad():
            return {"Mixed_5c": model(torch.from_numpy(to_model_input(x))[None])[0]}

    maps = WindowedMaps(forward, 8, {"Mixed_5c": 8}, window_steps=4, margin_steps=7,
                        dtype=torch.float32)
    for chunk in _chunks(frames, seed=6):
        maps.push(chunk)
    got = maps.finish()["Mixed_5c"]
    assert got.shape == full.shape and got.dtype == np.float32
    assert np.abs(got - full).max() <= 1e-4


def test_too_little_context_is_not_exact(model):
    """The margin is what makes it exact: with 2 steps of context the seams show."""
    frames = _frames(203)
    full = _single_pass(model, frames)["Mixed_5c"]
    got = windowed_forward(model, frames, window_steps=4, margin_steps=2, device="cpu")
    assert (got - full).abs().max().item() > 1e-2


@pytest.mark.parametrize(("n", "steps"), [(1, 1), (7, 1), (8, 1), (9, 2), (17, 3)])
def test_padding_rule_for_short_clips(model, n, steps):
    """Clips shorter than the receptive field (99 frames) or than a step are padded by
    repeating their last frame to a whole step: ceil(N / 8) steps, never an empty map."""
    frames = _frames(n, seed=n)
    got = windowed_forward(model, frames, window_steps=32, margin_steps=7, device="cpu")
    assert got.shape[1] == steps
    repeated = np.concatenate([frames, np.repeat(frames[-1:], 8 * steps - n, axis=0)])
    with torch.no_grad():
        want = model(torch.from_numpy(to_model_input(repeated))[None])[0]
    assert (got - want).abs().max().item() <= 2e-3 * max(1.0, want.abs().max().item())
    with pytest.raises(ValueError, match="at least one frame"):
        pad_to_unit(0, 8)


def test_extractor_takes_frames_or_chunks():
    ex = I3DExtractor(I3DExtractorConfig(rgb_weights="random", window_steps=3,
                                         endpoints=("Mixed_4f",)))
    assert ex.streams == ("rgb", "rgb_mixed_4f")
    frames = _frames(50)
    whole = ex(frames)
    assert whole["rgb"].shape == (7, 1, 1, 1024) and whole["rgb"].dtype == np.float16
    assert whole["rgb_mixed_4f"].shape == (14, 2, 2, 832)
    streamed = ex(iter(_chunks(frames, seed=5)))
    for a in whole:
        np.testing.assert_array_equal(streamed[a], whole[a])
    only = ex(frames, ("rgb_mixed_4f",))
    assert list(only) == ["rgb_mixed_4f"]


def test_flow_in_chunks_equals_flow_of_the_whole_clip():
    """Each chunk's flow starts from the previous chunk's last frame."""
    ex = I3DExtractor(I3DExtractorConfig(flow_weights="random", streams=("flow",),
                                         flow_method="dis", window_steps=2))
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, k, axis=1) for k in range(21)])
    whole = ex(frames)["flow"]
    streamed = ex(iter(_chunks(frames, seed=8)))["flow"]
    assert whole.shape == (3, 2, 2, 1024)
    # OpenCV's DIS is not quite stateless (a reused estimator differs by ~1e-5 px from a
    # fresh one), so the chunks agree to float16 resolution rather than bit for bit.
    np.testing.assert_allclose(streamed.astype(np.float32), whole.astype(np.float32),
                               rtol=2e-3, atol=1e-4)
    with pytest.raises(ValueError, match="at least 2 frames"):
        ex(frames[:1])


def test_extractor_refuses_bad_settings():
    with pytest.raises(ValueError, match="no flow stream"):
        I3DExtractor(I3DExtractorConfig(backbone="r50", rgb_weights="random",
                                        streams=("rgb", "flow")))
    with pytest.raises(ValueError, match="Mixed_3c, Mixed_4f"):
        I3DExtractor(I3DExtractorConfig(rgb_weights="random", endpoints=("Mixed_4c",)))
    with pytest.raises(ValueError, match="backbone"):
        I3DExtractor(I3DExtractorConfig(rgb_weights="random", backbone="vit"))


def test_r50_windows_equal_its_single_pass():
    """The R50 (symmetric padding, one temporal stride of 2) windows exactly too."""
    from vidattn.extractors import i3d_r50

    ex = I3DExtractor(I3DExtractorConfig(backbone="r50", rgb_weights="random", window_steps=8,
                                         endpoints=("res4",)))
    assert ex.streams == ("rgb_r50", "rgb_r50_res4")
    frames = _frames(61, seed=9)
    out = ex(iter(_chunks(frames, seed=10)))
    model = ex.nets["rgb"].model
    x = torch.from_numpy(i3d_r50.to_model_input(_padded(frames, 2)))[None]
    with torch.no_grad():
        want = model.features(x, ("res4", "res5"))
    assert out["rgb_r50"].shape == (31, 1, 1, 2048)
    for array, e in (("rgb_r50", "res5"), ("rgb_r50_res4", "res4")):
        ref = want[e][0].permute(1, 2, 3, 0).numpy()
        np.testing.assert_allclose(out[array].astype(np.float32), ref, rtol=2e-3,
                                   atol=2e-3 * max(1.0, float(np.abs(ref).max())))
    prov = ex.provenance({"fps": 25.0}, "rgb_r50")
    assert prov["extractor"] == "i3d-r50" and prov["endpoint"] == "res5"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_extraction_matches_cpu_fp32():
    """The GPU path (bf16 autocast, pinned copies) gives the CPU's maps to bf16 precision."""
    frames = _frames(70, size=64)
    cpu = I3DExtractor(I3DExtractorConfig(rgb_weights="random", device="cpu"))(frames)["rgb"]
    gpu = I3DExtractor(I3DExtractorConfig(rgb_weights="random", device="cuda"))(frames)["rgb"]
    assert gpu.shape == cpu.shape
    corr = np.corrcoef(cpu.ravel().astype(np.float64), gpu.ravel().astype(np.float64))[0, 1]
    assert corr > 0.99
