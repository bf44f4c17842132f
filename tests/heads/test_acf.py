"""ACF: the two pooled branches, and L_s / L_d on globally pooled features."""

from __future__ import annotations

import pytest
import torch

from vidattn.heads.acf import ACF, Config, build, diff, sim
from vidattn.heads.actx import Config as ActXConfig

D, K = 16, 3


def _fmap(b=2, d=D, t=4, h=3, w=5, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, t, h, w, generator=g).relu()


def _head(**kw) -> ACF:
    torch.manual_seed(0)
    return build(Config(in_channels=D, num_classes=K, dropout=0.0, **kw)).eval()


def _perturb(head: ACF, seed: int = 1) -> None:
    """Move both branches off the identity so gradients and losses are generic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(head.theta_a.parameters()) + list(head.theta_c.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_defaults_follow_actx():
    cfg = Config()
    assert (cfg.xi, cfg.lambda_s, cfg.lambda_d) == (ActXConfig.xi, ActXConfig.lambda_s,
                                                    ActXConfig.lambda_d)
    assert (cfg.in_channels, cfg.num_classes, cfg.multilabel) == (1024, 4, False)
    assert ACF.uses_conjugates is True and ACF.map_names == ()


def test_sim_and_diff():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # cos = 1, 0, 1/sqrt(2)
    torch.testing.assert_close(sim(x, z, 0.5), torch.tensor([0.5, 0.0, 2 ** -0.5 - 0.5]))
    torch.testing.assert_close(diff(x, z), torch.tensor([0.0, 1.0, 1 - 2 ** -0.5]))


def test_shapes_and_branches_start_as_identity():
    head = _head()
    x = _fmap()
    out = head(x)
    assert out["logits"].shape == (2, K)
    assert out["f_a"].shape == out["f_c"].shape == (2, D)
    # zero-initialised convs on a non-negative map: both branches are plain average pooling
    torch.testing.assert_close(out["f_a"], x.mean((2, 3, 4)))
    torch.testing.assert_close(out["f_c"], x.mean((2, 3, 4)))
    w = head.fc.weight
    expect = x.mean((2, 3, 4)) @ (w[:, :D] + w[:, D:]).T + head.fc.bias
    torch.testing.assert_close(out["logits"], expect)


def test_identical_conjugate_gives_no_context_loss_and_full_action_loss():
    head = _head(xi=0.5)
    x = _fmap()
    target = torch.tensor([0, 2])
    loss, parts = head.loss(head(x), x, target, x.clone())
    assert parts["L_d"] == pytest.approx(0.0, abs=1e-6)
    assert parts["L_s"] == pytest.approx(0.5, abs=1e-6)  # 1 - xi: cos(f_a, f_a') = 1
    assert loss.item() == pytest.approx(parts["L_c"] + 0.5, abs=1e-5)
    # the weights scale the terms
    loss2, _ = _head(xi=0.2, lambda_s=2.0, lambda_d=3.0).loss(head(x), x, target, x.clone())
    assert loss2.item() == pytest.approx(parts["L_c"] + 2.0 * 0.8, abs=1e-5)


def test_disjoint_support_gives_no_action_loss():
    x = torch.zeros(2, D, 2, 3, 3)
    conj = torch.zeros(2, D, 5, 2, 4)  # another size: pooled vectors are still comparable
    g = torch.Generator().manual_seed(3)
    x[:, : D // 2] = torch.rand(2, D // 2, 2, 3, 3, generator=g) + 0.1
    conj[:, D // 2 :] = torch.rand(2, D - D // 2, 5, 2, 4, generator=g) + 0.1
    head = _head()
    _, parts = head.loss(head(x), x, torch.tensor([0, 1]), conj)
    assert parts["L_s"] == 0.0  # cos = 0 < xi
    assert parts["L_d"] == pytest.approx(1.0, abs=1e-6)  # contexts orthogonal: maximal diff


def test_without_conjugates_only_classification():
    head = _head()
    x = _fmap()
    loss, parts = head.loss(head(x), x, torch.tensor([1, 2]))
    assert set(parts) == {"L_c"}
    assert loss.item() == pytest.approx(parts["L_c"])


def _grads(head: ACF, term: torch.Tensor) -> dict[str, float]:
    head.zero_grad()
    term.backward()
    return {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0)
            for n, p in head.named_parameters()}


def test_each_conjugate_loss_reaches_only_its_branch():
    head = _head()
    _perturb(head)
    x, conj = _fmap(seed=4), _fmap(t=6, h=2, w=4, seed=5)
    out = head(x)
    l_s, l_d = head.conjugate_losses(out["f_a"], out["f_c"], conj)
    assert l_s.item() > 0  # the hinge is active, so a gradient must exist
    g_s = _grads(head, l_s)
    assert g_s["theta_a.conv.weight"] > 0 and g_s["theta_c.conv.weight"] == 0
    assert g_s["fc.weight"] == 0
    out = head(x)
    _, l_d = head.conjugate_losses(out["f_a"], out["f_c"], conj)
    g_d = _grads(head, l_d)
    assert g_d["theta_c.conv.weight"] > 0 and g_d["theta_a.conv.weight"] == 0
    assert g_d["fc.weight"] == 0


def test_conjugate_of_another_size_and_mismatched_batch():
    head = _head()
    x = _fmap(b=3)
    out = head(x)
    loss, parts = head.loss(out, x, torch.tensor([0, 1, 2]), _fmap(b=3, t=7, h=1, w=2))
    assert torch.isfinite(loss) and {"L_c", "L_s", "L_d"} == set(parts)
    with pytest.raises(ValueError, match="do not pair"):
        head.loss(out, x, torch.tensor([0, 1, 2]), _fmap(b=2))


def test_training_separates_the_branches():
    """A fixed context shared with the conjugate, plus an action only the clip has.

    The losses should make the action branch unlike the conjugate and keep the context
    branch like it; both start at the identity, where cos(f_a, f_a') is well above xi.
    """
    torch.manual_seed(6)
    head = build(Config(in_channels=D, num_classes=2, dropout=0.0, xi=0.1))
    g = torch.Generator().manual_seed(7)
    n = 8
    context = torch.rand(n, D, 3, 2, 2, generator=g)
    action = torch.zeros(n, D, 3, 2, 2)
    action[:, :4] = 2 * torch.rand(n, 4, 3, 2, 2, generator=g)
    x, conj = (context + action), context + 0.05 * torch.rand(n, D, 3, 2, 2, generator=g)
    y = torch.arange(n) % 2
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    _, first = head.loss(head(x), x, y, conj)
    for _ in range(100):
        opt.zero_grad()
        loss, parts = head.loss(head(x), x, y, conj)
        loss.backward()
        opt.step()
    assert first["L_s"] > 0.3
    assert parts["L_s"] < 0.5 * first["L_s"]
    assert parts["L_d"] < 0.05
