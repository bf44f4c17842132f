"""ACF: action-context factorisation (Wang & Hoai, CVPR 2018) as the ActX paper's baseline.

ActX (``shared/papers/000_...``, Sec. 4.1, Table 1): "ACF is the approach of [13] where
L_sim^action and L_diff^context are defined based on cosine distance between globally pooled
feature vectors."  The original ACF trains two feature-extraction networks, one for the action
and one for the context; on cached I3D maps those networks become two learned transforms of F:

- theta_a(F) = relu(F + conv_a(F)),  theta_c(F) = relu(F + conv_c(F))   (ActX's theta form);
- f_a = mean_{t,h,w} theta_a(F),  f_c = mean_{t,h,w} theta_c(F)          (B, D) each;
- h = linear(dropout([f_a, f_c]))                                         (B, K).

With a conjugate map F' (any T', H', W'), f_a' and f_c' come from the same two branches and

- L_s = mean_b sim(f_a, f_a')  with sim(x, z) = max(0, cos<x, z> - xi)  (ActX's sim, eq. 3):
  the action features of a clip and of its conjugate should NOT be alike;
- L_d = mean_b diff(f_c, f_c') with diff(x, z) = 1 - cos<x, z>          (ActX's diff, eq. 4):
  the context features of a clip and of its conjugate should match;
- L = L_c + lambda_s L_s + lambda_d L_d, the same weighting as ActX's eq. (1).

The loss parts are named "L_c", "L_s", "L_d" so training curves line up with ActX's.

Defaults are ActX's (imported from its Config, so the two stay in step): xi = 0.5 and unit
lambdas.  The margin matters more here than in ActX: pooled post-ReLU vectors are
non-negative, so their cosine is rarely far below 1; with xi = 0.5 the action branch is pushed
away from the conjugate only until the two are "half" alike, not towards orthogonality, which
would fight the classification loss for the features both clips genuinely share.

Both convs start at zero, so each branch starts as the identity (F is non-negative, hence
relu(F) = F) and the head starts as average pooling with the pooled vector fed twice; the
conjugate losses are what make the two branches diverge.

Shapes: F is (B, D, T, H, W); f_a, f_c are (B, D); logits (B, K).  ACF has no spatial
attention, so ``map_names`` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidattn.heads.actx import Config as ActXConfig
from vidattn.heads.common import classification_loss

TASK = "classify"  # map -> labels (vidattn/tasks/classify.py)


@dataclass(frozen=True)
class Config:
    in_channels: int = 1024
    num_classes: int = 4
    multilabel: bool = False
    xi: float = ActXConfig.xi  # margin of sim(): action cosines below xi cost nothing
    lambda_s: float = ActXConfig.lambda_s  # weight of L_s (action features unlike conjugate's)
    lambda_d: float = ActXConfig.lambda_d  # weight of L_d (context features like conjugate's)
    theta_kernel: int = 1  # kernel of conv_a / conv_c; 1 keeps ~1M parameters per branch
    dropout: float = 0.5


def sim(x: torch.Tensor, z: torch.Tensor, xi: float) -> torch.Tensor:
    """ActX's sim of eq. (3) per row: max(0, cos<x, z> - xi).  x, z (B, D) -> (B,)."""
    return (F.cosine_similarity(x, z, dim=1) - xi).clamp(min=0)


def diff(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """ActX's diff of eq. (4) per row: 1 - cos<x, z>.  x, z (B, D) -> (B,)."""
    return 1 - F.cosine_similarity(x, z, dim=1)


class ResidualTransform(nn.Module):
    """theta(F) = relu(F + conv3d(F)), starting as the identity on non-negative maps.

    (B, D, T, H, W) -> (B, D, T, H, W); the kernel is odd and padded so the size is kept.
    """

    def __init__(self, channels: int, kernel: int = 1):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"theta_kernel must be odd to keep the map's size, got {kernel}")
        self.conv = nn.Conv3d(channels, channels, kernel, padding=kernel // 2)
        # Zero init: the residual path carries F unchanged, so training starts from the
        # average-pooling baseline instead of from a random projection of the I3D features.
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.relu(fmap + self.conv(fmap))


class ACF(nn.Module):
    """Two-branch (action, context) head on a cached feature map, trained with conjugates."""

    uses_conjugates = True
    map_names: tuple[str, ...] = ()

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.in_channels
        self.theta_a = ResidualTransform(d, cfg.theta_kernel)
        self.theta_c = ResidualTransform(d, cfg.theta_kernel)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(2 * d, cfg.num_classes)

    def features(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Globally pooled action and context features: (B, D, T, H, W) -> f_a, f_c (B, D)."""
        f_a = self.theta_a(fmap).mean(dim=(2, 3, 4))
        f_c = self.theta_c(fmap).mean(dim=(2, 3, 4))
        return f_a, f_c

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        """fmap (B, D, T, H, W) -> {"logits": (B, K), "f_a": (B, D), "f_c": (B, D)}.

        The pooled features are returned so ``loss`` reuses them rather than running both
        branches over the action map a second time.
        """
        f_a, f_c = self.features(fmap)
        logits = self.fc(self.drop(torch.cat([f_a, f_c], dim=1)))
        return {"logits": logits, "f_a": f_a, "f_c": f_c}

    def conjugate_losses(self, f_a: torch.Tensor, f_c: torch.Tensor,
                         conj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_s, L_d), batch means.  f_a, f_c (B, D) of the clips; conj (B, D, T', H', W').

        Global pooling removes the need for ActX's soft matching: pooled vectors of maps of
        any size are directly comparable.
        """
        g_a, g_c = self.features(conj)
        return sim(f_a, g_a, self.cfg.xi).mean(), diff(f_c, g_c).mean()

    def loss(self, out: dict, fmap: torch.Tensor, target: torch.Tensor,
             conj: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """L_c, plus lambda_s L_s + lambda_d L_d when the conjugates' maps are given.

        out: this head's forward on ``fmap``; target (B,) indices or (B, K) multi-hot;
        conj (B, D, T', H', W') or None.  Returns (scalar loss, {"L_c", ["L_s", "L_d"]}).
        """
        cfg = self.cfg
        l_c = classification_loss(out["logits"], target, cfg.multilabel)
        parts = {"L_c": l_c.item()}
        if conj is None:
            return l_c, parts
        if conj.shape[:2] != fmap.shape[:2]:
            raise ValueError(f"conjugates {tuple(conj.shape)} do not pair with clips "
                             f"{tuple(fmap.shape)}: batch and channels must match")
        l_s, l_d = self.conjugate_losses(out["f_a"], out["f_c"], conj)
        total = l_c + cfg.lambda_s * l_s + cfg.lambda_d * l_d
        parts.update(L_s=l_s.item(), L_d=l_d.item())
        return total, parts


def build(cfg: Config) -> ACF:
    return ACF(cfg)
