"""I3D: shapes, TF "SAME" padding and the valid max pools (checkpoint layouts:
test_i3d_weights.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidattn.extractors.i3d import (
    ENDPOINTS,
    I3D,
    MIXED_5C_CHANNELS,
    I3DConfig,
    max_pool_valid,
    same_pad,
)
from vidattn.extractors.i3d_weights import load_i3d

pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: 1 thread is fastest


@pytest.fixture(scope="module")
def random_model() -> I3D:
    return load_i3d("random")


@pytest.fixture(scope="module")
def meta_model() -> I3D:
    """The same graph on the meta device: shapes without the (slow on CPU) arithmetic."""
    with torch.device("meta"):
        return I3D().eval()


# ----------------------------------------------------------------------------- shapes
def _expected(b: int, t: int, h: int, w: int) -> tuple[int, ...]:
    return (b, MIXED_5C_CHANNELS, math.ceil(t / 8), math.ceil(h / 32), math.ceil(w / 32))


def test_mixed_5c_shape_with_random_weights(random_model):
    x = torch.rand(1, 3, 9, 65, 65) * 2 - 1
    with torch.no_grad():
        out = random_model(x)
    assert out.shape == _expected(1, 9, 65, 65) == (1, 1024, 2, 3, 3)
    assert torch.isfinite(out).all()
    assert (out >= 0).all()  # ReLU after every unit
    assert out.abs().sum() > 0


@pytest.mark.parametrize(
    ("b", "t", "h", "w"),
    [(1, 9, 65, 65), (2, 16, 64, 64), (1, 8, 33, 97), (3, 17, 31, 100), (1, 64, 224, 224),
     (1, 1, 1, 1)],
)
def test_mixed_5c_shape_arithmetic(meta_model, b, t, h, w):
    model = meta_model
    assert model(torch.empty(b, 3, t, h, w, device="meta")).shape == _expected(b, t, h, w)
    assert model.classify(torch.empty(b, 3, t, h, w, device="meta")).shape == (b, 400)


def test_features_endpoints_and_input_checks(random_model):
    x = torch.zeros(1, 3, 4, 16, 16)
    with torch.no_grad():
        feats = random_model.features(x, endpoints=("Conv3d_1a_7x7", "Mixed_3b"))
    assert set(feats) == {"Conv3d_1a_7x7", "Mixed_3b"}
    assert feats["Conv3d_1a_7x7"].shape == (1, 64, 2, 8, 8)
    assert feats["Mixed_3b"].shape == (1, 256, 2, 2, 2)
    assert ENDPOINTS[-1] == "Mixed_5c"
    with pytest.raises(ValueError, match="unknown I3D endpoints"):
        random_model.features(x, endpoints=("Mixed_9z",))
    with pytest.raises(ValueError, match=r"expects \(B, 3, T, H, W\)"):
        random_model(torch.zeros(1, 2, 8, 32, 32))
    with pytest.raises(ValueError, match="modality"):
        I3D(I3DConfig(modality="depth"))


# ----------------------------------------------------------------------- TF SAME padding
def _tf_same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's rule: out = ceil(in / s); total pad split with the extra pixel after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("size", [7, 8, 15, 16, 65])
def test_same_pad_matches_tensorflow(k, s, size):
    x = torch.randn(1, 1, size, size + 1, 3)
    y = same_pad(x, (k, k, 1), (s, s, 1), value=-7.0)
    for dim, n in ((2, size), (3, size + 1)):
        before, after = _tf_same_pads(n, k, s)
        assert y.shape[dim] == n + before + after
        # the original sits at offset ``before``; padded cells hold the pad value
        core = y.narrow(dim, before, n)
        if dim == 2:
            core = core.narrow(3, _tf_same_pads(size + 1, k, s)[0], size + 1)
        else:
            core = core.narrow(2, _tf_same_pads(size, k, s)[0], size)
        assert torch.equal(core, x)
        if before:
            assert (y.narrow(dim, 0, before) == -7.0).all()
        if after:
            assert (y.narrow(dim, y.shape[dim] - after, after) == -7.0).all()
    assert y.shape[4] == 3  # kernel 1, stride 1: untouched
    conv = F.conv3d(y, torch.ones(1, 1, k, k, 1), stride=(s, s, 1))
    assert conv.shape[2:] == (math.ceil(size / s), math.ceil((size + 1) / s), 3)


def test_same_pad_asymmetric_examples():
    # kernel 3 stride 2 on an even size pads one cell, after; on an odd size one each side
    assert same_pad(torch.zeros(1, 1, 1, 1, 64), (1, 1, 3), (1, 1, 2)).shape[-1] == 65
    y = same_pad(torch.ones(1, 1, 1, 1, 64), (1, 1, 3), (1, 1, 2))
    assert y[..., 0].item() == 1 and y[..., -1].item() == 0
    y = same_pad(torch.ones(1, 1, 1, 1, 65), (1, 1, 3), (1, 1, 2))
    assert y.shape[-1] == 67 and y[..., 0].item() == 0 and y[..., -1].item() == 0
    # kernel 7 stride 2: 64 -> total 5 = 2 before + 3 after
    y = same_pad(torch.ones(1, 1, 1, 1, 64), (1, 1, 7), (1, 1, 2))
    assert y.shape[-1] == 69
    assert y[0, 0, 0, 0, :2].tolist() == [0, 0] and y[0, 0, 0, 0, 2].item() == 1
    assert y[0, 0, 0, 0, -3:].tolist() == [0, 0, 0] and y[0, 0, 0, 0, -4].item() == 1
    x = torch.zeros(1, 1, 4, 4, 4)
    assert same_pad(x, (1, 1, 1), (2, 2, 2)) is x  # nothing to pad: no copy


@pytest.mark.parametrize("kernel,stride", [
    ((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)),
    ((3, 3, 3), (1, 1, 1)), ((1, 1, 1), (1, 1, 1)), ((2, 3, 1), (1, 3, 2)), ((3, 1, 2), (3, 1, 1)),
])
@pytest.mark.parametrize(
    "shape", [(2, 3, 7, 9, 10), (1, 4, 3, 3, 3), (1, 2, 8, 5, 6), (1, 2, 2, 5, 6)])
def test_max_pool_valid_equals_max_pool3d_bit_for_bit(kernel, stride, shape):
    g = torch.Generator().manual_seed(sum(kernel) * 31 + sum(shape))
    x = torch.randn(shape, generator=g) * 10  # negative values too
    x[0, 0, 0, 0, :2] = float("-inf")  # as TF SAME padding leaves them
    x[0, -1, -1] = 3.0  # ties
    if any(n < k for n, k in zip(shape[2:], kernel)):
        with pytest.raises(ValueError, match="max pool"):
            max_pool_valid(x, kernel, stride)
        return
    want = F.max_pool3d(x, kernel, stride)
    before = x.clone()
    got = max_pool_valid(x, kernel, stride)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want)
    assert torch.equal(x, before)  # the maxima accumulate in place, never in x
    # a non-contiguous input (as a slice of a held buffer would be) gives the same
    wide = torch.cat([x, x], dim=2)[:, :, : shape[2]]
    assert torch.equal(max_pool_valid(wide, kernel, stride), want)
