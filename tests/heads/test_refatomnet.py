"""RefAtomNet and its ablations: shapes, box range, masking, which inputs reach which stream,
the location tokens, the loss terms, the config (the fusion equations: test_agent_attention.py).

Parameters at the default config with in_channels=1024, num_classes=4 (d=128, N=32, n=4,
h=4, 3 blocks; printed by sum(p.numel() for p in head.parameters())):
    refatomnet          2,838,220  (pointer box and box read-out: +166,272)
    refatomnet-paper    2,671,948
    refatomnet-add      1,641,460
    refatomnet-concat   1,666,996
    refatomnet-noloc    1,953,760  (no pointer: nothing to point at)
    refatomnet-nocaaf   2,838,220  (CAAF and CATF are parameter-free)
    refatomnet-nocatf   2,838,220
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from vidattn import tasks
from vidattn.heads.refatomnet import (
    Config,
    RefAtomNet,
    box_iou,
    build,
    build_add,
    build_concat,
    build_nocaaf,
    build_nocatf,
    build_noloc,
    build_paper,
    decode_box,
    position_features,
)
from vidattn.options import parse_options
from vidattn.registry import head_config_class
from vidattn.tasks.rundir import build_head

D, E, K = 32, 16, 3  # visual channels, text width, classes
SMALL = {"in_channels": D, "text_dim": E, "num_classes": K, "dim": 32, "n_tokens": 8,
         "heads": 2, "n_blocks": 2}
BUILDERS = {"refatomnet": build, "refatomnet-paper": build_paper, "refatomnet-add": build_add,
            "refatomnet-concat": build_concat,
            "refatomnet-noloc": build_noloc, "refatomnet-nocaaf": build_nocaaf,
            "refatomnet-nocatf": build_nocatf}


def _head(builder=build, seed: int = 0, **kw) -> RefAtomNet:
    """A small head in eval mode (dropout off: outputs are deterministic)."""
    torch.manual_seed(seed)
    return builder(Config(**{**SMALL, **kw})).eval()


def _batch(b: int = 3, t: int = 2, h: int = 3, w: int = 4, m: int = 5, length: int = 6,
           seed: int = 0) -> dict[str, torch.Tensor]:
    """Random referring batch; the last detection and the last two tokens of row 0 are masked."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, m, 2, generator=g) * 0.5
    wh = 0.1 + 0.4 * torch.rand(b, m, 2, generator=g)
    det_mask = torch.ones(b, m, dtype=torch.bool)
    det_mask[:, m - 1:] = False
    text_mask = torch.ones(b, length, dtype=torch.bool)
    text_mask[0, -2:] = False
    return {"visual": torch.randn(b, D, t, h, w, generator=g).relu(),
            "text": torch.randn(b, length, E, generator=g), "text_mask": text_mask,
            "det_boxes": torch.cat([xy + wh / 2, wh, xy, xy + wh], dim=2),
            "det_emb": torch.randn(b, m, E, generator=g), "det_scores": torch.rand(b, m),
            "det_mask": det_mask, "labels": (torch.rand(b, K, generator=g) < 0.4).float(),
            "box": torch.tensor([[0.1, 0.2, 0.5, 0.9]]).expand(b, 4).clone()}


def _run(head: RefAtomNet, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return head(batch)


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("logits", "box", "visual_attn"))


# ------------------------------------------------------------------- shapes and ranges
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_shapes_box_range_and_attention_map(name):
    head = _head(BUILDERS[name])
    out = _run(head, _batch(b=3, t=2, h=3, w=4))
    assert out["logits"].shape == (3, K)
    box = out["box"]
    assert box.shape == (3, 4) and (box >= 0).all() and (box <= 1).all()
    assert (box[:, :2] <= box[:, 2:]).all()
    attn = out["visual_attn"]
    assert attn.shape == (3, 2, 3, 4) and (attn >= 0).all()
    assert torch.allclose(attn.sum(dim=(1, 2, 3)), torch.ones(3))  # a distribution
    assert head.map_names == ("visual_attn",) and head.uses_conjugates is False


def test_decode_box_stays_inside_the_frame_for_any_regressor_output():
    raw = torch.tensor([[-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, 1e4, 1e4], [0.0, 0.0, 0.0, 0.0],
                        [30.0, -30.0, 2.0, -2.0]])
    box = decode_box(raw)
    assert torch.isfinite(box).all() and (box >= 0).all() and (box <= 1).all()
    assert (box[:, :2] <= box[:, 2:]).all()
    # raw 0: size 1/2, start halfway through the free 1/2 -> [0.25, 0.75]
    assert torch.allclose(box[2], torch.tensor([0.25, 0.25, 0.75, 0.75]))


def test_box_iou():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2]])
    b = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.5, 0.5, 0.9, 0.9]])
    assert torch.allclose(box_iou(a, b), torch.tensor([1.0, 1 / 3, 0.0]))


# ------------------------------------------------------------------- masking
@pytest.mark.parametrize("name", ["refatomnet", "refatomnet-concat"])
def test_masked_detections_and_tokens_do_not_change_the_output(name):
    head = _head(BUILDERS[name])
    batch = _batch()
    ref = _run(head, batch)
    bad = {k: v.clone() for k, v in batch.items()}
    bad["det_boxes"][~bad["det_mask"]] = float("nan")
    bad["det_emb"][~bad["det_mask"]] = float("inf")
    bad["text"][~bad["text_mask"]] = float("nan")
    assert _same(ref, _run(head, bad))  # bit for bit
    # padding counts as absent: without the (masked) last detection, with one more padded token
    short = {k: (v[:, :-1] if k.startswith("det_") else v) for k, v in batch.items()}
    short["text"] = torch.cat([batch["text"], torch.ones_like(batch["text"][:, :1])], dim=1)
    short["text_mask"] = F.pad(batch["text_mask"], (0, 1), value=False)
    out = _run(head, short)
    assert all(torch.allclose(out[k], ref[k], atol=1e-6) for k in ref)
    # ... while an unmasked detection does count (the assertion above can fail)
    bad["det_boxes"][:, 0] = 1 - bad["det_boxes"][:, 0]
    assert not torch.equal(ref["box"], _run(head, bad)["box"])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_all_masked_rows_and_empty_detections_give_finite_output(name):
    head = _head(BUILDERS[name])
    batch = _batch()
    batch["det_mask"][1] = False  # no person detected in sample 1
    batch["text_mask"][2] = False  # and (never in practice) no sentence in sample 2
    out = _run(head, batch)
    assert all(torch.isfinite(v).all() for v in out.values())
    empty = _batch(m=0)  # no detection at all in the whole batch
    assert all(torch.isfinite(v).all() for v in _run(head, empty).values())
    head.train()
    loss, _ = head.loss(head(batch), batch)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


# ------------------------------------------------------------------- what reaches what
def test_without_location_the_detections_are_not_read():
    head = _head(build_noloc)
    batch = _batch()
    ref = _run(head, batch)
    other = {k: v for k, v in _batch(seed=1).items() if not k.startswith("det_")}
    other.update(visual=batch["visual"], text=batch["text"], text_mask=batch["text_mask"])
    assert _same(ref, _run(head, other))  # no det_* keys at all
    # with the stream, moving the detections moves the output
    full = _head(build)
    moved = dict(batch, det_boxes=batch["det_boxes"].flip(1))
    moved["det_mask"] = torch.ones_like(batch["det_mask"])
    assert not torch.equal(_run(full, batch)["logits"], _run(full, moved)["logits"])


def _visual_tokens(head: RefAtomNet, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return head.encode(batch)[0]["visual"]


@pytest.mark.parametrize("caaf,catf,fused", [(False, False, False), (True, False, True),
                                             (False, True, True), (True, True, True)])
def test_text_reaches_the_visual_stream_only_through_caaf_or_catf(caaf, catf, fused):
    head = _head(caaf=caaf, catf=catf)
    batch = _batch()
    other = dict(batch, text=torch.randn_like(batch["text"]))
    same = torch.equal(_visual_tokens(head, batch), _visual_tokens(head, other))
    assert same != fused
    # the prediction reads every stream (t_agg), fused or not
    assert not torch.equal(_run(head, batch)["logits"], _run(head, other)["logits"])


def test_position_embedding_makes_the_visual_stream_see_where():
    # without it the resampler would be invariant to any permutation of the positions
    head = _head()
    batch = _batch()
    flipped = dict(batch, visual=batch["visual"].flip(-1))
    diff = (_visual_tokens(head, batch) - _visual_tokens(head, flipped)).abs().max()
    assert diff > 1e-2  # ~0.09 here; without the position embedding ~5e-7 (rounding)
    feats = position_features(2, 3, 4)
    assert feats.shape == (24, 27) and torch.unique(feats, dim=0).shape[0] == 24
    assert torch.allclose(feats[5, :3], torch.tensor([0.25, 0.5, 0.375]))  # (t0, y1, x1)


# ------------------------------------------------------------------- location tokens
def test_linear_location_tokens_keep_the_detection_order():
    """ls_tokens="linear": P_LS per detection, then one linear map over the N_o slots."""
    head = _head(ls_tokens="linear", n_detections=7)
    assert "location" not in head.resample and head.location_mix.in_features == 7
    batch = _batch(m=5)
    with torch.no_grad():
        got = head.stream_tokens(batch)[0]["location"]
        ls = torch.cat([batch["det_emb"], batch["det_boxes"]], dim=-1)
        p = torch.where(batch["det_mask"][..., None], head.location_in(ls), 0.0)
        p = torch.cat([p, torch.zeros(p.shape[0], 2, p.shape[2])], dim=1)  # 5 -> 7 slots
        want = torch.einsum("nm,bmd->bnd", head.location_mix.weight, p)
        want = want + head.location_mix.bias[:, None]
        assert got.shape == (3, SMALL["n_tokens"], SMALL["dim"])
        assert torch.allclose(got, want, atol=1e-5)
    # unlike the resampler, the order of the slots matters (DETR's queries, left-to-right
    # annotated persons)
    swapped = dict(batch, det_boxes=batch["det_boxes"].flip(1), det_emb=batch["det_emb"].flip(1),
                   det_mask=batch["det_mask"].flip(1))
    with torch.no_grad():
        assert not torch.allclose(head.stream_tokens(swapped)[0]["location"], got, atol=1e-4)
    with pytest.raises(ValueError, match="n_detections=4"):
        _head(ls_tokens="linear", n_detections=4)(batch)


# ------------------------------------------------------------------- loss
def test_loss_terms():
    head = _head()
    batch = _batch()
    out = _run(head, batch)
    perfect = dict(batch, box=out["box"].clone())
    loss, parts = head.loss(out, perfect)
    assert parts["L_box"] == 0.0
    assert loss.item() == pytest.approx(parts["L_bce"])
    loss, parts = head.loss(out, batch)
    bce = F.binary_cross_entropy_with_logits(out["logits"], batch["labels"]).item()
    mse = ((out["box"] - batch["box"]) ** 2).sum(1).mean().item()  # summed coordinates
    assert parts["L_bce"] == pytest.approx(bce) and parts["L_box"] == pytest.approx(mse)
    assert parts["L_box"] > 0
    assert loss.item() == pytest.approx(parts["L_bce"] + 5.0 * parts["L_box"], rel=1e-6)
    heavier = _head(box_weight=2.0)
    assert heavier.loss(out, batch)[0].item() == pytest.approx(bce + 2.0 * mse, rel=1e-6)


# ------------------------------------------------------------------- config and registry
@pytest.mark.parametrize("bad,msg", [({"fusion": "sum"}, "fusion"), ({"dim": 30}, "heads"),
                                     ({"n_tokens": 0}, "n_tokens"), ({"dropout": 1.0}, "dropout"),
                                     ({"multilabel": False}, "multilabel"),
                                     ({"box_weight": -1.0}, "box_weight"),
                                     ({"ls_tokens": "pool"}, "ls_tokens"),
                                     ({"caaf_map": "both"}, "caaf_map"),
                                     ({"n_detections": 0}, "n_detections")])
def test_config_refuses_bad_values(bad, msg):
    with pytest.raises(ValueError, match=msg):
        Config(**bad)


def test_builders_flip_one_field_and_keep_the_rest():
    cfg = Config(**SMALL, dropout=0.0)
    changed = {"refatomnet": {}, "refatomnet-add": {"fusion": "add"},
               "refatomnet-paper": {"box_from": "regress", "roi_readout": False},
               "refatomnet-concat": {"fusion": "concat"},
               "refatomnet-noloc": {"location": False, "box_from": "regress"},
               "refatomnet-nocaaf": {"caaf": False}, "refatomnet-nocatf": {"catf": False}}
    for name, fields in changed.items():
        assert BUILDERS[name](cfg).cfg == dataclasses.replace(cfg, **fields), name
        assert tasks.for_head(name).NAME == "refer" and head_config_class(name) is Config
    # through the registry and string options, as the CLI builds it
    opts = {k: str(v) for k, v in SMALL.items() if k not in ("in_channels", "num_classes")}
    head = build_head("refatomnet-concat", parse_options(Config, opts, in_channels=D,
                                                         num_classes=K, multilabel=True))
    assert head.cfg.fusion == "concat" and head.cfg.dim == 32


def test_parameter_bookkeeping():
    counts = {n: sum(p.numel() for p in b(Config(**SMALL)).parameters())
              for n, b in BUILDERS.items()}
    # CAAF and CATF are parameter-free; add/concat have one stream of blocks, not three
    assert counts["refatomnet"] == counts["refatomnet-nocaaf"] == counts["refatomnet-nocatf"]
    assert counts["refatomnet-noloc"] < counts["refatomnet"]
    assert counts["refatomnet-add"] < counts["refatomnet-concat"] < counts["refatomnet-noloc"]


def test_bad_batches_fail_with_clear_messages():
    head = _head()
    batch = _batch()
    with pytest.raises(KeyError, match="det_mask"):
        head({k: v for k, v in batch.items() if k != "det_mask"})
    with pytest.raises(ValueError, match="text has 5 channels"):
        head(dict(batch, text=batch["text"][..., :5]))


# ------------------------------------------------------------------- the pointer box
def test_pointer_box_is_a_softmax_average_of_the_kept_detections():
    """box_from=detections: the box is sum_i w_i box_i over kept detections, w a softmax of
    q(t_agg) . k(P_LS token_i) / sqrt(d): recomputed here by hand from the parts."""
    head = _head(box_from="detections")
    batch = _batch()
    with torch.no_grad():
        tokens, _, det_tokens = head.encode(batch)
        t_agg = torch.stack([head.norm(x).mean(1) for x in tokens.values()]).mean(0)
        q, k = head.pointer["q"](t_agg), head.pointer["k"](det_tokens)
        logits = torch.einsum("bd,bmd->bm", q, k) / math.sqrt(q.shape[-1])
        w = torch.softmax(logits.masked_fill(~batch["det_mask"], float("-inf")), dim=1)
        want = (w[..., None] * batch["det_boxes"][..., 4:8]).sum(1)
        got = head(batch)["box"]
    torch.testing.assert_close(got, want)
    # inside the hull of the kept boxes: never outside the frame, never a masked box
    kept = batch["det_boxes"][..., 4:8].masked_fill(~batch["det_mask"][..., None], float("nan"))
    assert (got[:, :2] >= kept[..., :2].nan_to_num(9).amin(1) - 1e-6).all()
    assert (got[:, 2:] <= kept[..., 2:].nan_to_num(-9).amax(1) + 1e-6).all()


def test_pointer_ignores_masked_detections_and_falls_back_without_any():
    head = _head(box_from="detections")
    batch = _batch()
    moved = {**batch, "det_boxes": batch["det_boxes"].clone()}
    moved["det_boxes"][:, -1] = torch.tensor([0.9, 0.9, 0.2, 0.2, 0.8, 0.8, 1.0, 1.0])
    assert torch.equal(_run(head, batch)["box"], _run(head, moved)["box"])
    none = {**batch, "det_mask": torch.zeros_like(batch["det_mask"])}
    out = _run(head, none)
    assert torch.isfinite(out["box"]).all()
    # with nothing kept, the row gets the regressor's box: the same head without a pointer
    regress = _head(box_from="regress")
    regress.load_state_dict({k: v for k, v in head.state_dict().items()
                             if not k.startswith("pointer.")})
    assert torch.equal(out["box"], _run(regress, none)["box"])


def test_pointer_box_trains_towards_the_named_detection():
    """Gradient reaches the pointer: a few steps on one batch move the box onto the
    target detection (the one the loss asks for)."""
    head = _head(box_from="detections", dropout=0.0).train()
    batch = _batch(b=4, seed=1)
    batch["box"] = batch["det_boxes"][:, 1, 4:8].clone()  # every row names detection 1
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, parts = head.loss(head(batch), batch)
        first = parts["L_box"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["L_box"] < 0.1 * first, (first, parts["L_box"])


def test_pointer_needs_the_location_stream():
    with pytest.raises(ValueError, match="box_from"):
        Config(box_from="detections", location=False)
    with pytest.raises(ValueError, match="box_from"):
        Config(box_from="middle")
    # the "w/o LSAS" ablation has no detections to point at: it regresses
    assert build_noloc(Config(**SMALL, box_from="detections")).cfg.box_from == "regress"


# ------------------------------------------------------------------- the box read-out
def test_box_pool_weights_cells_by_the_covered_fraction():
    from vidattn.heads.refatomnet import box_pool

    vis = torch.arange(2 * 4, dtype=torch.float32).view(1, 1, 2, 1, 4).expand(1, 3, 2, 1, 4)
    # cells along x: [0, .25), [.25, .5) ...; the box covers cell 1 whole and half of cell 2
    got = box_pool(vis, torch.tensor([[0.25, 0.0, 0.625, 1.0]]))
    step0, step1 = (1 + 0.5 * 2) / 1.5, (5 + 0.5 * 6) / 1.5  # per time step, then the mean
    torch.testing.assert_close(got, torch.full((1, 3), (step0 + step1) / 2), rtol=1e-5,
                               atol=1e-5)
    # a box of no area pools every cell alike
    flat = box_pool(vis, torch.tensor([[0.3, 0.3, 0.3, 0.3]]))
    torch.testing.assert_close(flat, vis.mean(dim=(2, 3, 4)), rtol=1e-4, atol=1e-4)


def test_roi_readout_adds_the_box_pooled_map_to_t_agg():
    """roi_readout: logits = classifier(t_agg + roi(box_pool(visual, box))), the box being
    the head's own prediction (hand computation from the parts)."""
    from vidattn.heads.refatomnet import box_pool

    head = _head(box_from="detections", roi_readout=True)
    batch = _batch()
    with torch.no_grad():
        out = head(batch)
        tokens, _, _ = head.encode(batch)
        t_agg = torch.stack([head.norm(x).mean(1) for x in tokens.values()]).mean(0)
        want = head.classifier(t_agg + head.roi(box_pool(batch["visual"], out["box"])))
    torch.testing.assert_close(out["logits"], want)
    # and the map under another box gives other logits: the read-out follows the box
    with torch.no_grad():
        other = head.classifier(t_agg + head.roi(box_pool(batch["visual"],
                                                          1 - out["box"][:, [2, 3, 0, 1]])))
    assert not torch.allclose(other, want)
