"""RefAtomNet: referring atomic video action recognition (Peng et al., ECCV 2024).

Given a video, a sentence naming one person in it and the scene's detections, predict that
person's atomic actions (multi-label) and box.  Equations cited are those of the paper
(``shared/papers/002_...``); the blocks live in :mod:`vidattn.heads.agent_attention`.

Input ``batch`` (float32 unless said), B samples:

- "visual" (B, D, T, H, W): cached I3D Mixed_5c map (D = in_channels);
- "text" (B, L, E), "text_mask" (B, L) bool (True = real token): the referring sentence's
  token embeddings from a frozen BERT-family encoder (E = text_dim);
- "det_boxes" (B, M, 8) [cx, cy, w, h, x1, y1, x2, y2] normalised, "det_emb" (B, M, E) the
  text encoder's embedding of each detection's class name, "det_mask" (B, M) bool (True =
  keep), "det_scores" (B, M) (accepted, unused: the paper's t^LS has no score, and the
  pipeline's det_mask already drops what it does not trust).  Not read when location=False;
- targets for :meth:`RefAtomNet.loss`: "labels" (B, K) multi-hot, "box" (B, 4) [x1, y1, x2, y2].

Output: "logits" (B, K), "box" (B, 4) [x1, y1, x2, y2] in [0, 1] with x1 <= x2 and y1 <= y2,
"visual_attn" (B, T, H, W): where the visual resampler read from (its cross-attention
averaged over queries and heads; sums to 1), for explanation pictures.

Architecture (d = dim, N = n_tokens, n = n_agents, h = heads):

1. Stream tokens.  Visual: D -> d per (t, h, w) position, plus a position embedding (a linear
   map of Fourier features of the normalised (t, y, x) cell centre, so any map size works and
   "where" is in the boxes' coordinates).  Text: E -> d.  Location-semantic (LS), the
   paper's t^LS = P_LS(Concat[V_RT(r_cats), r_boxes]): one token per detection, P_LS linear.
   Each stream is then brought to N tokens by its own :class:`Resampler` (N learned queries,
   one masked cross-attention layer and an MLP): the stand-in for BLIP-2's QFormer.  The
   paper's agent tokens come from a fully-connected layer over the token axis and its fusion
   sums attention maps across streams: both need one fixed token count shared by the streams.
   Masked text tokens and detections are zeroed before use and masked out of the attention
   (a learned null token is always there: an all-masked row attends to it alone).
2. n_blocks x :class:`CrossStreamBlock`: per stream, 1D agent attention (Q, K, V; A = MLP
   over the token axis of Q; V_A = softmax(alpha A K^T) V; O = softmax(alpha Q A^T) V_A;
   alpha = 1 / sqrt(d / h); residual, LayerNorm, MLP), the visual stream fused with the text
   and LS streams by CATF and CAAF, below.
3. t_agg = sum over streams of (the stream's token mean) / N_s (paper), after a final
   LayerNorm; an MLP classifier gives K logits, an MLP regressor the box (paper; the
   defaults depart here, see below).

Cross-stream fusion: the paper's summary gives, for pi in {RT, LS} and the visual stream gamma,
M_QA^pi = sigma_c(MatMul[alpha A^pi, Q^pi]) and
M^_QA^gamma = AVG[M_QA^gamma, sigma_c(sum_pi M_QA^pi) . M_QA^gamma,
sigma_t(sum_pi M_QA^pi) . M_QA^gamma], and says CATF is done "similarly".  Read here as:

- CAAF: M_QA is the broadcast (query-agent) map, (B, h, N, n) per head; sigma_c is a softmax
  over the agent axis, sigma_t over the token axis, "." elementwise, AVG the mean of the three
  terms.  The visual broadcast uses M^ instead of its own M.  Its rows then sum to between
  1/3 and 1, not 1: taken literally (the output projection absorbs the scale);
- CATF: the same formula on the agent tokens A (B, h, n, c): sigma_c a softmax over the
  channels c of a head, sigma_t over the agent axis.  The fused A^ replaces the visual
  stream's agent tokens in its aggregation and in its broadcast map (CATF runs first, so with
  both on CAAF fuses M_QA computed from A^);
- the text and LS streams run unfused; token i of one stream meets token i of another only as
  "the i-th learned query slot", as with the paper's QFormer tokens.

Two readings are options, because the summary's equations and the authors' released code
differ on them:

- ``caaf_map``: "broadcast" (default) fuses M_QA = softmax(alpha Q A^T), the map the paper's
  M_QA^pi = sigma_c(MatMul[alpha A^pi, Q^pi]) names (A and Q); "aggregation" fuses
  M_AK = softmax_tokens(alpha A K^T) (B, h, n, N), which the released code fuses instead
  (there sigma_c is a softmax over tokens, sigma_t over agents).  Either way the visual
  stream's other map is the unfused one;
- ``ls_tokens``: "resample" (default) reads the detections with the LS stream's own
  resampler, like the other two streams; "linear" zeroes the masked detections after P_LS,
  pads them to ``n_detections`` (N_o = 100) slots and maps the slot axis to N tokens with one
  linear layer, as the released code does: the detections' order then matters (DETR's query
  slots, or annotated persons left to right).

Two departures are the defaults: on the referring sample the paper's head does not learn
the task (test AUROC 0.597 against 0.72 for a sentence-blind probe, mIoU 0.22; README
"Referring" has the measurements).  ``refatomnet-paper`` is the paper's head.

- ``box_from="detections"``: the box is the kept detections' boxes averaged with a softmax
  over q(t_agg) . k(P_LS token) / sqrt(d) (the regressor's box where none is kept): the
  paper's MLP must copy coordinates out of t_agg, where every person's box is mixed;
- ``roi_readout=True``: the classifier reads t_agg plus a linear map of the I3D map pooled
  over the predicted (detached) box (:func:`box_pool`, BatchNorm first): t_agg alone
  summarises the whole scene, and the sentence barely moves the action scores.

Option ``visual_norm="batch"`` (off) standardises the map's channels first (Mixed_5c: heavy
tails).  Choices left open by the paper (besides the above): the box regressor's sigmoids
give the box size (w, h) and where it sits in the frame; x1 = (1 - w) s_x, x2 = x1 + w, i.e.
cx = x1 + w / 2 is confined to where the whole box fits, so the box is always inside [0, 1]
without a clamp that would zero gradients.  Dropout acts on attention outputs, MLPs
and t_agg.  d = 128 (the paper's QFormer is 768 wide; the head's width is not given): 256
scored the same on the referring sample at 2.5x the training time (README "Referring").

Loss: L = L_BCE + box_weight * L_MSE, L_BCE the mean over classes and batch, L_MSE the sum of
the 4 coordinates' squared errors, mean over the batch.  The weight (5, the paper's "with a
weight of 5") is on the box term: on normalised coordinates the squared errors are an order of
magnitude below the BCE, and unweighted the box would barely be learnt.

Ablations (the paper's "Ablation" and fusion-comparison tables), each a builder that
``dataclasses.replace``s one field: ``build_add`` (fusion="add": the resampled streams summed
token-wise, one stream of agent blocks on the sum), ``build_concat`` (fusion="concat": one
stream of agent blocks on the 3N (2N without LS) concatenated tokens), ``build_noloc``
(location=False, "w/o LSAS": N_s = 2, det_* not read, so the box is regressed),
``build_nocaaf`` / ``build_nocatf`` (the visual stream keeps its own M_QA / agent tokens;
both only act with fusion="agent"; location applies to every fusion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from vidattn.heads.agent_attention import CrossStreamBlock, Resampler

TASK = "refer"  # map + sentence + detections -> labels + box (vidattn/tasks/refer.py)
# The paper's rate ("BertAdam, lr=1e-4"), train-head's default for these heads: at vidattn's
# 1e-3 (AdamW, no warmup) the BCE stays at the label prior on the planted benchmark.
TRAIN = {"lr": 1e-4}
BOX_DIM = 8  # det_boxes: [cx, cy, w, h, x1, y1, x2, y2]
POS_FREQS = 4  # Fourier frequencies pi * 2^k, k < POS_FREQS, of the visual position embedding
FUSIONS = ("agent", "add", "concat")
LS_TOKENS = ("resample", "linear")
CAAF_MAPS = ("broadcast", "aggregation")
BOX_FROM = ("regress", "detections")
VISUAL_NORMS = ("none", "batch")


@dataclass(frozen=True)
class Config:
    in_channels: int = 1024  # D of the visual map
    num_classes: int = 80  # K: AVA's atomic actions
    multilabel: bool = True  # must be True: the paper's L_BCE
    dropout: float = 0.1
    text_dim: int = 384  # E of the text encoder (all-MiniLM-L6-v2: 384)
    dim: int = 128  # d: token width inside the head (module doc: why not 256)
    n_tokens: int = 32  # N: tokens per stream (BLIP-2 QFormer's query count)
    n_agents: int = 4  # n: agent tokens per stream and block
    heads: int = 4  # attention heads (d must divide by it)
    n_blocks: int = 3  # cross-stream agent-attention blocks
    fusion: str = "agent"  # "agent" (the paper's) | "add" | "concat" (its comparisons)
    location: bool = True  # False: no location-semantic stream (ablation "w/o LSAS")
    caaf: bool = True  # cross-stream agent attention fusion (fusion="agent" only)
    catf: bool = True  # cross-stream agent token fusion (fusion="agent" only)
    box_weight: float = 5.0  # weight of L_MSE in the loss
    ls_tokens: str = "resample"  # LS stream to N tokens: "resample" | "linear" (over queries)
    n_detections: int = 100  # N_o: detection slots the "linear" LS map reads (DETR's queries)
    caaf_map: str = "broadcast"  # CAAF fuses "broadcast" (M_QA) or "aggregation" (M_AK)
    box_from: str = "detections"  # a pointer over the detections | "regress" (the paper's)
    visual_norm: str = "none"  # "batch": standardise each map channel (BatchNorm) first
    roi_readout: bool = True  # the classifier also reads the map pooled over the box

    def __post_init__(self):
        for name in ("in_channels", "num_classes", "text_dim", "dim", "n_tokens", "n_agents",
                     "heads", "n_blocks", "n_detections"):
            if getattr(self, name) < 1:
                raise ValueError(f"refatomnet: {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"refatomnet: dim {self.dim} must divide by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"refatomnet: dropout must lie in [0, 1), got {self.dropout}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"refatomnet: fusion must be one of {', '.join(FUSIONS)}, "
                             f"got {self.fusion!r}")
        for name, allowed in (("ls_tokens", LS_TOKENS), ("caaf_map", CAAF_MAPS),
                              ("box_from", BOX_FROM), ("visual_norm", VISUAL_NORMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"refatomnet: {name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if not self.multilabel:
            raise ValueError("refatomnet: multilabel must be True (atomic actions, L_BCE)")
        if self.box_from == "detections" and not self.location:
            raise ValueError("refatomnet: box_from=detections points at the location stream's "
                             "detections; it needs location=True")
        if self.box_weight < 0:
            raise ValueError(f"refatomnet: box_weight must be >= 0, got {self.box_weight}")


def position_features(t: int, h: int, w: int, device=None) -> torch.Tensor:
    """Fourier features of each cell centre (t, y, x) in (0, 1): (T*H*W, 3 (2 POS_FREQS + 1)),
    rows in the order of a (T, H, W) flatten."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in (t, h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    freqs = math.pi * 2.0 ** torch.arange(POS_FREQS, device=device, dtype=torch.float32)
    angles = (grid[..., None] * freqs).flatten(1)  # (THW, 3 POS_FREQS)
    return torch.cat([grid, angles.sin(), angles.cos()], dim=1)


def decode_box(raw: torch.Tensor) -> torch.Tensor:
    """Regressor output (B, 4) -> box (B, 4) [x1, y1, x2, y2] inside [0, 1].

    sigmoid(raw[:, 2:]) is the size (w, h); sigmoid(raw[:, :2]) says where in [0, 1 - size]
    the box starts, so the centre cx = x1 + w / 2 keeps the whole box in the frame.
    """
    s = torch.sigmoid(raw)
    size = s[:, 2:]
    start = (1 - size) * s[:, :2]
    return torch.cat([start, start + size], dim=1)


def box_pool(vis: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Map (B, D, T, H, W) averaged over the cells box (B, 4) [x1, y1, x2, y2] covers, each
    weighted by its covered fraction, and over T -> (B, D).  A box covering no cell area
    pools every cell alike."""
    _, _, t, h, w = vis.shape

    def cover(lo, hi, n):  # (B, n) covered fraction of each of n cells along one axis
        edges = torch.linspace(0, 1, n + 1, device=vis.device, dtype=vis.dtype)
        return (torch.minimum(edges[1:], hi[:, None]) - torch.maximum(edges[:-1], lo[:, None])
                ).clamp(min=0) * n

    wgt = cover(box[:, 1], box[:, 3], h)[:, :, None] * cover(box[:, 0], box[:, 2], w)[:, None]
    wgt = wgt + 1e-6  # an empty box: uniform
    wgt = wgt / wgt.sum(dim=(1, 2), keepdim=True)
    return torch.einsum("bdthw,bhw->bd", vis, wgt) / t


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of paired boxes [x1, y1, x2, y2]: (B, 4), (B, 4) -> (B,) (0 for empty unions)."""
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1) + (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


class RefAtomNet(nn.Module):
    """Visual, text and location-semantic tokens fused by cross-stream agent attention."""

    uses_conjugates = False
    map_names = ("visual_attn",)

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d, n = cfg.dim, cfg.n_tokens
        self.stream_names = ("visual", "text", "location") if cfg.location else ("visual", "text")
        self.visual_norm = (nn.BatchNorm1d(cfg.in_channels) if cfg.visual_norm == "batch"
                            else None)
        self.visual_in = nn.Linear(cfg.in_channels, d)
        self.visual_pos = nn.Linear(3 * (2 * POS_FREQS + 1), d)
        self.text_in = nn.Linear(cfg.text_dim, d)
        self.location_in = nn.Linear(cfg.text_dim + BOX_DIM, d) if cfg.location else None  # P_LS
        linear_ls = cfg.location and cfg.ls_tokens == "linear"
        self.location_mix = nn.Linear(cfg.n_detections, n) if linear_ls else None
        self.resample = nn.ModuleDict({
            s: Resampler(d, n, cfg.heads, cfg.dropout, null=s != "visual")
            for s in self.stream_names if not (s == "location" and linear_ls)})
        if cfg.fusion == "agent":
            n_tokens, target = dict.fromkeys(self.stream_names, n), "visual"
        else:  # one joint stream: the token-wise sum, or the streams one after another
            n_tokens = {"joint": n if cfg.fusion == "add" else n * len(self.stream_names)}
            target = None
        self.blocks = nn.ModuleList(
            CrossStreamBlock(n_tokens, target, cfg.caaf, cfg.catf, d, cfg.n_agents, cfg.heads,
                             cfg.dropout, cfg.caaf_map) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(cfg.dropout),
                                        nn.Linear(d, cfg.num_classes))
        self.box_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 4))
        self.roi = (nn.Sequential(nn.BatchNorm1d(cfg.in_channels), nn.Linear(cfg.in_channels, d))
                    if cfg.roi_readout else None)
        # box_from="detections": t_agg queries the detections' own P_LS tokens
        self.pointer = (nn.ModuleDict({"q": nn.Linear(d, d), "k": nn.Linear(d, d)})
                        if cfg.box_from == "detections" else None)

    def _check(self, batch: dict) -> None:
        keys = ["visual", "text", "text_mask"]
        if self.cfg.location:
            keys += ["det_boxes", "det_emb", "det_mask"]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"refatomnet batch lacks {', '.join(missing)} (needs {', '.join(keys)})")
        for key, dim in (("visual", 1), ("text", 2), ("det_emb", 2)):
            want = self.cfg.in_channels if key == "visual" else self.cfg.text_dim
            if key in keys and batch[key].shape[dim] != want:
                raise ValueError(f"refatomnet: {key} has {batch[key].shape[dim]} channels, "
                                 f"the config says {want}")

    def stream_tokens(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                  torch.Tensor | None]:
        """Resampled tokens {stream: (B, N, d)}, the visual read-out attention (B, T*H*W)
        and each detection's own P_LS token (B, M, d) (None without location)."""
        vis = batch["visual"]
        _, _, t, h, w = vis.shape
        x = vis.flatten(2)  # (B, D, T*H*W)
        if self.visual_norm is not None:
            x = self.visual_norm(x)
        x = self.visual_in(x.transpose(1, 2))  # (B, T*H*W, d)
        x = x + self.visual_pos(position_features(t, h, w, vis.device).to(x.dtype))
        tokens, attn, det_tokens = {}, None, None
        tokens["visual"], attn = self.resample["visual"](x)
        # torch.where, not a product: padding may hold anything (even NaN) and must not leak.
        text_mask = batch["text_mask"].bool()
        text = torch.where(text_mask[..., None], batch["text"], 0.0)
        tokens["text"], _ = self.resample["text"](self.text_in(text), text_mask)
        if self.location_in is not None:
            det_mask = batch["det_mask"].bool()
            ls = torch.cat([batch["det_emb"], batch["det_boxes"]], dim=-1)  # Concat[V_RT, r]
            ls = torch.where(det_mask[..., None], ls, 0.0)
            det_tokens = self.location_in(ls)
            if self.location_mix is None:
                tokens["location"], _ = self.resample["location"](det_tokens, det_mask)
            else:  # masked slots are zero tokens, the query order is kept
                m = ls.shape[1]
                if m > self.cfg.n_detections:
                    raise ValueError(f"refatomnet: {m} detections, the config reads "
                                     f"n_detections={self.cfg.n_detections}")
                ls = torch.where(det_mask[..., None], det_tokens, 0.0)
                ls = F.pad(ls, (0, 0, 0, self.cfg.n_detections - m))
                tokens["location"] = self.location_mix(ls.transpose(1, 2)).transpose(1, 2)
        return tokens, attn, det_tokens

    def encode(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                           torch.Tensor | None]:
        """Tokens after the blocks, {stream: (B, N_s, d)} ("joint" for add/concat), the
        visual attention (B, T*H*W) and the detections' P_LS tokens (B, M, d) or None."""
        self._check(batch)
        tokens, attn, det_tokens = self.stream_tokens(batch)
        if self.cfg.fusion == "add":
            tokens = {"joint": sum(tokens[s] for s in self.stream_names)}
        elif self.cfg.fusion == "concat":
            tokens = {"joint": torch.cat([tokens[s] for s in self.stream_names], dim=1)}
        for block in self.blocks:
            tokens = block(tokens)
        return tokens, attn, det_tokens

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch (see the module doc) -> {"logits" (B, K), "box" (B, 4) x1y1x2y2,
        "visual_attn" (B, T, H, W)}."""
        tokens, attn, det_tokens = self.encode(batch)
        # t_agg = sum_s mean(t^s) / N_s; for concat the mean over all 3N tokens is exactly that,
        # for add the single summed stream is its own aggregate.
        t_agg = torch.stack([self.norm(x).mean(dim=1) for x in tokens.values()]).mean(dim=0)
        t_agg = self.drop(t_agg)
        box = decode_box(self.box_head(t_agg))
        if self.pointer is not None:
            box = self.point(t_agg, det_tokens, batch, box)
        if self.roi is not None:  # the box is the loss's to learn; the read-out follows it
            t_agg = t_agg + self.roi(box_pool(batch["visual"], box.detach()))
        return {"logits": self.classifier(t_agg), "box": box,
                "visual_attn": attn.view(attn.shape[0], *batch["visual"].shape[2:])}

    def point(self, t_agg: torch.Tensor, det_tokens: torch.Tensor, batch: dict,
              fallback: torch.Tensor) -> torch.Tensor:
        """box_from="detections": the kept detections' boxes (B, M, 4) averaged with a
        softmax over q(t_agg) . k(P_LS token) / sqrt(d) -> (B, 4) x1y1x2y2; rows with no
        kept detection take ``fallback`` (the regressor's box)."""
        mask = batch["det_mask"].bool()
        q = self.pointer["q"](t_agg)  # (B, d)
        k = self.pointer["k"](det_tokens)  # (B, M, d)
        logits = (k @ q[..., None]).squeeze(-1) / math.sqrt(q.shape[-1])
        kept = mask.any(dim=1, keepdim=True)
        logits = torch.where(mask, logits, float("-inf"))
        weights = torch.softmax(torch.where(kept, logits, 0.0), dim=1)  # no NaN when none kept
        boxes = torch.where(mask[..., None], batch["det_boxes"][..., 4:8], 0.0)
        return torch.where(kept, (weights[..., None] * boxes).sum(dim=1), fallback)

    def loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """L_BCE + box_weight * L_MSE -> (scalar, {"L_bce": float, "L_box": float (L_MSE)})."""
        l_bce = F.binary_cross_entropy_with_logits(out["logits"], batch["labels"].float())
        l_box = ((out["box"] - batch["box"].float()) ** 2).sum(dim=1).mean()
        total = l_bce + self.cfg.box_weight * l_box
        return total, {"L_bce": l_bce.item(), "L_box": l_box.item()}


def build(cfg: Config) -> RefAtomNet:
    """RefAtomNet: visual, text and location-semantic streams, cross-stream agent fusion."""
    return RefAtomNet(cfg)


def build_paper(cfg: Config) -> RefAtomNet:
    """RefAtomNet as the paper describes it: MLP box regressor, classifier on t_agg alone."""
    return RefAtomNet(replace(cfg, box_from="regress", roi_readout=False))


def build_add(cfg: Config) -> RefAtomNet:
    """RefAtomNet, addition fusion: streams summed token-wise, agent blocks on the sum."""
    return RefAtomNet(replace(cfg, fusion="add"))


def build_concat(cfg: Config) -> RefAtomNet:
    """RefAtomNet, concatenation fusion: agent blocks on the streams' joint token sequence."""
    return RefAtomNet(replace(cfg, fusion="concat"))


def build_noloc(cfg: Config) -> RefAtomNet:
    """RefAtomNet without the location-semantic stream (visual fused with text only)."""
    return RefAtomNet(replace(cfg, location=False, box_from="regress"))


def build_nocaaf(cfg: Config) -> RefAtomNet:
    """RefAtomNet without CAAF: the visual stream broadcasts with its own M_QA."""
    return RefAtomNet(replace(cfg, caaf=False))


def build_nocatf(cfg: Config) -> RefAtomNet:
    """RefAtomNet without CATF: the visual stream keeps its own agent tokens."""
    return RefAtomNet(replace(cfg, catf=False))
