"""Long clips: windowed Mixed_5c equals a single pass (issue 3's <= 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidattn.extractors.i3d import I3D, I3DConfig, random_init
from vidattn.extractors.two_stream import windowed_forward
from vidattn.video import to_model_input

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> I3D:
    return random_init(I3D(I3DConfig()), seed=3).eval()


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _single_pass(model, frames) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(to_model_input(frames))[None])[0]


@pytest.mark.parametrize("n", [203, 200, 161, 9])
def test_windows_stitch_to_the_single_pass(model, n):
    frames = _frames(n)
    full = _single_pass(model, frames)
    got = windowed_forward(model, frames, window_steps=4, margin_steps=7, device="cpu")
    assert got.shape == full.shape == (1024, -(-n // 8), 1, 1)
    assert (got - full).abs().max().item() <= 1e-4


def test_too_little_context_is_not_exact(model):
    """The margin is what makes it exact: with 2 steps of context the seams show."""
    frames = _frames(203)
    full = _single_pass(model, frames)
    got = windowed_forward(model, frames, window_steps=4, margin_steps=2, device="cpu")
    assert (got - full).abs().max().item() > 1e-3


def test_extractor_takes_uint8_frames(model):
    from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig

    ex = I3DExtractor(I3DExtractorConfig(rgb_weights="random", window_steps=3))
    out = ex(_frames(50))["rgb"]
    assert out.shape == (7, 1, 1, 1024) and out.dtype == np.float32
