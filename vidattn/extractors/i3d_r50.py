"""I3D ResNet-50 (pytorchvideo's ``i3d_r50``, SlowFast zoo ``I3D_8x8_R50.pyth``) in plain PyTorch.

The network is the one pytorchvideo's ``create_resnet`` builds for the ``i3d_r50`` hub entry
(Kinetics-400, 8 frames at stride 8, 224x224 crops), and its ``state_dict()`` keys and shapes
are exactly that model's, so the checkpoint loads as it is::

    blocks.0   stem: conv (64, 3, 5, 7, 7) stride (1, 2, 2) pad (2, 3, 3), norm, ReLU,
               max pool (1, 3, 3) stride (1, 2, 2) pad (0, 1, 1)           -> blocks.0.conv.weight
    blocks.1   res2: 3 bottlenecks 64 -> 256, conv_a (3, 1, 1) in every block
    blocks.2   temporal max pool (2, 1, 1) stride (2, 1, 1), no parameters
    blocks.3   res3: 4 bottlenecks -> 512,  conv_a (3,1,1), (1,1,1), (3,1,1), (1,1,1)
    blocks.4   res4: 6 bottlenecks -> 1024, conv_a (3,1,1), (1,1,1), ... alternating
    blocks.5   res5: 3 bottlenecks -> 2048, conv_a (1,1,1), (3,1,1), (1,1,1)
    blocks.6   head: avg pool (4, 7, 7) stride 1, dropout 0.5, proj Linear(2048, classes),
               mean over the remaining (t, h, w)                          -> blocks.6.proj.weight

A bottleneck ``blocks.i.res_blocks.j`` is ``branch2.conv_a`` (temporal kernel, padding k//2)
-> ``norm_a`` -> ReLU -> ``branch2.conv_b`` (1, 3, 3), which carries the spatial stride 2 in
the first block of res3-res5 -> ``norm_b`` -> ReLU -> ``branch2.conv_c`` (1, 1, 1) ->
``norm_c``; plus the shortcut (``branch1_conv`` 1x1x1 with the block's stride and
``branch1_norm`` in each stage's first block, identity elsewhere), sum, ReLU.  No conv has a
bias; BatchNorm eps 1e-5, momentum 0.1.  No temporal stride anywhere except ``blocks.2``.

Why not pytorchvideo: ``pytorchvideo.models`` imports ``torchvision`` (``head.py`` needs
``torchvision.ops.RoIAlign``) and ``fvcore``; vidattn never installs torchvision, so this
module re-implements the same network with the same key layout.  That is the supported way to
run this checkpoint here.

Input: RGB clips normalised with SlowFast's ``DATA.MEAN``/``DATA.STD`` (0.45 / 0.225 per
channel on [0, 1] pixels), see :func:`to_model_input`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidattn.video import check_rgb_frames

ENDPOINTS = ("res2", "res3", "res4", "res5")
CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
# endpoint -> index in ``blocks`` (blocks.2 is the parameter-free temporal pool)
_BLOCK_OF = {"res2": 1, "res3": 3, "res4": 4, "res5": 5}
HEAD_INDEX = 6
HEAD_POOL = (4, 7, 7)  # 8 frames // 2, 224 // 32, 224 // 32
MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)
LAYOUT = "pytorchvideo-r50"

# (blocks index, depth, inner width, out width, spatial stride, conv_a temporal kernels cycled)
_STAGES = (
    (1, 3, 64, 256, 1, (3,)),
    (3, 4, 128, 512, 2, (3, 1)),
    (4, 6, 256, 1024, 2, (3, 1)),
    (5, 3, 512, 2048, 2, (1, 3)),
)


@dataclass(frozen=True)
class R50Config:
    num_classes: int = 400
    bn_eps: float = 1e-5  # pytorchvideo's default; BN momentum is 0.1


def out_steps(n_frames: int) -> int:
    """Time steps T' of res3-res5 (and res5 = ``forward``) for a clip of ``n_frames``.

    The only temporal stride is the (2, 1, 1) max pool after res2 (no padding), so
    T' = n_frames // 2 (res2 keeps all n_frames).  At least 2 frames are needed.
    """
    if n_frames < 2:
        raise ValueError(f"I3D R50 needs at least 2 frames (temporal pool of 2), got {n_frames}")
    return n_frames // 2


def _bn(channels: int, eps: float) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=eps, momentum=0.1)


class _Stem(nn.Module):
    """(B, 3, T, H, W) -> (B, 64, T, ceil(H/4), ceil(W/4))."""

    def __init__(self, eps: float):
        super().__init__()
        self.conv = nn.Conv3d(3, 64, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False)
        self.norm = _bn(64, eps)
        self.pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x)), inplace=True))


class _Bottleneck(nn.Module):
    """conv_a (kt, 1, 1) -> conv_b (1, 3, 3) with the spatial stride -> conv_c (1, 1, 1)."""

    def __init__(self, cin: int, inner: int, cout: int, kt: int, stride: int, eps: float):
        super().__init__()
        self.conv_a = nn.Conv3d(cin, inner, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.norm_a = _bn(inner, eps)
        self.conv_b = nn.Conv3d(
            inner, inner, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False
        )
        self.norm_b = _bn(inner, eps)
        self.conv_c = nn.Conv3d(inner, cout, 1, bias=False)
        self.norm_c = _bn(cout, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm_a(self.conv_a(x)), inplace=True)
        x = F.relu(self.norm_b(self.conv_b(x)), inplace=True)
        return self.norm_c(self.conv_c(x))


class _ResBlock(nn.Module):
    """relu(shortcut(x) + branch2(x)); the shortcut projects only when shape changes."""

    def __init__(self, cin: int, inner: int, cout: int, kt: int, stride: int, eps: float):
        super().__init__()
        if cin != cout or stride != 1:
            self.branch1_conv = nn.Conv3d(cin, cout, 1, (1, stride, stride), bias=False)
            self.branch1_norm = _bn(cout, eps)
        else:
            self.branch1_conv = self.branch1_norm = None
        self.branch2 = _Bottleneck(cin, inner, cout, kt, stride, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch2(x)
        if self.branch1_conv is not None:
            x = self.branch1_norm(self.branch1_conv(x))
        return F.relu(x + y, inplace=True)


class _Stage(nn.Module):
    def __init__(self, depth: int, cin: int, inner: int, cout: int, stride: int,
                 kernels: tuple[int, ...], eps: float):
        super().__init__()
        self.res_blocks = nn.ModuleList(
            _ResBlock(cin if i == 0 else cout, inner, cout, kernels[i % len(kernels)],
                      stride if i == 0 else 1, eps)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class _Head(nn.Module):
    """pytorchvideo's ResNetBasicHead without output activation: (B, 2048, t, h, w) -> logits."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.proj = nn.Linear(2048, num_classes)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        # The checkpoint's window is 4x7x7 (8 frames, 224 px); smaller maps use what they have.
        kernel = tuple(min(k, s) for k, s in zip(HEAD_POOL, fmap.shape[2:]))
        x = self.dropout(F.avg_pool3d(fmap, kernel, stride=1))
        x = self.proj(x.permute(0, 2, 3, 4, 1))  # (B, t, h, w, classes)
        return x.mean(dim=(1, 2, 3))


class I3DR50(nn.Module):
    """I3D R50 backbone; ``forward`` returns res5, ``classify`` the checkpoint's logits."""

    def __init__(self, cfg: R50Config = R50Config()):
        super().__init__()
        self.cfg = cfg
        self.in_channels = 3
        blocks: list[nn.Module] = [_Stem(cfg.bn_eps)]
        cin = 64
        for index, depth, inner, cout, stride, kernels in _STAGES:
            assert index == len(blocks)
            blocks.append(_Stage(depth, cin, inner, cout, stride, kernels, cfg.bn_eps))
            cin = cout
            if index == 1:
                blocks.append(nn.MaxPool3d((2, 1, 1), (2, 1, 1), (0, 0, 0)))
        blocks.append(_Head(cfg.num_classes))
        self.blocks = nn.ModuleList(blocks)
        # Filled by the loaders, recorded in the store's provenance.
        self.weights_source = "untrained"
        self.weights_sha256 = ""

    def features(
        self, x: torch.Tensor, endpoints: Iterable[str] = ("res5",)
    ) -> dict[str, torch.Tensor]:
        """Run up to the last requested endpoint of x (B, 3, T, H, W), T >= 2.

        Returns {endpoint: map}: res2 (B, 256, T, H/4, W/4), res3 (B, 512, T//2, H/8, W/8),
        res4 (B, 1024, T//2, H/16, W/16), res5 (B, 2048, T//2, H/32, W/32), sizes rounded up.
        """
        endpoints = (endpoints,) if isinstance(endpoints, str) else tuple(endpoints)
        unknown = [e for e in endpoints if e not in ENDPOINTS]
        if unknown or not endpoints:
            raise ValueError(f"unknown I3D R50 endpoints {unknown}; known: {ENDPOINTS}")
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"I3D R50 expects (B, 3, T, H, W), got {tuple(x.shape)}")
        out_steps(x.shape[2])  # raises for clips shorter than the temporal pool
        wanted = {_BLOCK_OF[e]: e for e in endpoints}
        out = {}
        for i in range(max(wanted) + 1):
            x = self.blocks[i](x)
            if i in wanted:
                out[wanted[i]] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> res5 (B, 2048, T//2, ceil(H/32), ceil(W/32))."""
        return self.features(x)["res5"]

    def logits_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """Checkpoint head on a res5 map (B, 2048, t, h, w) -> (B, num_classes) logits.

        Avg pool 4x7x7 stride 1 (clamped to the map), proj, mean over positions: exactly
        pytorchvideo's hub head, which has no output activation.  These are pre-softmax
        logits (SlowFast's own evaluation applies softmax before the mean; for an 8x224x224
        clip the map pools to one position and the two agree up to the softmax).
        """
        return self.blocks[HEAD_INDEX](fmap)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) clip -> (B, num_classes) pre-activation logits."""
        return self.logits_from_map(self(x))


def random_init(model: I3DR50, seed: int = 0) -> I3DR50:
    """Seeded random weights, reproducible anywhere: He-normal (fan-in) convs, identity BN
    statistics with gamma 1, except 0.2 on each bottleneck's last BN (``norm_c``) so the 16
    residual additions do not blow up; the head is N(0, 0.01^2) with zero bias.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(m, nn.BatchNorm3d):
                m.weight.fill_(0.2 if name.endswith("norm_c") else 1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.num_batches_tracked.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
                m.bias.zero_()
    model.weights_source = f"random(seed={seed})"
    model.weights_sha256 = ""
    return model


def to_model_input(frames: np.ndarray) -> np.ndarray:
    """(N, h, w, 3) uint8 RGB -> (3, N, h, w) float32 ``(x / 255 - MEAN) / STD``, C-contiguous."""
    check_rgb_frames(frames, "to_model_input")
    x = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)
    x /= 255.0
    x -= np.asarray(MEAN, np.float32)[:, None, None, None]
    x /= np.asarray(STD, np.float32)[:, None, None, None]
    return x


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")


def _state_from(obj: object, path: str) -> dict:
    """The model state of a .pyth dict (``model_state``), a bare state dict or (trusted
    loads only) a whole pickled module, minus ``module.``."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    state = obj.get("model_state", obj) if isinstance(obj, dict) else None
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ValueError(
            f"{path}: expected the {LAYOUT} layout (checkpoint['model_state'] with blocks.* "
            f"keys, or a bare state dict), got {type(obj).__name__}"
        )
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_r50(path: str | None, device: str = "cpu", trust_checkpoint: bool = False) -> I3DR50:
    """An eval-mode I3D R50.  ``path="random"``: seeded random weights; otherwise a
    pytorchvideo/SlowFast checkpoint (``I3D_8x8_R50.pyth``) or a bare state dict, read with
    ``torch.load(weights_only=True)``; a pickle of arbitrary objects is refused unless
    ``trust_checkpoint`` (then loaded fully, with a warning: see safeload.py).  The head is
    sized from ``blocks.6.proj.weight``; BatchNorm ``num_batches_tracked`` counters may be
    absent (as ``load_state_dict`` allows).
    """
    if path is None:
        raise ValueError(
            "no packaged I3D R50 weights exist: pass a checkpoint path "
            "(e.g. I3D_8x8_R50.pyth) or 'random'"
        )
    if path == "random":
        return random_init(I3DR50()).to(device).eval()
    from vidattn.safeload import load_torch, sha256_file

    obj = load_torch(path, trust_checkpoint)  # names the file in every error
    state = _state_from(obj, path)
    head = state.get(f"blocks.{HEAD_INDEX}.proj.weight")
    num_classes = head.shape[0] if isinstance(head, torch.Tensor) and head.ndim == 2 else 400
    with torch.device("meta"):  # no time spent on an init that the checkpoint overwrites
        model = I3DR50(R50Config(num_classes=num_classes))
    expected = model.state_dict()
    for k in expected:
        if k.endswith("num_batches_tracked"):
            state.setdefault(k, torch.zeros((), dtype=torch.long))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{path}: expected the {LAYOUT} layout (checkpoint['model_state'] with blocks.* "
            f"keys); {len(missing)} missing [{_first(missing)}], "
            f"{len(unexpected)} unexpected [{_first(unexpected)}]"
        )
    for k, v in expected.items():
        value = state[k]
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        if got != tuple(v.shape):
            raise ValueError(
                f"{path}: {LAYOUT} tensor {k} has shape {got}, expected {tuple(v.shape)}"
            )
    model.to_empty(device="cpu").load_state_dict(state, strict=True)  # every tensor is set
    model.weights_source = f"{LAYOUT}:{path}"
    model.weights_sha256 = sha256_file(path)
    return model.to(device).eval()
