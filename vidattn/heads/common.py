"""Pieces every head shares: the classification loss and the head contract.

A head is an ``nn.Module`` built by ``build(cfg)`` from its frozen ``Config`` with:

- ``forward(fmap)``: fmap (B, D, T, H, W) -> dict with "logits" (B, K) and, for heads with
  attention, one (B, T, H, W) map per name in ``map_names``;
- ``loss(out, fmap, target, conj=None)`` -> (scalar loss, {term: float});
- ``uses_conjugates``: whether training should pass the conjugate clip's map as ``conj``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, target: torch.Tensor,
                        multilabel: bool) -> torch.Tensor:
    """BCE on a (B, K) multi-hot target, or cross-entropy on (B,) class indices."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target)
