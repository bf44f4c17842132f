"""The fit loop's optimiser: torch's fused AdamW must make the reference AdamW's updates."""

import torch
from torch import nn

from vidattn.tasks.fit import FitConfig, optimizer


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.LayerNorm(5), nn.Linear(5, 3))


def test_fused_optimizer_makes_the_reference_updates():
    cfg = FitConfig(lr=1e-2, weight_decay=1e-2)
    a, b = _net(0), _net(0)
    opt = optimizer(a, cfg)
    assert opt.defaults["fused"]  # float parameters on the CPU: the fused kernel
    ref = torch.optim.AdamW(b.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            foreach=False, fused=False)
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    for _ in range(5):
        for net, o in ((a, opt), (b, ref)):
            o.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    moved = sum(float((p - q).abs().sum()) for p, q in zip(a.parameters(), _net(0).parameters()))
    assert moved > 0.01  # the updates were made, not skipped


def test_optimizer_leaves_frozen_parameters_out():
    net = _net(1)
    net[0].weight.requires_grad_(False)
    opt = optimizer(net, FitConfig())
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(net[0].weight) not in held
    assert held == {id(p) for p in net.parameters() if p.requires_grad}
