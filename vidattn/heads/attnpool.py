"""Attentional pooling (Girdhar & Ramanan, NeurIPS 2017), rank-1 form: "Attentional" of ActX.

With X the (n x D) matrix of the n = T*H*W feature vectors of a clip, a class-agnostic
bottom-up vector b (D) and one class-specific top-down vector a_k (D) per class, the paper
scores class k as

    score_k(X) = (X a_k)^T (X b) = sum_i (x_i . a_k)(x_i . b),

i.e. the top-down map of class k weighted by the bottom-up saliency map and summed over
voxels; equivalently tr(a_k b^T X^T X), a rank-1 approximation of bilinear (second-order)
pooling, which is why the score does not depend on the order of the voxels.

Deviations and choices (the paper works on single images with a fixed map size):

- mean, not sum, over voxels: score_k = (1/n) (X a_k)^T (X b) + c_k.  Clips give maps of
  different T (and H, W when cropped differently); a sum would scale the logits with n.
- a per-class bias c_k on the score, as any linear classifier has.
- a scalar bias b0 on the bottom-up map, bottom_up = X b + b0.  It is the rank-1 form on the
  augmented features [x_i, 1] (the constant feature a bias stands for), so nothing of the
  model changes except that b0 makes the initialisation below possible.
- initialisation b = 0, b0 = ``bottom_up_init`` (1): the bottom-up map starts constant, so
  score_k = a_k . mean_i(x_i) + c_k, exactly the average-pooling linear classifier, with a_k
  initialised like nn.Linear's weight.  With a_k and b both small and random the score is a
  product of two small numbers and the gradient of each factor is scaled by the other:
  training starts in a flat region and, on 1024-d features, needs many steps to leave it.
  Starting from average pooling instead gives the a_k a full-size gradient from the first
  step, and b a non-zero one too, d score_k / d b = (1/n) sum_i (x_i . a_k) x_i, so the
  bottom-up saliency is learnt away from uniform only as far as it helps.
- dropout on X (the config's ``dropout``), one mask shared by both projections: the same
  dropped x_i enters both factors, so the score stays of the rank-1 form above.

Maps: "bottom_up" = X b + b0 and "top_down" = X a_k of the arg-max class (for multi-label
training too: the highest-scoring class), both (B, T, H, W).  Loss: classification only.
"""

from __future__ import annotations

import math
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
    bottom_up_init: float = 1.0  # initial constant bottom-up map (b0, with b = 0)
    dropout: float = 0.5


class AttnPool(nn.Module):
    """Rank-1 attentional pooling: top-down (per class) x bottom-up (shared) maps, averaged."""

    uses_conjugates = False
    map_names: tuple[str, ...] = ("bottom_up", "top_down")

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d, k = cfg.in_channels, cfg.num_classes
        self.top_down = nn.Parameter(torch.empty(k, d))  # rows a_k
        self.bottom_up = nn.Parameter(torch.zeros(d))  # b
        self.bottom_up_bias = nn.Parameter(torch.tensor(float(cfg.bottom_up_init)))  # b0
        self.bias = nn.Parameter(torch.empty(k))  # c_k
        self.drop = nn.Dropout(cfg.dropout)
        # nn.Linear's default init for (a_k, c_k): with the constant bottom-up map the head
        # is then initialised exactly like the avgpool baseline's classifier.
        bound = 1 / math.sqrt(d)
        nn.init.uniform_(self.top_down, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def maps(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bottom-up (B, T, H, W) and all top-down maps (B, K, T, H, W) of (dropped) F.

        fmap (B, D, T, H, W).  Dropout is applied once, here, so both maps see the same X.
        """
        x = self.drop(fmap)
        bottom = torch.einsum("bdthw,d->bthw", x, self.bottom_up) + self.bottom_up_bias
        top = torch.einsum("bdthw,kd->bkthw", x, self.top_down)
        return bottom, top

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        """fmap (B, D, T, H, W) -> {"logits": (B, K), "bottom_up", "top_down": (B, T, H, W)}.

        logits_k = mean_i top_k[i] * bottom[i] + c_k over the n = T*H*W voxels i.
        """
        bottom, top = self.maps(fmap)
        n = bottom[0].numel()
        logits = torch.einsum("bkthw,bthw->bk", top, bottom) / n + self.bias
        # The top-down map shown is that of the predicted class; index on a detached arg-max
        # (it is a selection, not something to differentiate through).
        pick = logits.detach().argmax(dim=1)
        top_pred = top[torch.arange(top.shape[0], device=top.device), pick]
        return {"logits": logits, "bottom_up": bottom, "top_down": top_pred}

    def loss(self, out: dict, fmap: torch.Tensor, target: torch.Tensor,
             conj: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Classification loss only; target (B,) indices or (B, K) multi-hot; conj is ignored."""
        return classification_only(out, target, self.cfg.multilabel)


def build(cfg: Config) -> AttnPool:
    return AttnPool(cfg)
