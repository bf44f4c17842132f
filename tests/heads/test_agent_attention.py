"""The agent attention of RefAtomNet (vidattn/heads/agent_attention.py) against hand
computations: the AVG fusion, the two-softmax agent attention of one stream, and a
cross-stream block fusing the visual stream with CAAF and CATF."""

from __future__ import annotations

import math

import pytest
import torch

from vidattn.heads.agent_attention import AgentAttention, CrossStreamBlock, avg_fuse, mlp


def test_avg_fuse_against_a_hand_computation():
    own = torch.tensor([[4.0, 8.0], [12.0, 16.0]])
    others = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    # sigma_c (last axis): [[1/4, 3/4], [1/2, 1/2]];  sigma_t (axis -2): [[1/2, 3/4], [1/2, 1/4]]
    # AVG = (X + [[1, 6], [6, 8]] + [[2, 6], [6, 4]]) / 3
    want = torch.tensor([[7.0, 20.0], [24.0, 28.0]]) / 3
    assert torch.allclose(avg_fuse(own, others), want)
    # batched leading axes are carried along
    assert torch.allclose(avg_fuse(own.expand(2, 3, 2, 2), others.expand(2, 3, 2, 2))[1, 2], want)


def test_mlp_drops_out_its_output_only_and_keeps_its_weight_keys():
    torch.manual_seed(0)
    m = mlp(4, 0.5).train()
    # the keys weights saved before the hidden dropout went still load
    assert list(m.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    x = torch.randn(64, 4)
    hidden = m[1](m[0](x))
    assert torch.equal(m[2](hidden), hidden)  # no mask over the hidden layer
    out = m(x)
    plain = m[3](hidden)
    kept = out != 0
    assert 0.3 < kept.float().mean() < 0.7  # the output is masked at p = 0.5 ...
    torch.testing.assert_close(out[kept], 2 * plain[kept])  # ... and rescaled


def test_one_stream_agent_attention_is_the_two_softmax_formula():
    torch.manual_seed(0)
    block = AgentAttention(dim=8, n_tokens=5, n_agents=3, heads=2, dropout=0.0).eval()
    x = torch.randn(2, 5, 8)
    q, k, v, a = block.qkva(x)
    assert q.shape == k.shape == v.shape == (2, 2, 5, 4) and a.shape == (2, 2, 3, 4)
    # A is an MLP over the token axis of Q: per head and channel, one vector of N values
    qt = q.transpose(-1, -2)
    assert torch.allclose(a, block.agent(qt).transpose(-1, -2))
    alpha = 1 / math.sqrt(4)
    v_a = torch.softmax(alpha * a @ k.transpose(-1, -2), dim=-1) @ v  # agent aggregation
    o = torch.softmax(alpha * q @ a.transpose(-1, -2), dim=-1) @ v_a  # agent broadcast
    y = x + block.proj(o.transpose(1, 2).reshape(2, 5, 8))
    y = y + block.mlp(block.norm_mlp(y))
    with torch.no_grad():
        assert torch.allclose(block(x), y, atol=1e-6)


@pytest.mark.parametrize("caaf_map", ["broadcast", "aggregation"])
@pytest.mark.parametrize("caaf,catf", [(True, False), (False, True), (True, True)])
def test_cross_stream_block_fuses_the_visual_stream_as_documented(caaf, catf, caaf_map):
    torch.manual_seed(0)
    n_tokens = {"visual": 6, "text": 6, "location": 6}
    block = CrossStreamBlock(n_tokens, "visual", caaf, catf, dim=8, n_agents=3, heads=2,
                             dropout=0.0, caaf_map=caaf_map).eval()
    x = {s: torch.randn(2, 6, 8) for s in n_tokens}
    with torch.no_grad():
        got = block(x)
        p = {s: block.streams[s].qkva(x[s]) for s in x}
        q, k, v, a = p["visual"]
        if catf:
            a = avg_fuse(a, p["text"][3] + p["location"][3])
        m_qa = AgentAttention.broadcast_map(q, a)  # (B, h, N, n)
        m_ak = AgentAttention.aggregation_map(a, k)  # (B, h, n, N)
        assert m_qa.shape == (2, 2, 6, 3) and m_ak.shape == (2, 2, 3, 6)
        if caaf and caaf_map == "broadcast":
            m_t, m_l = (AgentAttention.broadcast_map(p[s][0], p[s][3])
                        for s in ("text", "location"))
            m_qa = avg_fuse(m_qa, m_t + m_l)
        if caaf and caaf_map == "aggregation":
            m_t, m_l = (AgentAttention.aggregation_map(p[s][3], p[s][1])
                        for s in ("text", "location"))
            m_ak = avg_fuse(m_ak, m_t + m_l)
        want = block.streams["visual"].finish(x["visual"], m_qa, m_ak, v)
        assert torch.allclose(got["visual"], want, atol=1e-6)
        # the other streams run unfused
        for s in ("text", "location"):
            assert torch.allclose(got[s], block.streams[s](x[s]), atol=1e-6)
    if caaf:  # the two readings differ
        other = "aggregation" if caaf_map == "broadcast" else "broadcast"
        torch.manual_seed(0)
        alt = CrossStreamBlock(n_tokens, "visual", caaf, catf, dim=8, n_agents=3, heads=2,
                               dropout=0.0, caaf_map=other).eval()
        with torch.no_grad():
            assert not torch.allclose(alt(x)["visual"], got["visual"], atol=1e-5)
