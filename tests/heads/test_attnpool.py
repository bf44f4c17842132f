"""Attentional pooling: the rank-1 score, its maps, and its initialisation."""

from __future__ import annotations

import torch

from vidattn.heads.attnpool import AttnPool, Config, build
from vidattn.heads.avgpool import AvgPool
from vidattn.heads.avgpool import Config as AvgConfig

D, K = 6, 3


def _fmap(b=2, d=D, t=3, h=2, w=4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, t, h, w, generator=g).relu()


def _head(**kw) -> AttnPool:
    torch.manual_seed(0)
    return build(Config(in_channels=D, num_classes=K, dropout=0.0, **kw)).eval()


def _set(head: AttnPool, seed: int = 1, b0: float = 0.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.top_down.copy_(torch.randn(K, D, generator=g))
        head.bottom_up.copy_(torch.randn(D, generator=g))
        head.bias.copy_(torch.randn(K, generator=g))
        head.bottom_up_bias.fill_(b0)


def test_contract_attributes():
    assert AttnPool.uses_conjugates is False
    assert AttnPool.map_names == ("bottom_up", "top_down")
    cfg = Config()
    assert (cfg.in_channels, cfg.num_classes, cfg.multilabel) == (1024, 4, False)


def test_score_is_the_hand_computed_rank_one_form():
    head = _head()
    # a tiny input, written out: B = 1, D = 2, two voxels
    with torch.no_grad():
        head_small = build(Config(in_channels=2, num_classes=2, dropout=0.0)).eval()
        head_small.top_down.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]]))
        head_small.bottom_up.copy_(torch.tensor([2.0, 1.0]))
        head_small.bottom_up_bias.fill_(0.0)
        head_small.bias.copy_(torch.tensor([0.25, -0.5]))
    x = torch.tensor([[1.0, 3.0], [2.0, 0.0]]).reshape(1, 2, 1, 1, 2)  # x_1=(1,2), x_2=(3,0)
    # X b = (4, 6); X a_0 = (1, 3); X a_1 = (-1.5, 1.5)
    # score_0 = (1*4 + 3*6)/2 + 0.25 = 11.25; score_1 = (-6 + 9)/2 - 0.5 = 1.0
    out = head_small(x)
    torch.testing.assert_close(out["logits"], torch.tensor([[11.25, 1.0]]))
    torch.testing.assert_close(out["bottom_up"], torch.tensor([4.0, 6.0]).view(1, 1, 1, 2))
    torch.testing.assert_close(out["top_down"], torch.tensor([1.0, 3.0]).view(1, 1, 1, 2))

    # the same on random weights with the matrix form, b0 included
    _set(head, b0=0.7)
    x = _fmap()
    xm = x.flatten(2).transpose(1, 2)  # (B, n, D)
    n = xm.shape[1]
    bottom = xm @ head.bottom_up + 0.7  # (B, n)
    top = xm @ head.top_down.T  # (B, n, K)
    expect = (top * bottom[:, :, None]).sum(1) / n + head.bias
    torch.testing.assert_close(head(x)["logits"], expect)


def test_maps_have_the_input_size_and_top_down_is_the_predicted_class():
    head = _head()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a_k picks out channel k, so a boosted channel decides the class
        head.top_down.copy_(2 * torch.eye(K, D) + 0.1 * torch.randn(K, D, generator=g))
        head.bottom_up.copy_(torch.rand(D, generator=g) + 0.5)
        head.bottom_up_bias.fill_(0.3)
        head.bias.zero_()
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    for size in [(3, 2, 4), (5, 1, 2)]:
        x = _fmap(b=6, t=size[0], h=size[1], w=size[2], seed=3)
        x[torch.arange(6), labels] += 3.0
        out = head(x)
        assert out["logits"].shape == (6, K)
        assert out["bottom_up"].shape == out["top_down"].shape == (6, *size)
        torch.testing.assert_close(out["bottom_up"],
                                   torch.einsum("bdthw,d->bthw", x, head.bottom_up) + 0.3)
        pred = out["logits"].argmax(1)
        assert torch.equal(pred, labels)  # every class is predicted: the selection matters
        for i in range(6):
            expect = torch.einsum("dthw,d->thw", x[i], head.top_down[labels[i]])
            torch.testing.assert_close(out["top_down"][i], expect)
            other = head.top_down[(labels[i] + 1) % K]
            assert not torch.allclose(out["top_down"][i],
                                      torch.einsum("dthw,d->thw", x[i], other))


def test_pooling_is_orderless_and_mean_not_sum():
    head = _head()
    _set(head, b0=0.2)
    x = _fmap(b=3, t=4, h=3, w=2, seed=4)
    flat = x.flatten(2)
    perm = torch.randperm(flat.shape[2], generator=torch.Generator().manual_seed(5))
    shuffled = flat[:, :, perm].reshape(3, D, 2, 6, 2)  # another arrangement of the voxels
    out, out2 = head(x), head(shuffled)
    torch.testing.assert_close(out["logits"], out2["logits"])
    # the maps move with the voxels
    torch.testing.assert_close(out2["bottom_up"].flatten(1), out["bottom_up"].flatten(1)[:, perm])
    # repeating the clip in time doubles n but keeps the mean: the logits do not change
    torch.testing.assert_close(head(torch.cat([x, x], dim=2))["logits"], out["logits"])


def test_initialisation_is_average_pooling():
    head = _head()
    avg = AvgPool(AvgConfig(in_channels=D, num_classes=K, dropout=0.0)).eval()
    with torch.no_grad():
        avg.fc.weight.copy_(head.top_down)
        avg.fc.bias.copy_(head.bias)
    x = _fmap(seed=6)
    out = head(x)
    torch.testing.assert_close(out["bottom_up"], torch.ones(2, 3, 2, 4))
    torch.testing.assert_close(out["logits"], avg(x)["logits"])
    # ... and no factor has a vanishing gradient at the start
    loss, parts = head.loss(out, x, torch.tensor([0, 2]))
    assert set(parts) == {"L_c"}
    loss.backward()
    for name in ("top_down", "bottom_up", "bottom_up_bias", "bias"):
        assert getattr(head, name).grad.abs().sum() > 0, name


def test_dropout_mask_is_shared_by_both_projections():
    torch.manual_seed(7)
    head = build(Config(in_channels=D, num_classes=K, dropout=0.5)).train()
    _set(head)
    x = _fmap(seed=8) + 0.5  # all positive, so zeros in the dropped input come from dropout
    torch.manual_seed(9)
    out = head(x)
    torch.manual_seed(9)
    kept = head.drop(x)
    torch.testing.assert_close(out["bottom_up"], torch.einsum("bdthw,d->bthw", kept,
                                                              head.bottom_up))
    n = x[0, 0].numel()
    top = torch.einsum("bdthw,kd->bkthw", kept, head.top_down)
    expect = torch.einsum("bkthw,bthw->bk", top, out["bottom_up"]) / n + head.bias
    torch.testing.assert_close(out["logits"], expect)
