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


def classification_only(out: dict, target: torch.Tensor,
                        multilabel: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """The whole ``loss`` of heads without auxiliary terms: (L_c, {"L_c": value})."""
    l_c = classification_loss(out["logits"], target, multilabel)
    return l_c, {"L_c": l_c.item()}


def mature_feature_loss(student: torch.Tensor, teacher: torch.Tensor,
                        rms: bool = False) -> torch.Tensor:
    """W3's mature-feature-guided regularisation, eq. (9): ||y_Q - y_P||_2 per frame,
    averaged over (B, T) (the paper leaves the reduction open).

    student, teacher: attended maps (B, D, T, H, W) of identical architectures; the teacher is
    frozen.  ``rms``: divide each norm by sqrt(D*H*W), so the term does not grow with the map
    size (on 7 x 7 x 1024 maps it is then 224 times weaker than eq. 9).
    """
    diff = (student - teacher.detach()).transpose(1, 2).flatten(2)  # (B, T, D*H*W)
    norm = diff.norm(dim=2)
    return (norm / diff.shape[2] ** 0.5 if rms else norm).mean()
