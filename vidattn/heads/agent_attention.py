"""Building blocks of RefAtomNet (:mod:`vidattn.heads.refatomnet`): a QFormer-like resampler,
1D agent attention, and the cross-stream fusion of agent attention maps and agent tokens.

Shapes: a stream's tokens are (B, N, d); split into h heads of width c = d / h, queries,
keys and values are (B, h, N, c), agent tokens (B, h, n, c) for n agents, the broadcast
(query-agent) attention map M_QA is (B, h, N, n).

1D agent attention ("1D sequential agent token adaptation" of the paper): the n agent tokens
A are an MLP over the token axis of Q (agent attention pools Q over a 2D grid instead); there
is no depthwise-conv branch and there are no 2D position biases.  With alpha = 1 / sqrt(c):

- agent aggregation:  V_A = softmax_tokens(alpha A K^T) V                  (B, h, n, c)
- agent broadcast:    O   = M_QA V_A,  M_QA = softmax_agents(alpha Q A^T)  (B, h, N, c)

Cross-stream fusion (CAAF on M_QA, CATF on A) uses :func:`avg_fuse`, the paper's
AVG[X, sigma_c(S) * X, sigma_t(S) * X] with S the sum of the other streams' X.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MLP_RATIO = 4  # hidden width of every transformer MLP, relative to the token width


def avg_fuse(own: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """AVG[X, sigma_c(S) * X, sigma_t(S) * X] with X = ``own``, S = ``others`` (the sum of the
    other streams' tensors), both (..., R, C); ``*`` is elementwise.

    sigma_c is a softmax over the last axis C, sigma_t over the axis R before it.  For the
    broadcast maps M_QA (B, h, N, n) that is agents (c) and tokens (t); for the agent tokens A
    (B, h, n, c) it is channels (c) and agents (t): one function serves CAAF and CATF.
    """
    return (own + torch.softmax(others, dim=-1) * own + torch.softmax(others, dim=-2) * own) / 3


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, d) -> (B, h, N, d / h)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, N, c) -> (B, N, h c)."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


def mlp(dim: int, dropout: float) -> nn.Sequential:
    """The transformer MLP: d -> MLP_RATIO d -> d, dropout on its output only (BERT's
    feed-forward): a mask over the hidden layer, 4x as wide, cost a fifth of a CPU step.
    The Identity holds the hidden dropout's old place, so saved weights keep their keys."""
    return nn.Sequential(nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Identity(),
                         nn.Linear(MLP_RATIO * dim, dim), nn.Dropout(dropout))


class Resampler(nn.Module):
    """N learned queries read a sequence of any length: (B, L, d) -> (B, N, d).

    One pre-norm cross-attention layer (queries attend to the sequence, multi-head) and an
    MLP, each residual: a one-layer stand-in for BLIP-2's QFormer, whose only job here is to
    give every stream the same fixed number of tokens.

    With ``null=True`` a learned null token is prepended to every sequence and never masked:
    a row whose every position is masked (or an empty sequence, L = 0) attends to the null
    token alone instead of producing NaN from a softmax over nothing.
    """

    def __init__(self, dim: int, n_tokens: int, heads: int, dropout: float, null: bool):
        super().__init__()
        self.heads = heads
        self.queries = nn.Parameter(0.02 * torch.randn(n_tokens, dim))
        self.null = nn.Parameter(0.02 * torch.randn(1, 1, dim)) if null else None
        self.norm_q, self.norm_kv, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(3))
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.mlp = mlp(dim, dropout)

    def forward(self, x: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, d), mask (B, L) bool, True = attend -> (tokens (B, N, d), attention (B, L)).

        The attention is the queries' cross-attention averaged over queries and heads (without
        the null token's share): where in the sequence the resampler read from.
        """
        b = x.shape[0]
        if self.null is not None:
            x = torch.cat([self.null.expand(b, -1, -1), x], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        elif mask is not None:
            raise ValueError("a masked sequence needs null=True (a row could be all masked)")
        k, v = self.to_kv(self.norm_kv(x)).chunk(2, dim=-1)
        q = self.to_q(self.norm_q(self.queries)).expand(b, -1, -1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, N, L')
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        tokens = self.queries + self.drop(self.proj(merge_heads(weights @ v)))
        tokens = tokens + self.mlp(self.norm_mlp(tokens))
        attn = weights.mean(dim=(1, 2))
        return tokens, attn[:, 1:] if self.null is not None else attn


class AgentAttention(nn.Module):
    """One stream's 1D agent-attention transformer block, (B, N, d) -> (B, N, d).

    Split in steps so that a caller can fuse agent tokens and broadcast maps across streams
    between them: :meth:`qkva` -> (optionally fused A) :meth:`broadcast_map` -> (optionally
    fused M_QA) :meth:`finish`.  ``forward`` runs them unfused.
    """

    def __init__(self, dim: int, n_tokens: int, n_agents: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        # The agent MLP mixes tokens (one MLP shared by every head and channel), replacing
        # agent attention's 2D pooling of Q: needs the fixed token count N.
        self.agent = nn.Sequential(nn.Linear(n_tokens, n_tokens), nn.GELU(),
                                   nn.Linear(n_tokens, n_agents))
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.mlp = mlp(dim, dropout)

    def qkva(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, N, d) -> Q, K, V (B, h, N, c) and agent tokens A (B, h, n, c)."""
        q, k, v = (split_heads(t, self.heads) for t in self.to_qkv(self.norm(x)).chunk(3, -1))
        a = self.agent(q.transpose(-1, -2)).transpose(-1, -2)  # over the token axis of Q
        return q, k, v, a

    @staticmethod
    def aggregation_map(a: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """M_AK = softmax over tokens of alpha A K^T: A (B, h, n, c), K (B, h, N, c) ->
        (B, h, n, N)."""
        return torch.softmax(a @ k.transpose(-1, -2) / math.sqrt(k.shape[-1]), dim=-1)

    @staticmethod
    def broadcast_map(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """M_QA = softmax over agents of alpha Q A^T: Q (B, h, N, c), A (B, h, n, c) ->
        (B, h, N, n)."""
        return torch.softmax(q @ a.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)

    def finish(self, x: torch.Tensor, m_qa: torch.Tensor, m_ak: torch.Tensor,
               v: torch.Tensor) -> torch.Tensor:
        """Agent aggregation with M_AK (B, h, n, N), broadcast with M_QA (B, h, N, n), then
        residual, MLP: -> (B, N, d)."""
        v_agents = m_ak @ v  # (B, h, n, c)
        x = x + self.drop(self.proj(merge_heads(m_qa @ v_agents)))
        return x + self.mlp(self.norm_mlp(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain (single-stream) agent attention block: x (B, N, d) -> (B, N, d)."""
        q, k, v, a = self.qkva(x)
        return self.finish(x, self.broadcast_map(q, a), self.aggregation_map(a, k), v)


class CrossStreamBlock(nn.Module):
    """One agent-attention block per stream, the ``target`` stream fused with the others.

    Streams are keyed by name; every stream has its own weights.  With a ``target`` (the
    visual stream) and at least one other stream:

    - CATF (``catf``): A^target <- avg_fuse(A^target, sum of the other streams' A); the fused
      agent tokens replace the target's own in both its aggregation and its broadcast map;
    - CAAF (``caaf``): M_QA^target <- avg_fuse(M_QA^target, sum of the other streams' M_QA),
      M_QA^target being computed from the (CATF-fused) agent tokens.

    The other streams run unfused.  No target, or both flags off: independent blocks.
    """

    def __init__(self, n_tokens: dict[str, int], target: str | None, caaf: bool, catf: bool,
                 dim: int, n_agents: int, heads: int, dropout: float,
                 caaf_map: str = "broadcast"):
        super().__init__()
        self.target, self.caaf, self.catf, self.caaf_map = target, caaf, catf, caaf_map
        self.streams = nn.ModuleDict({s: AgentAttention(dim, n, n_agents, heads, dropout)
                                      for s, n in n_tokens.items()})

    def forward(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{stream: (B, N_s, d)} -> {stream: (B, N_s, d)}, same keys."""
        parts = {s: self.streams[s].qkva(x) for s, x in tokens.items()}
        bmaps = {s: AgentAttention.broadcast_map(p[0], p[3]) for s, p in parts.items()}
        amaps = {s: AgentAttention.aggregation_map(p[3], p[1]) for s, p in parts.items()}
        others = [s for s in parts if s != self.target]
        if self.target in parts and others:
            q, k, v, a = parts[self.target]
            if self.catf:
                a = avg_fuse(a, sum(parts[s][3] for s in others))
                parts[self.target] = (q, k, v, a)
                bmaps[self.target] = AgentAttention.broadcast_map(q, a)
                amaps[self.target] = AgentAttention.aggregation_map(a, k)
            if self.caaf:
                maps = bmaps if self.caaf_map == "broadcast" else amaps
                maps[self.target] = avg_fuse(maps[self.target], sum(maps[s] for s in others))
        return {s: self.streams[s].finish(tokens[s], bmaps[s], amaps[s], parts[s][2])
                for s in tokens}
