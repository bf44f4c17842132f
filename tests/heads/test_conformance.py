"""Every registered head honours the head contract of vidattn/heads/common.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vidattn import tasks
from vidattn.options import parse_options
from vidattn.registry import HEADS, head_config_class, head_trainer
from vidattn.tasks.rundir import build_head

# heads trained by gradient descent; the others (lightgbm) have their own conformance test
TORCH_HEADS = sorted(n for n in HEADS
                     if head_trainer(n) == "torch" and tasks.for_head(n).NAME == "classify")

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


def _check_gradients(head, loss, every_parameter: bool) -> None:
    """Backward; every trainable parameter gets a finite gradient, and some (or every) one
    a non-zero gradient."""
    loss.backward()
    params = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    assert params
    for n, p in params:
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
    nonzero = [bool(p.grad.abs().sum() > 0) for _, p in params]
    assert all(nonzero) if every_parameter else any(nonzero)


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
    _check_gradients(head, loss, every_parameter=False)


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


# ---------------------------------------------------------------- referring heads
# Heads of the refer task (TASK = "refer": RefAtomNet and its ablations) read a dict
# batch: the visual map, the referring sentence's token embeddings and the detections, and
# predict the referred person's actions (multi-label) and box.  Their contract:
# forward(batch) -> {"logits" (B, K), "box" (B, 4) x1y1x2y2 in [0, 1], one (B, T, H, W) map per
# name in map_names}; loss(out, batch) -> (scalar, {term: float}).
REFERRING_HEADS = sorted(n for n in HEADS if tasks.for_head(n).NAME == "refer")
E, M, L = 16, 5, 6  # text-embedding width, detections, sentence tokens
# Small sizes keep the tests fast; applied to the fields a head's Config has.
SMALL = {"text_dim": str(E), "dim": "32", "n_tokens": "8", "heads": "2", "n_blocks": "2"}


def _referring_head(name: str, **options: str):
    cls = head_config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    options = {**{k: v for k, v in SMALL.items() if k in fields}, **options}
    cfg = parse_options(cls, options, num_classes=K, multilabel=True, in_channels=D)
    return build_head(name, cfg)


def referring_batch(n: int, seed: int, t: int = T, h: int = H, w: int = W, m: int = M,
                    length: int = L) -> dict[str, torch.Tensor]:
    """A learnable synthetic referring batch of n samples (float32, masks bool).

    The referred person's box is one of the m detections (at a random slot) and is spelt out
    by the sentence's first token (a fixed linear code of the box); the person's classes
    shift the visual features inside the box.  Padding (masked tokens and detections) holds
    garbage; sample 1's detections are all masked (the sentence still tells the box).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    labels = torch.nn.functional.one_hot(y, K).float()
    labels[::2, (y[::2] + 1) % K] = 1.0  # every other sample has two labels
    size = 0.2 + 0.4 * torch.rand(n, 2, generator=g)
    start = torch.rand(n, 2, generator=g) * (1 - size)
    box = torch.cat([start, start + size], 1)  # (n, 4) x1 y1 x2 y2
    cy, cx = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
    in_y = (cy >= box[:, 1:2]) & (cy <= box[:, 3:4])  # (n, h): cell centres inside the box
    in_x = (cx >= box[:, 0:1]) & (cx <= box[:, 2:3])  # (n, w)
    inside = in_y[:, :, None] & in_x[:, None, :]  # (n, h, w)
    shift = 2 * torch.randn(K, D, generator=g)
    visual = torch.randn(n, D, t, h, w, generator=g)
    visual = visual + (labels @ shift)[:, :, None, None, None] * inside[:, None, None].float()
    # detections: random person boxes, the referred one at slot `who`; the last slot pads
    s2 = 0.1 + 0.5 * torch.rand(n, m, 2, generator=g)
    st2 = torch.rand(n, m, 2, generator=g) * (1 - s2)
    xyxy = torch.cat([st2, st2 + s2], 2)
    who = torch.randint(0, m - 1, (n,), generator=g)
    xyxy[torch.arange(n), who] = box
    det_boxes = torch.cat([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2],
                           xyxy], 2)
    det_mask = torch.ones(n, m, dtype=torch.bool)
    det_mask[:, -1] = False
    det_mask[1 % n] = False
    person = torch.randn(E, generator=g)
    det_emb = person.expand(n, m, E).clone()
    garbage = 1e6 * torch.randn(n, m, generator=g)
    det_boxes[~det_mask], det_emb[~det_mask] = garbage[~det_mask, None], garbage[~det_mask, None]
    code = torch.randn(4, E, generator=g)
    text = 0.3 * torch.randn(n, length, E, generator=g)
    text[:, 0] += 4 * (box - 0.5) @ code
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    text_mask = torch.arange(length)[None] < lengths[:, None]
    text[~text_mask] = 1e6
    return {"visual": visual.relu(), "text": text, "text_mask": text_mask,
            "det_boxes": det_boxes, "det_emb": det_emb, "det_scores": torch.rand(n, m, generator=g),
            "det_mask": det_mask, "labels": labels, "box": box}


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of paired x1y1x2y2 boxes (n, 4), (n, 4) -> (n,)."""
    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2]))
    inter = inter.clamp(min=0).prod(1)
    area_a, area_b = ((x[:, 2:] - x[:, :2]).clamp(min=0).prod(1) for x in (a, b))
    return inter / (area_a + area_b - inter)


def test_referring_heads_are_registered():
    assert REFERRING_HEADS  # RefAtomNet and its ablations


@pytest.mark.parametrize("name", REFERRING_HEADS)
def test_referring_forward_shapes(name):
    torch.manual_seed(0)
    head = _referring_head(name).eval()
    assert head.uses_conjugates is False and isinstance(head.map_names, tuple)
    for size in [(T, H, W, M, L), (6, 5, 2, 3, 9)]:  # any map size, detections, length
        t, h, w, m, length = size
        batch = referring_batch(B, seed=0, t=t, h=h, w=w, m=m, length=length)
        with torch.no_grad():
            out = head(batch)
        assert out["logits"].shape == (B, K) and torch.isfinite(out["logits"]).all()
        box = out["box"]
        assert box.shape == (B, 4) and torch.isfinite(box).all()
        assert (box >= 0).all() and (box <= 1).all()
        assert (box[:, :2] <= box[:, 2:]).all()  # x1 <= x2, y1 <= y2
        for name_ in head.map_names:
            assert out[name_].shape == (B, t, h, w), name_
            assert torch.isfinite(out[name_]).all(), name_


@pytest.mark.parametrize("name", REFERRING_HEADS)
def test_referring_backward_gives_finite_gradients(name):
    torch.manual_seed(1)
    head = _referring_head(name).train()
    batch = referring_batch(B, seed=1)  # sample 1 has every detection masked
    loss, parts = head.loss(head(batch), batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert parts and all(isinstance(v, float) for v in parts.values())
    _check_gradients(head, loss, every_parameter=True)  # no trainable parameter is dead


@pytest.mark.parametrize("name", REFERRING_HEADS)
def test_referring_overfits_sixteen_samples(name):
    torch.manual_seed(2)
    head = _referring_head(name, dropout="0")
    assert head.cfg.dropout == 0.0
    batch = referring_batch(16, seed=3)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    head.train()
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss, _ = head.loss(head(batch), batch)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    head.eval()
    with torch.no_grad():
        out = head(batch)
        final, _ = head.loss(out, batch)
    assert final.item() < 0.1 * first
    assert ((out["logits"] > 0).float() == batch["labels"]).all()  # every label, no extra
    assert _box_iou(out["box"], batch["box"]).mean() > 0.8
