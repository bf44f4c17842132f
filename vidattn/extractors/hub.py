"""pytorchvideo's Kinetics-400 hub backbones, for ``--backbone pytorchvideo:NAME``.

Needs the optional extra ``vidattn[pytorchvideo]`` (torch 2.14.1 + torchvision 0.29.1 +
pytorchvideo 0.1.5, its own venv: see the README).  The network is pytorchvideo's own hub
model (``pytorchvideo.models.hub.NAME(pretrained=False)``) with its checkpoint's weights
loaded; vidattn only cuts it before the head and streams clips through it.

Each model's last stage, ``blocks[:cut]``, is stored as a (T, H, W, D) map at 1/32 of the
frame (the arrays are declared in ``stores/schema.py``)::

    name           array                         D     frames/step  trained clip
    i3d_r50        rgb_ptv_i3d_r50               2048  2            8 x 8
    slow_r50       rgb_ptv_slow_r50              2048  1            8 x 8
    x3d_xs         rgb_ptv_x3d_xs                192   1            4 x 12
    x3d_s          rgb_ptv_x3d_s                 192   1            13 x 6
    x3d_m          rgb_ptv_x3d_m                 192   1            16 x 5
    r2plus1d_r50   rgb_ptv_r2plus1d_r50          2048  4            16 x 4
    csn_r101       rgb_ptv_csn_r101              2048  8            32 x 2
    slowfast_r50   rgb_ptv_slowfast_r50 (slow)   2048  4            32 x 2, alpha 4
                   rgb_ptv_slowfast_r50_fast     256   1

"trained clip" is frames x sampling stride at 30 fps: the checkpoint saw 30 / stride frames
per second, which is the default ``--fps`` of that backbone.  SlowFast's slow pathway takes
every ``alpha``-th frame of the fast one (frames 0, 4, 8, ... of each window, which starts
at a multiple of 4), so both pathways stay aligned however the clip is cut.

Long clips run in windows (``windows.py``) with ``margin`` steps of context each side, at
least the model's temporal receptive half-width (i3d_r50 17 frames, slow_r50 9,
r2plus1d_r50 28, csn_r101 121, slowfast_r50 48; the tests measure it by gradient through
the network with ReLUs and max pools made linear, in float64): the maps equal one pass.
X3D is the exception: its squeeze-excitation blocks average over the whole input, so no
window equals a pass over a longer clip.  X3D maps are computed clip by clip instead, each
clip of the checkpoint's training length (x3d_m: 16 frames), as the model was trained and
as X3D features are usually extracted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidattn.extractors import HUB_PREFIX as PREFIX

INSTALL = ("pip install 'vidattn[pytorchvideo]' in a venv of its own (torch 2.14.1 + "
           "torchvision 0.29.1, about 5.6 GB; see the README)")


@dataclass(frozen=True)
class HubModel:
    """unit: input frames per step of the main map; strides: endpoint -> frames per step;
    cut: ``blocks[:cut]`` is the backbone; clip, sampling: the checkpoint's training clip
    (frames, stride at 30 fps); window: steps per window; margin: steps of context each
    side (None: clip by clip, no context); alpha: SlowFast's slow-pathway frame stride."""

    name: str
    unit: int
    strides: dict
    cut: int
    clip: int
    sampling: int
    window: int
    margin: int | None
    alpha: int = 0

    @property
    def main(self) -> str:
        return next(iter(self.strides))

    @property
    def fps(self) -> float:
        return 30.0 / self.sampling

    @property
    def windows(self) -> tuple[int, int]:
        """(window_steps, margin_steps) for :class:`~vidattn.extractors.windows.WindowedMaps`."""
        if self.margin is None:
            return self.clip // self.unit, 0
        return self.window, self.margin


def _x3d(name: str, clip: int, sampling: int) -> HubModel:
    return HubModel(name, 1, {"res5": 1}, 5, clip, sampling, clip, None)


MODELS: dict[str, HubModel] = {m.name: m for m in (
    HubModel("i3d_r50", 2, {"res5": 2}, 6, 8, 8, 64, 9),
    HubModel("slow_r50", 1, {"res5": 1}, 5, 8, 8, 128, 10),
    _x3d("x3d_xs", 4, 12),
    _x3d("x3d_s", 13, 6),
    _x3d("x3d_m", 16, 5),
    HubModel("r2plus1d_r50", 4, {"res5": 4}, 5, 16, 4, 32, 8),
    HubModel("csn_r101", 8, {"res5": 8}, 5, 32, 2, 32, 16),
    HubModel("slowfast_r50", 4, {"slow": 4, "fast": 1}, 5, 32, 2, 32, 13, alpha=4),
)}


def hub_model(backbone: str) -> HubModel:
    """``pytorchvideo:NAME`` (or NAME) -> its facts; unknown names list the known ones."""
    name = backbone.removeprefix(PREFIX)
    if name not in MODELS:
        raise ValueError(f"unknown pytorchvideo backbone {name!r}; known: "
                         f"{', '.join(PREFIX + n for n in MODELS)}")
    return MODELS[name]


def slug(backbone: str) -> str:
    """The array-name part of a hub backbone: ``pytorchvideo:x3d_m`` -> ``ptv_x3d_m``."""
    return "ptv_" + hub_model(backbone).name


class HubBackbone(nn.Module):
    """A pytorchvideo hub model cut before its head.

    ``features(x, endpoints)``: x (B, 3, N, H, W), N a multiple of ``unit`` -> {endpoint:
    (B, D, N / stride, H/32, W/32)}; SlowFast returns both pathways ("slow", "fast").
    """

    def __init__(self, spec: HubModel, net: nn.Module):
        super().__init__()
        self.spec = spec
        self.blocks = net.blocks[: spec.cut]
        self.in_channels = 3
        self.weights_source = "untrained"
        self.weights_sha256 = ""

    def features(self, x: torch.Tensor, endpoints=None) -> dict[str, torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"{self.spec.name} expects (B, 3, N, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.spec.unit:
            raise ValueError(f"{self.spec.name}: N = {x.shape[2]} frames is not a multiple "
                             f"of {self.spec.unit}")
        y = [x[:, :, :: self.spec.alpha], x] if self.spec.alpha else x
        for block in self.blocks:
            y = block(y)
        maps = dict(zip(self.spec.strides, y)) if self.spec.alpha else {self.spec.main: y}
        return {e: maps[e] for e in (endpoints or maps)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[self.spec.main]


def _import_hub():
    try:
        from pytorchvideo.models import hub
    except ImportError as e:
        raise ImportError(f"--backbone {PREFIX}NAME needs pytorchvideo ({e}); {INSTALL}") \
            from None
    return hub


def _randomise(model: nn.Module) -> None:
    """pytorchvideo zero-initialises each residual branch's last BatchNorm, which makes
    every branch silent; random weights for tests should exercise the whole network."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d) and not m.weight.any():
            m.weight.data.fill_(0.2)


def load_hub(backbone: str, path: str | None, device: str = "cpu",
             trust_checkpoint: bool = False) -> HubBackbone:
    """An eval-mode hub backbone: ``path="random"`` (seeded random weights) or a
    pytorchvideo ``.pyth`` checkpoint (its ``model_state``, or a bare state dict), read with
    ``torch.load(weights_only=True)``.  Every backbone tensor must be in the file; the head's
    tensors are not needed (checkpoints fine-tuned on other classes load too)."""
    spec = hub_model(backbone)
    if path is None:
        raise ValueError(f"{PREFIX}{spec.name}: no weights ship with any package: pass the "
                         f"checkpoint with --ptv-rgb FILE.pyth (pytorchvideo's model zoo), "
                         f"or 'random'")
    hub = _import_hub()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = getattr(hub, spec.name)(pretrained=False)
    model = HubBackbone(spec, net)
    if path == "random":
        _randomise(model)
        model.weights_source = "random(seed=0)"
    else:
        from vidattn.safeload import load_torch, sha256_file

        obj = load_torch(path, trust_checkpoint)
        state = obj.get("model_state", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a pytorchvideo checkpoint (a dict with "
                             f"'model_state'), got {type(obj).__name__}")
        state = {str(k).removeprefix("module."): v for k, v in state.items()}
        wanted = model.state_dict()
        missing = [k for k in wanted if k not in state]
        wrong = [k for k in wanted if k in state and tuple(state[k].shape) != wanted[k].shape]
        if missing or wrong:
            bad = (missing or wrong)[:4]
            raise ValueError(f"{path}: not a {spec.name} checkpoint: {len(missing)} backbone "
                             f"tensors missing, {len(wrong)} of another shape "
                             f"({', '.join(bad)}{', ...' if len(missing or wrong) > 4 else ''})")
        model.load_state_dict({k: state[k] for k in wanted}, strict=True)
        model.weights_source = f"{PREFIX}{spec.name}:{path}"
        model.weights_sha256 = sha256_file(path)
    return model.to(device).eval()
