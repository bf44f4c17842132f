"""Every registered head honours the head contract of vidattn/heads/common.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vidattn.options import parse_options
from vidattn.pipeline.runs import build_head
from vidattn.registry import HEADS, head_config_class, head_trainer

# heads trained by gradient descent; the others (lightgbm) have their own conformance test
TORCH_HEADS = sorted(n for n in HEADS if head_trainer(n) == "torch")

D, K, B, T, H, W = 64, 4, 4, 4, 3, 3


def _head(name: str, multilabel: bool = False, **options: str):
    cfg = parse_options(head_config_class(name), options, num_classes=K, multilabel=multilabel,
                        in_channels=D)
    return build_head(name, cfg)


def _conj(head, seed: int = 0):
    if not head.uses_conjugates:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, T - 1, H + 1, W, generator=g).relu()  # any size is allowed


def test_registry_is_not_empty():
    assert {"actx", "avgpool"} <= set(HEADS)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_config_is_a_frozen_dataclass_with_the_common_fields(name):
    cls = head_config_class(name)
    assert dataclasses.is_dataclass(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert {"in_channels", "num_classes", "multilabel"} <= fields
    if head_trainer(name) == "torch":
        assert "dropout" in fields
    cfg = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_classes = 7


@pytest.mark.parametrize("name", TORCH_HEADS)
def test_forward_shapes(name):
    torch.manual_seed(0)
    head = _head(name).eval()
    x = torch.randn(B, D, T, H, W).relu()
    out = head(x)
    assert out["logits"].shape == (B, K)
    assert torch.isfinite(out["logits"]).all()
    assert isinstance(head.map_names, tuple)
    for m in head.map_names:
        assert out[m].shape == (B, T, H, W), m
        assert torch.isfinite(out[m]).all()
    # maps follow the input's size: another (T, H, W) works too
    other = head(torch.randn(2, D, 6, 5, 2).relu())
    assert other["logits"].shape == (2, K)
    for m in head.map_names:
        assert other[m].shape == (2, 6, 5, 2)


@pytest.mark.parametrize("name", TORCH_HEADS)
def test_backward_gives_finite_gradients(name):
    torch.manual_seed(1)
    head = _head(name).train()
    x = torch.randn(B, D, T, H, W).relu()
    target = torch.tensor([0, 1, 2, 3])
    out = head(x)
    loss, parts = head.loss(out, x, target, _conj(head))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert "L_c" in parts and all(isinstance(v, float) for v in parts.values())
    if head.uses_conjugates:
        assert {"L_s", "L_d"} <= set(parts)
    loss.backward()
    params = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    assert params
    for n, p in params:
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
    assert any(p.grad.abs().sum() > 0 for _, p in params)


def _learnable(n: int, seed: int):
    """n random maps whose class shows as a class-dependent mean shift of the features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    shift = torch.randn(K, D, generator=g)
    x = torch.randn(n, D, T, H, W, generator=g) + shift[labels][:, :, None, None, None]
    return x.relu(), labels


@pytest.mark.parametrize("name", TORCH_HEADS)
def test_overfits_sixteen_samples(name):
    torch.manual_seed(2)
    head = _head(name, dropout="0")
    assert head.cfg.dropout == 0.0
    x, y = _learnable(16, seed=3)
    g = torch.Generator().manual_seed(4)
    conj = torch.randn(16, D, T, H, W, generator=g).relu() if head.uses_conjugates else None
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    head.train()
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss, _ = head.loss(head(x), x, y, conj)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
    head.eval()
    with torch.no_grad():
        acc = (head(x)["logits"].argmax(1) == y).float().mean().item()
    assert acc == 1.0


@pytest.mark.parametrize("name", TORCH_HEADS)
def test_multilabel_trains(name):
    torch.manual_seed(5)
    head = _head(name, multilabel=True, dropout="0")
    assert head.cfg.multilabel
    x, y = _learnable(8, seed=6)
    target = torch.nn.functional.one_hot(y, K).float()
    target[::2, (y[::2] + 1) % K] = 1.0  # every other sample has two labels
    conj = torch.randn(8, D, T, H, W).relu() if head.uses_conjugates else None
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss, parts = head.loss(head(x), x, target, conj)
        loss.backward()
        opt.step()
        losses.append(parts["L_c"])
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]
    # BCE, not cross-entropy: a float multi-hot target of the logits' shape is accepted
    out = head(x)
    assert out["logits"].shape == target.shape


@pytest.mark.parametrize("multilabel", [False, True])
def test_lightgbm_fits_sixteen_samples_and_round_trips(multilabel, tmp_path):
    from vidattn.heads.lightgbm import LightGBMHead, pooled

    head = _head("lightgbm", multilabel=multilabel, min_child_samples="1")
    x, y = _learnable(16, seed=3)
    target = torch.nn.functional.one_hot(y, K).float().numpy() if multilabel else y.numpy()
    history = head.fit(pooled(x), target, pooled(x), target)
    assert history and all(np.isfinite(h["val_loss"]) for h in history)
    scores = head(x)["logits"]
    assert scores.shape == (16, K) and torch.isfinite(scores).all()
    assert (scores.argmax(1) == y).float().mean().item() == 1.0
    head.save(tmp_path)
    again = LightGBMHead.load(head.cfg, tmp_path)
    assert torch.allclose(again(x)["logits"], scores)
    assert head.n_params() > 0 and not head.map_names and not head.uses_conjugates


def test_head_tests_run_single_threaded():
    assert torch.get_num_threads() == 1  # the directory's autouse fixture is in force
