"""Head options from ``--option key=value`` strings, and the temporal/spatial crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidattn.data.maps import MemoryMaps, channels_first, crop_start, read_crop
from vidattn.heads import actx, avgpool
from vidattn.options import parse_options


# ---------------------------------------------------------------------------- options
def test_parse_options_types_values_from_strings():
    cfg = parse_options(
        actx.Config,
        {"rho": "12.5", "theta_kernel": "3", "use_satt": "false", "gamma": "1e2"},
        num_classes=7, multilabel=True, in_channels=32,
    )
    assert isinstance(cfg, actx.Config)
    assert cfg.rho == 12.5 and isinstance(cfg.rho, float)
    assert cfg.theta_kernel == 3 and isinstance(cfg.theta_kernel, int)
    assert cfg.gamma == 100.0
    assert cfg.use_satt is False
    assert (cfg.num_classes, cfg.multilabel, cfg.in_channels) == (7, True, 32)
    assert cfg.alpha == actx.Config.alpha  # untouched fields keep their defaults


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("true", True), ("True", True),
                                            ("yes", True), ("on", True), ("0", False),
                                            ("false", False), ("no", False), ("off", False)])
def test_parse_options_bools(raw, value):
    assert parse_options(actx.Config, {"use_satt": raw}).use_satt is value


def test_parse_options_bad_values_raise():
    with pytest.raises(ValueError):
        parse_options(actx.Config, {"theta_kernel": "3.5"})
    with pytest.raises(ValueError):
        parse_options(actx.Config, {"rho": "lots"})


def test_parse_options_refuses_unknown_keys_listing_known_ones():
    with pytest.raises(ValueError) as e:
        parse_options(avgpool.Config, {"rho": "30"}, num_classes=4)
    msg = str(e.value)
    assert "'rho'" in msg
    assert "vidattn.heads.avgpool" in msg
    assert "dropout" in msg and "in_channels" in msg
    assert "num_classes" not in msg  # fixed by the run, not an option


def test_parse_options_drops_fixed_values_a_config_does_not_have():
    cfg = parse_options(avgpool.Config, None, num_classes=5, not_a_field=1)
    assert cfg == avgpool.Config(num_classes=5)


# ------------------------------------------------------------------------------- crop
def crop(m, length, hw, rng):
    """A crop as the training data takes it: the start drawn, then the rows read."""
    start = crop_start(m.shape[1], length, rng)
    return read_crop(MemoryMaps({"v": m}), "v", start, length, hw)


def _map(t, h, w, d=2):
    """(D, T, H, W) whose values encode their position: m[0, t, y, x] = 100 t + 10 y + x."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    m = np.zeros((t, h, w, d), np.float32)
    m[..., 0] = 100 * tt + 10 * yy + xx
    return channels_first(m).float()


def test_crop_random_window():
    m = _map(10, 3, 3)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        out = crop(m, 4, (3, 3), rng)
        assert tuple(out.shape) == (2, 4, 3, 3)
        t = out[0, :, 0, 0] // 100
        assert t.diff().tolist() == [1, 1, 1]  # a contiguous window
        starts.add(int(t[0]))
    assert starts == set(range(7))  # every start 0 .. T - length is reachable


def test_crop_centre_window_without_rng():
    out = crop(_map(10, 3, 3), 4, (3, 3), None)
    assert (out[0, :, 0, 0] // 100).tolist() == [3, 4, 5, 6]
    out = crop(_map(4, 3, 3), 4, (3, 3), None)
    assert (out[0, :, 0, 0] // 100).tolist() == [0, 1, 2, 3]


def test_crop_loops_short_maps():
    for rng in (None, np.random.default_rng(1)):
        out = crop(_map(3, 2, 2), 8, (2, 2), rng)
        assert tuple(out.shape) == (2, 8, 2, 2)
        assert (out[0, :, 0, 0] // 100).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


def test_crop_centres_spatially():
    m = _map(2, 7, 6)
    out = crop(m, 2, (3, 2), None)
    assert tuple(out.shape) == (2, 2, 3, 2)
    # rows 2..4 of 7, columns 2..3 of 6
    assert out[0, 0].tolist() == [[22, 23], [32, 33], [42, 43]]
    assert torch.equal(out[:, 1], m[:, 1, 2:5, 2:4])
    assert torch.equal(crop(m, 2, (7, 6), None), m)  # full size: unchanged


def test_bool_option_typo_is_refused():
    from vidattn.heads.actx import Config
    from vidattn.options import parse_options

    with pytest.raises(ValueError, match="use_satt expects true/false"):
        parse_options(Config, {"use_satt": "ture"})


def test_ava_frame_map_uses_ground_truth_boxes():
    import json

    import pandas as pd

    from vidattn.tasks.classify import ava_frame_map

    def row(vid, person, box, labels):
        return {"video_id": f"v__0902__{person}", "group": vid, "labels": labels,
                "extra": json.dumps({"timestamp": 902, "person_id": person, "box": box})}

    man = pd.DataFrame([row("v", 0, [0.1, 0.1, 0.4, 0.9], [0]),
                        row("v", 1, [0.5, 0.1, 0.9, 0.9], [1, 2])])
    ids = man.video_id.tolist()
    perfect = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.7]])
    assert ava_frame_map(man, ids, perfect)["frame_mAP"] == pytest.approx(1.0)
    swapped = perfect[::-1].copy()  # each person gets the other's scores
    assert ava_frame_map(man, ids, swapped)["frame_mAP"] < 1.0


# ------------------------------------------------------------ head training defaults
def test_heads_own_learning_rate_fills_only_an_unset_lr():
    from vidattn.pipeline.train import HEAD_DEFAULTABLE, TrainConfig, with_head_defaults
    from vidattn.registry import HEADS, head_train_defaults

    # RefAtomNet and its ablations declare the paper's rate; the map heads take vidattn's
    for name in (n for n in HEADS if n.startswith("refatomnet")):
        assert with_head_defaults(TrainConfig(head=name)).lr == 1e-4
    assert head_train_defaults("actx") == {}
    assert with_head_defaults(TrainConfig(head="actx")).lr == HEAD_DEFAULTABLE["lr"] == 1e-3
    # a rate the user gives always wins
    assert with_head_defaults(TrainConfig(head="refatomnet", lr=3e-3)).lr == 3e-3


def test_cli_lr_left_out_reaches_the_run_as_none():
    """train-head without --lr must not pass 1e-3 down: the head's own rate applies."""
    from vidattn.cli import train_head

    lr = next(p for p in train_head.params if p.name == "lr")
    assert lr.default is None and "refatomnet" in lr.help
