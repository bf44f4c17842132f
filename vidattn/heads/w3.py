"""W3: what-where-when video attention (Perez-Rua et al., 2020), and its CBAM ablation.

Equations cited are those of the paper (``shared/papers/001_...``), Sec. 3.1-3.4:

- eq. (2): F_c = M_c * F (over t, c);  F_s = M_s * F_c (over t, h, w): sequential factorisation;
- eq. (3): M_c-frm = sigmoid(mlp(d_avg-c) + mlp(d_max-c)), one shared bottleneck MLP
  (D -> D/r -> D) applied per frame to the spatially avg- and max-pooled channel descriptors;
- eq. (4): M_c = sigmoid(theta_c-vid(M_c-frm)), theta_c-vid two 1D temporal convs (K_c-vid = 3);
- eq. (5): M_s-frm = sigmoid(conv7x7([d_avg-s, d_max-s])), channel avg/max maps per frame;
- eq. (6): M_s = sigmoid(theta_s-vid(M_s-frm)), theta_s-vid two 3x3x3 convs.

Shapes: F, F_c, F_s are (B, D, T, H, W); M_c-frm, M_c are (B, T, D); M_s-frm, M_s are
(B, T, H, W); logits (B, K).

On a cached I3D Mixed_5c map there is no backbone to insert W3 into, so the module is applied
once, to the cached map, then F_s is average-pooled and classified.  The paper averages the
frame-level predictions; with a linear classifier that equals classifying the (t, h, w)-mean
of F_s, which is what is done here.

Not implemented, on purpose: attention-guided feature refinement, eqs. (7)-(8), gathers M_s
from every backbone stage (N >= 2 masks, AAP-aligned, concatenated, 1x1 conv, added to the last
stage's features).  A single cached endpoint has one stage, so there is nothing to gather; the
head exposes no half-done version of it.  Mature-feature-guided regularisation, eq. (9), is
the trainer's job: it regresses a student's ``out["attended"]`` (F_s, the last attended map,
which is y of eq. (8) when there is no refinement) onto a frozen teacher's.

Choices the paper leaves open:
- theta_c-vid is depthwise: each channel's T-long attention sequence gets its own tiny 1D CNN
  (1 -> c_vid_hidden -> 1 units per channel, ReLU between, groups=D), so channels never mix
  in time.  The paper says the CNN reasons "about the temporally evolving characteristics of
  each channel dimension"; mixing channels would also cost D^2 K parameters, far from the
  "marginal" overhead claimed.  Several hidden units per channel (not one) keep a channel's
  temporal path from being switched off for good by a single dead ReLU.
- theta_s-vid is Conv3d(1 -> s_vid_hidden, 3) -> ReLU -> Conv3d(s_vid_hidden -> 1, 3).
- eqs. (4) and (6) are taken literally: the temporal nets see the frame masks *after* their
  sigmoid (values in (0, 1)) and a second sigmoid makes the video mask.
- Temporal and spatial convs zero-pad ("same" size output), so T = 1 and H = W = 1 work.
- ``temporal=False`` is CBAM (Woo et al., 2018) applied per frame: "W3 without temporal
  reasoning", the baseline of the paper's Table 6.  M_c = M_c-frm and M_s = M_s-frm, so a
  frame's masks depend on that frame alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from vidattn.heads.common import classification_only

# Scale of the last layer before each mask's sigmoid, relative to PyTorch's default init
# (its bias starts at zero).  Small, so every mask starts within a few percent of
# sigmoid(0) = 0.5 and the head starts as the avgpool baseline: F_s ~ F / 4 is a uniform
# rescale, not a re-weighting.  Measured at D = 1024 on ReLU'd Gaussian maps: with 0.1, M_c
# lies in 0.48..0.52 (CBAM: 0.44..0.55); with the default 1.0, CBAM's M_c spans 0.09..0.89,
# i.e. a random 10x re-weighting of channels before any training.  Not zero, so every
# parameter gets a gradient at step 0 (a zero layer blocks the ones upstream of it until the
# first update); not 0.01, which shrinks those upstream gradients 100x (10^4x through the
# two small layers in series in W3) for no gain in neutrality that matters.
MASK_INIT_GAIN = 0.1


TASK = "classify"  # map -> labels (vidattn/tasks/classify.py)


@dataclass(frozen=True)
class Config:
    in_channels: int = 1024
    num_classes: int = 4
    multilabel: bool = False
    dropout: float = 0.5
    reduction: int = 16  # r of eq. (3): the channel MLP's hidden width is D / r
    spatial_kernel: int = 7  # theta_s-frm, eq. (5)
    c_vid_kernel: int = 3  # K_c-vid, eq. (4)
    c_vid_hidden: int = 4  # hidden units per channel in theta_c-vid
    s_vid_kernel: int = 3  # theta_s-vid, eq. (6)
    s_vid_hidden: int = 4  # hidden channels of theta_s-vid
    temporal: bool = True  # False: CBAM per frame (no theta_c-vid, theta_s-vid)


def _shrink_(layer: nn.Module, gain: float) -> None:
    """Scale a conv/linear layer's default-initialised weights by ``gain``; zero its bias."""
    with torch.no_grad():
        layer.weight.mul_(gain)
        layer.bias.zero_()


def _centre_tap_(conv: nn.Conv1d | nn.Conv3d) -> None:
    """A kernel that copies its input at the same place: every output unit = its input."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[(slice(None), slice(None), *(k // 2 for k in conv.kernel_size))] = 1.0
        conv.bias.zero_()


class W3(nn.Module):
    """Channel-temporal then spatio-temporal attention on a cached map, pooled, classified."""

    uses_conjugates = False
    map_names = ("M_s",)

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d, kc, ks, ksp = cfg.in_channels, cfg.c_vid_kernel, cfg.s_vid_kernel, cfg.spatial_kernel
        hc, hs = cfg.c_vid_hidden, cfg.s_vid_hidden
        # theta_c-frm: one MLP, used for both descriptors (eq. 3 "shared MLP").
        self.c_frm = nn.Sequential(nn.Linear(d, max(1, d // cfg.reduction)), nn.ReLU(),
                                   nn.Linear(max(1, d // cfg.reduction), d))
        self.s_frm = nn.Conv2d(2, 1, ksp, padding=ksp // 2)  # theta_s-frm
        self.c_vid: nn.Sequential | None = None
        self.s_vid: nn.Sequential | None = None
        if cfg.temporal:
            # groups=d: output units g*hc .. g*hc+hc-1 read channel g only, and the second
            # layer folds them back into channel g: one independent 1D CNN per channel.
            self.c_vid = nn.Sequential(
                nn.Conv1d(d, d * hc, kc, padding=kc // 2, groups=d), nn.ReLU(),
                nn.Conv1d(d * hc, d, kc, padding=kc // 2, groups=d))
            self.s_vid = nn.Sequential(
                nn.Conv3d(1, hs, ks, padding=ks // 2), nn.ReLU(),
                nn.Conv3d(hs, 1, ks, padding=ks // 2))
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(d, cfg.num_classes)
        self._init_near_neutral()

    def _init_near_neutral(self) -> None:
        # Shared layers get the same init in both modes, so the CBAM ablation differs from
        # W3 by the temporal layers only.  Frame masks start at ~0.5 (small last layers).
        _shrink_(self.c_frm[2], MASK_INIT_GAIN)
        _shrink_(self.s_frm, MASK_INIT_GAIN)
        if self.c_vid is not None and self.s_vid is not None:
            # The first layer of each temporal net starts as a copy of the frame mask it reads:
            # > 0, so no hidden ReLU is dead at step 0 (with the default init about one hidden
            # unit in ten of theta_s-vid is off everywhere, as its input is ~0.5 everywhere,
            # and gets no gradient).  Off-centre taps still get gradient from the neighbours,
            # and the differing weights of the small last layer break the symmetry between
            # the identical hidden units.  The last layer is small: video masks start at ~0.5.
            _centre_tap_(self.c_vid[0])
            _centre_tap_(self.s_vid[0])
            _shrink_(self.c_vid[2], MASK_INIT_GAIN)
            _shrink_(self.s_vid[2], MASK_INIT_GAIN)

    def channel_attention(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. (3)-(4): fmap (B, D, T, H, W) -> (M_c-frm, M_c), each (B, T, D)."""
        # Both descriptors through the MLP in one call: (2, B, T, D) -> summed logits.
        desc = torch.stack([fmap.mean(dim=(3, 4)), fmap.amax(dim=(3, 4))]).transpose(2, 3)
        m_frm = torch.sigmoid(self.c_frm(desc).sum(0))
        if self.c_vid is None:
            return m_frm, m_frm
        # Conv1d wants (B, D, T): the T axis is convolved, channels stay separate.
        m_vid = torch.sigmoid(self.c_vid(m_frm.transpose(1, 2))).transpose(1, 2)
        return m_frm, m_vid

    def spatial_attention(self, f_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. (5)-(6): F_c (B, D, T, H, W) -> (M_s-frm, M_s), each (B, T, H, W)."""
        b, _, t, h, w = f_c.shape
        desc = torch.stack([f_c.mean(1), f_c.amax(1)], dim=2)  # (B, T, 2, H, W)
        # Frames folded into the batch: the 7x7 conv sees one frame at a time.
        m_frm = torch.sigmoid(self.s_frm(desc.reshape(b * t, 2, h, w))).view(b, t, h, w)
        if self.s_vid is None:
            return m_frm, m_frm
        return m_frm, torch.sigmoid(self.s_vid(m_frm.unsqueeze(1)).squeeze(1))

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        """fmap (B, D, T, H, W) -> {"logits" (B, K), "M_s" (B, T, H, W), "M_c" (B, T, D),
        "M_s_frm" (B, T, H, W), "M_c_frm" (B, T, D), "attended" F_s (B, D, T, H, W)}."""
        m_c_frm, m_c = self.channel_attention(fmap)
        f_c = fmap * m_c.transpose(1, 2)[..., None, None]  # eq. (2), broadcast over (h, w)
        m_s_frm, m_s = self.spatial_attention(f_c)
        f_s = f_c * m_s.unsqueeze(1)  # eq. (2), broadcast over channels
        # Attention-guided refinement, eq. (8), would act here: y = F_s + f_ref(M_ms), with
        # M_ms the AAP-aligned M_s of every backbone stage; one cached stage has no M_ms.
        logits = self.fc(self.drop(f_s.mean(dim=(2, 3, 4))))
        return {"logits": logits, "M_s": m_s, "M_c": m_c, "M_s_frm": m_s_frm,
                "M_c_frm": m_c_frm, "attended": f_s}

    def loss(self, out: dict, fmap: torch.Tensor, target: torch.Tensor,
             conj: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Classification loss only; MFR (eq. 9) is added by the trainer when it has a teacher."""
        return classification_only(out, target, self.cfg.multilabel)


def build(cfg: Config) -> W3:
    return W3(cfg)


def build_cbam(cfg: Config) -> W3:
    """CBAM per frame: W3 without temporal reasoning (the paper's Table 6 baseline)."""
    return W3(replace(cfg, temporal=False))
