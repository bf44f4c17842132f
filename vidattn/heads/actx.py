"""ActX: attentive action and context factorization (Wang et al.).

Equations cited are those of the paper (``shared/papers/000_...``):

- eq. (6): S_act = sigmoid(alpha * Percent_rho(AttNorm_{t,h,w}(phi(F)))),
           S_att = softmax_{t,h,w}(beta * AttNorm_{t,h,w}(psi(F)));
- eq. (5): S = S_act * S_att,  C = 1 - S_act;
- Sec. 3.3: theta(F) = relu(F + conv3d(F)); F_s, F_c = S- and C-weighted means of theta(F);
  h = linear([F_s, F_c]);
- eq. (2): eta(F_k, F') = sum_j softmax_j(gamma * <F_k^, F'_j^>) F'_j  (soft matching);
- eqs. (3)-(4): L_s = sum_k S_k sim(eta(F_k,F), eta(F_k,F')) / sum_k S_k with
  sim = max(0, cos - xi);  L_d = sum_k C_k diff(...) / sum_k C_k with diff = 1 - cos;
- eq. (1): L = L_c + L_d + L_s  (unit weights by default; exposed as lambda_s, lambda_d).

Shapes: F is (B, D, T, H, W); maps S, C, S_act, S_att are (B, T, H, W); logits (B, K).

Choices the paper leaves open (all options):
- gamma = 10: features are post-ReLU, so cosines between voxels lie in [0, 1]; with gamma = 1
  the soft match is nearly uniform and eta(F_k, .) collapses to the map mean, gamma = 10
  gives a voxel ~e times the weight of one 0.1 less similar: a soft nearest neighbour.
- xi = 0.5: cosines of eta vectors (means of non-negative features) sit well above 0; a
  voxel whose match in the conjugate is already below 0.5 is "different enough" and costs
  nothing, so S is not pushed further onto it while genuine context voxels (cos near 1)
  are penalised.
- theta is a 1x1x1 conv (parameters stay small, as the paper's Table 1 counts suggest);
  phi and psi are 3x3x3 convs to one channel so confidences see their neighbourhood.
- Percent_rho makes rho percent of the map positive, i.e. subtracts the (100 - rho)-th
  percentile: that is the paper's stated intent ("rho percent of the values in S_act are
  1's" as alpha -> inf).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidattn.heads.common import classification_loss

TASK = "classify"  # map -> labels (vidattn/tasks/classify.py)


@dataclass(frozen=True)
class Config:
    in_channels: int = 1024
    num_classes: int = 4
    multilabel: bool = False
    rho: float = 30.0  # percent of voxels that are action (positive before the sigmoid)
    alpha: float = 1.0  # sharpness of the action/context boundary
    beta: float = 1.0  # 0 = average pooling ... inf = max pooling
    gamma: float = 10.0  # soft-matching temperature of eta, eq. (2)
    xi: float = 0.5  # similarity margin of sim(), eqs. (3)
    lambda_s: float = 1.0
    lambda_d: float = 1.0
    use_satt: bool = True  # False: the paper's ablation S = S_act
    theta_kernel: int = 1
    map_kernel: int = 3
    dropout: float = 0.5


def attnorm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AttNorm over (t, h, w): zero mean, unit std per sample.  x: (B, T, H, W)."""
    flat = x.flatten(1)
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, keepdim=True, unbiased=False)
    return ((flat - mean) / (std + eps)).view_as(x)


def percent(x: torch.Tensor, rho: float) -> torch.Tensor:
    """Percent_rho: shift so that rho percent of each sample's values are positive."""
    flat = x.flatten(1)
    q = torch.quantile(flat, 1.0 - rho / 100.0, dim=1, keepdim=True)
    return (flat - q).view_as(x)


def weighted_mean(fmap: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """sum_i w_i fmap_i / sum_i w_i.  fmap (B, D, T, H, W), w (B, T, H, W) -> (B, D)."""
    num = torch.einsum("bdthw,bthw->bd", fmap, w)
    return num / (w.flatten(1).sum(1, keepdim=True) + eps)


def soft_match(fk: torch.Tensor, fset: torch.Tensor, gamma: float) -> torch.Tensor:
    """eta(F_k, F_set) of eq. (2) for every k at once.

    fk (B, D, N), fset (B, D, M) -> (B, N, D): for each k, the softmax(gamma * cosine)-weighted
    sum of the (unnormalised) vectors of fset.
    """
    sim = torch.einsum("bdn,bdm->bnm", F.normalize(fk, dim=1), F.normalize(fset, dim=1))
    return torch.einsum("bnm,bdm->bnd", torch.softmax(gamma * sim, dim=2), fset)


def conjugate_losses(fmap: torch.Tensor, conj: torch.Tensor, s: torch.Tensor, c: torch.Tensor,
                     gamma: float, xi: float, eps: float = 1e-6):
    """L_s and L_d of eqs. (3)-(4), averaged over the batch.

    fmap (B, D, T, H, W) action sample, conj (B, D, T', H', W') its conjugate (any size),
    s, c (B, T, H, W) the action and context maps of the action sample.
    """
    fk, fc = fmap.flatten(2), conj.flatten(2)
    cos = F.cosine_similarity(soft_match(fk, fk, gamma), soft_match(fk, fc, gamma), dim=2)
    s, c = s.flatten(1), c.flatten(1)
    l_s = (s * (cos - xi).clamp(min=0)).sum(1) / (s.sum(1) + eps)
    l_d = (c * (1 - cos)).sum(1) / (c.sum(1) + eps)
    return l_s.mean(), l_d.mean()


class ActX(nn.Module):
    """Attentive action/context factorisation head on a cached feature map."""

    uses_conjugates = True
    map_names = ("S", "C")

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d, k, m = cfg.in_channels, cfg.theta_kernel, cfg.map_kernel
        self.theta = nn.Conv3d(d, d, k, padding=k // 2)
        self.phi = nn.Conv3d(d, 1, m, padding=m // 2)
        self.psi = nn.Conv3d(d, 1, m, padding=m // 2) if cfg.use_satt else None
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(2 * d, cfg.num_classes)
        # Start theta near the identity so F_s/F_c begin as plain weighted means of F.
        nn.init.zeros_(self.theta.weight)
        nn.init.zeros_(self.theta.bias)

    def attention(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        """Maps of eqs. (5)-(6): S_act, S_att, S, C, each (B, T, H, W)."""
        cfg = self.cfg
        s_act = torch.sigmoid(cfg.alpha * percent(attnorm(self.phi(fmap)[:, 0]), cfg.rho))
        if self.psi is not None:
            z = cfg.beta * attnorm(self.psi(fmap)[:, 0])
            s_att = torch.softmax(z.flatten(1), dim=1).view_as(z)
            s = s_act * s_att
        else:
            s_att = torch.ones_like(s_act) / s_act[0].numel()
            s = s_act
        return {"S": s, "C": 1 - s_act, "S_act": s_act, "S_att": s_att}

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        """fmap (B, D, T, H, W) -> {"logits": (B, K), "S", "C", "S_act", "S_att"}."""
        maps = self.attention(fmap)
        th = F.relu(fmap + self.theta(fmap))
        f_s = weighted_mean(th, maps["S"])
        f_c = weighted_mean(th, maps["C"])
        logits = self.fc(self.drop(torch.cat([f_s, f_c], 1)))
        return {"logits": logits, **maps}

    def loss(self, out: dict, fmap: torch.Tensor, target: torch.Tensor,
             conj: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """L_c (+ lambda_s L_s + lambda_d L_d when conjugates are given), eq. (1)."""
        l_c = classification_loss(out["logits"], target, self.cfg.multilabel)
        parts = {"L_c": l_c.item()}
        total = l_c
        if conj is not None:
            l_s, l_d = conjugate_losses(fmap, conj, out["S"], out["C"], self.cfg.gamma,
                                        self.cfg.xi)
            total = total + self.cfg.lambda_s * l_s + self.cfg.lambda_d * l_d
            parts.update(L_s=l_s.item(), L_d=l_d.item())
        return total, parts


def build(cfg: Config) -> ActX:
    return ActX(cfg)


def build_nosatt(cfg: Config) -> ActX:
    """The paper's ablation "ActX [w/o Satt]": S = S_act (Table 1)."""
    from dataclasses import replace

    return ActX(replace(cfg, use_satt=False))
