"""ActX: the maps of eqs. (5)-(6), soft matching (2) and the conjugate losses (3)-(4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidattn.heads.actx import (
    ActX,
    Config,
    attnorm,
    build,
    build_nosatt,
    conjugate_losses,
    percent,
    soft_match,
    weighted_mean,
)

D = 16


def _fmap(b=2, d=D, t=4, h=3, w=5, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, t, h, w, generator=g).relu()


def _head(**kw) -> ActX:
    torch.manual_seed(0)
    return build(Config(in_channels=D, num_classes=3, dropout=0.0, **kw)).eval()


# ------------------------------------------------------------------- normalisations
@pytest.mark.parametrize("rho", [10.0, 30.0, 50.0, 75.0])
def test_percent_leaves_rho_percent_positive(rho):
    g = torch.Generator().manual_seed(1)
    x = torch.stack([torch.randn(1000, generator=g), torch.rand(1000, generator=g) * 50 + 3])
    out = percent(x.view(2, 10, 10, 10), rho)
    assert out.shape == (2, 10, 10, 10)
    positive = (out > 0).flatten(1).sum(1)
    for n in positive.tolist():
        assert abs(n - 10 * rho) <= 1
    # a shift, not a rescale: differences between values are kept
    torch.testing.assert_close(out.flatten(1) - x, (out.flatten(1) - x)[:, :1].expand(2, 1000))


def test_attnorm_standardises_each_sample():
    g = torch.Generator().manual_seed(2)
    scale = torch.tensor([1.0, 10.0, 0.1])[:, None, None, None]
    x = torch.randn(3, 4, 5, 6, generator=g) * scale + torch.tensor([0.0, -5.0, 3.0])[:, None,
                                                                                      None, None]
    y = attnorm(x)
    assert y.shape == x.shape
    flat = y.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(3), atol=2e-3, rtol=0)
    # a constant map does not divide by zero
    assert torch.isfinite(attnorm(torch.ones(1, 2, 2, 2))).all()


def test_weighted_mean():
    fmap = _fmap(b=2, d=3, t=2, h=2, w=2)
    w = torch.zeros(2, 2, 2, 2)
    w[0, 1, 0, 1] = 2.0
    w[1] = 1.0
    got = weighted_mean(fmap, w)
    torch.testing.assert_close(got[0], fmap[0, :, 1, 0, 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], fmap[1].mean((1, 2, 3)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the maps
def test_maps_of_eqs_5_and_6():
    head = _head()
    out = head(_fmap())
    s, c, s_act, s_att = out["S"], out["C"], out["S_act"], out["S_att"]
    for m in (s, c, s_act, s_att):
        assert m.shape == (2, 4, 3, 5)
    torch.testing.assert_close(s_att.flatten(1).sum(1), torch.ones(2))
    assert (s_att > 0).all()
    torch.testing.assert_close(c, 1 - s_act)
    torch.testing.assert_close(s, s_act * s_att)
    assert ((s_act > 0) & (s_act < 1)).all()
    # alpha = 1 and rho = 30: about 30 % of the voxels sit above 1/2
    frac = (s_act > 0.5).float().flatten(1).mean(1)
    assert ((frac - 0.3).abs() <= 1 / 60 + 1e-6).all()


def test_large_alpha_makes_s_act_binary():
    head = _head(alpha=1e4, rho=30.0)
    out = head(_fmap(t=10, h=10, w=10, seed=3))
    s_act = out["S_act"].flatten(1)
    binary = ((s_act < 1e-3) | (s_act > 1 - 1e-3)).float().mean()
    assert binary > 0.99
    ones = (s_act > 0.5).sum(1)
    assert ((ones - 300).abs() <= 1).all()


def test_beta_zero_is_average_pooling():
    out = _head(beta=0.0)(_fmap())
    torch.testing.assert_close(out["S_att"], torch.full_like(out["S_att"], 1 / 60))


def test_nosatt_ablation():
    torch.manual_seed(0)
    head = build_nosatt(Config(in_channels=D, num_classes=3, use_satt=True)).eval()
    assert head.cfg.use_satt is False and head.psi is None
    out = head(_fmap())
    torch.testing.assert_close(out["S"], out["S_act"])
    torch.testing.assert_close(out["C"], 1 - out["S_act"])
    torch.testing.assert_close(out["S_att"], torch.full_like(out["S_att"], 1 / 60))
    assert not any(n.startswith("psi") for n, _ in head.named_parameters())


def test_theta_starts_as_identity():
    head = _head()
    assert head.theta.weight.abs().sum() == 0 and head.theta.bias.abs().sum() == 0
    fmap = torch.randn(2, D, 4, 3, 5)  # signed, so relu matters
    th = F.relu(fmap + head.theta(fmap))
    torch.testing.assert_close(th, fmap.relu())
    uniform = torch.ones(2, 4, 3, 5)
    torch.testing.assert_close(weighted_mean(th, uniform), fmap.relu().mean((2, 3, 4)),
                               rtol=1e-5, atol=1e-5)
    # the logits are the linear layer on [F_s, F_c], the S- and C-weighted means of relu(F)
    out = head(fmap)
    f_s = weighted_mean(fmap.relu(), out["S"])
    f_c = weighted_mean(fmap.relu(), out["C"])
    torch.testing.assert_close(out["logits"], head.fc(torch.cat([f_s, f_c], 1)))


# --------------------------------------------------------------------- soft matching
def _cos_matrix(a, b):
    return F.normalize(a, dim=0).T @ F.normalize(b, dim=0)


def test_soft_match_large_gamma_is_nearest_neighbour():
    g = torch.Generator().manual_seed(4)
    fset = torch.randn(1, D, 9, generator=g) * (torch.rand(1, 1, 9, generator=g) * 5 + 0.1)
    # queries: rescaled, slightly noisy copies of set members (in another order)
    nearest = torch.tensor([4, 0, 7, 7, 2, 8])
    fk = fset[:, :, nearest] * 3 + 0.05 * torch.randn(1, D, 6, generator=g)
    cos = _cos_matrix(fk[0], fset[0])
    assert cos.argmax(1).tolist() == nearest.tolist()
    top2 = cos.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 0.05  # nearest neighbours are unambiguous
    got = soft_match(fk, fset, gamma=2000.0)
    assert got.shape == (1, 6, D)
    want = fset[0][:, cos.argmax(1)].T  # (N, D), unnormalised vectors of the set
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-4)


def test_soft_match_gamma_zero_is_the_mean():
    fk, fset = torch.randn(2, D, 5), torch.randn(2, D, 7)
    got = soft_match(fk, fset, gamma=0.0)
    want = fset.mean(2)[:, None, :].expand(2, 5, D)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_soft_match_follows_eq_2():
    g = torch.Generator().manual_seed(5)
    fk, fset = torch.randn(1, 4, 3, generator=g), torch.randn(1, 4, 5, generator=g)
    got = soft_match(fk, fset, gamma=3.0)
    for k in range(3):
        w = torch.softmax(3.0 * _cos_matrix(fk[0, :, k : k + 1], fset[0])[0], 0)
        torch.testing.assert_close(got[0, k], (fset[0] * w).sum(1), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ conjugate losses
def _maps(b, t, h, w, seed=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(b, t, h, w, generator=g) * 0.1
    c = torch.rand(b, t, h, w, generator=g)
    return s, c


def test_identical_conjugate_has_no_difference_and_full_similarity():
    fmap = _fmap(seed=7)
    s, c = _maps(2, 4, 3, 5)
    xi = 0.5
    l_s, l_d = conjugate_losses(fmap, fmap.clone(), s, c, gamma=10.0, xi=xi)
    assert l_d.item() == pytest.approx(0.0, abs=1e-5)
    assert l_s.item() == pytest.approx(1 - xi, rel=1e-4)
    l_s, _ = conjugate_losses(fmap, fmap.clone(), s, c, gamma=10.0, xi=0.8)
    assert l_s.item() == pytest.approx(0.2, rel=1e-4)


def test_orthogonal_conjugate_costs_no_similarity():
    g = torch.Generator().manual_seed(8)
    fmap = torch.zeros(2, D, 4, 3, 5)
    conj = torch.zeros(2, D, 2, 3, 3)  # another size: allowed
    fmap[:, : D // 2] = torch.rand(2, D // 2, 4, 3, 5, generator=g) + 0.1
    conj[:, D // 2 :] = torch.rand(2, D // 2, 2, 3, 3, generator=g) + 0.1
    s, c = _maps(2, 4, 3, 5)
    l_s, l_d = conjugate_losses(fmap, conj, s, c, gamma=10.0, xi=0.5)
    assert l_s.item() == 0.0  # cos = 0 < xi: clamped
    assert l_d.item() == pytest.approx(1.0, rel=1e-4)  # diff = 1 - 0 everywhere


def test_conjugate_losses_follow_eqs_3_and_4():
    """A loop-by-loop reading of eqs. (2)-(4) against the vectorised implementation."""
    g = torch.Generator().manual_seed(9)
    fmap = torch.rand(2, 5, 2, 2, 2, generator=g)
    conj = torch.rand(2, 5, 3, 1, 2, generator=g)
    s, c = _maps(2, 2, 2, 2, seed=10)
    gamma, xi = 4.0, 0.9
    l_s, l_d = conjugate_losses(fmap, conj, s, c, gamma, xi)

    def eta(f_k, fset):
        w = torch.softmax(torch.stack([gamma * F.cosine_similarity(f_k, f_j, dim=0)
                                       for f_j in fset.T]), 0)
        return sum(wj * f_j for wj, f_j in zip(w, fset.T))

    want_s, want_d = [], []
    for b in range(2):
        fk, fc = fmap[b].flatten(1), conj[b].flatten(1)
        sb, cb = s[b].flatten(), c[b].flatten()
        cos = torch.stack([F.cosine_similarity(eta(fk[:, k], fk), eta(fk[:, k], fc), dim=0)
                           for k in range(fk.shape[1])])
        want_s.append((sb * (cos - xi).clamp(min=0)).sum() / sb.sum())
        want_d.append((cb * (1 - cos)).sum() / cb.sum())
    assert l_s.item() == pytest.approx(torch.stack(want_s).mean().item(), rel=1e-3, abs=1e-6)
    assert l_d.item() == pytest.approx(torch.stack(want_d).mean().item(), rel=1e-3, abs=1e-6)
    assert l_d.item() > 0


def test_loss_combines_the_terms_of_eq_1():
    head = _head(lambda_s=2.0, lambda_d=0.5)
    fmap, conj = _fmap(seed=11), _fmap(seed=12, t=3)
    target = torch.tensor([0, 2])
    out = head(fmap)
    total, parts = head.loss(out, fmap, target, conj)
    assert set(parts) == {"L_c", "L_s", "L_d"}
    expected = parts["L_c"] + 2.0 * parts["L_s"] + 0.5 * parts["L_d"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["L_c"] == pytest.approx(F.cross_entropy(out["logits"], target).item())
    only_c, parts = head.loss(out, fmap, target)
    assert set(parts) == {"L_c"}
    assert only_c.item() == pytest.approx(parts["L_c"])
