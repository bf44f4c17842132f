"""``vidattn classify VIDEO``: Kinetics-400 top-k with I3D's own logits head."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import torch


@dataclass(frozen=True)
class ClassifyConfig:
    video: str
    i3d_rgb: str | None = None
    start: float | None = None
    end: float | None = None
    top: int = 5
    device: str = "auto"


def kinetics400_labels() -> list[str]:
    """The 400 class names in the order of the I3D logits (alphabetical)."""
    text = resources.files("vidattn").joinpath("data/kinetics400_labels.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def run(cfg: ClassifyConfig) -> list[tuple[str, float]]:
    """Decode at 25 fps, short side 256, centre crop 224 (DeepMind's evaluation) -> top-k."""
    from vidattn.extractors.i3d_weights import load_i3d
    from vidattn.tasks.rundir import pick_device
    from vidattn.video import DecodeConfig, load_clip, to_model_input

    device = pick_device(cfg.device)
    model = load_i3d(cfg.i3d_rgb, "rgb", device)
    labels = kinetics400_labels()
    if model.cfg.num_classes != len(labels):
        labels = [f"class {i}" for i in range(model.cfg.num_classes)]
    clip = load_clip(cfg.video, DecodeConfig(), cfg.start, cfg.end)
    x = torch.from_numpy(to_model_input(clip.frames))[None].to(device)
    with torch.no_grad():
        probs = model.classify(x).softmax(-1)[0].cpu()
    top = probs.topk(min(cfg.top, len(labels)))
    return [(labels[i], float(p)) for p, i in zip(top.values, top.indices)]
