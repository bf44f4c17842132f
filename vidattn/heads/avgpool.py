"""Global average pooling + linear: the "I3D" baseline of ActX Tables 1-3.

fmap (B, D, T, H, W) -> mean over (t, h, w) -> dropout -> linear -> logits (B, K).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidattn.heads.common import classification_only

TASK = "classify"  # map -> labels (vidattn/tasks/classify.py)


@dataclass(frozen=True)
class Config:
    in_channels: int = 1024
    num_classes: int = 4
    multilabel: bool = False
    dropout: float = 0.5


class AvgPool(nn.Module):
    uses_conjugates = False
    map_names: tuple[str, ...] = ()

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.in_channels, cfg.num_classes)

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(self.drop(fmap.mean(dim=(2, 3, 4))))}

    def loss(self, out: dict, fmap: torch.Tensor, target: torch.Tensor,
             conj: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        return classification_only(out, target, self.cfg.multilabel)


def build(cfg: Config) -> AvgPool:
    return AvgPool(cfg)
