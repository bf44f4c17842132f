"""Protocol presets: the values the papers state, flags that override them, and what a run
records; the reported split is never the one the epoch was chosen on."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from vidattn import protocols
from vidattn.cli import main
from vidattn.datasets import DATASETS
from vidattn.heads.common import mature_feature_loss
from vidattn.pipeline.train import TrainConfig, with_protocol
from vidattn.registry import HEADS, head_config_class

# What the papers say (shared/papers): ActX Sec 4.1 (ActionThread) and 4.2 (Hollywood2),
# Sec 3.4 (rho, alpha, beta); RefAtomNet's summary L42 and its loss.
PAPER = {
    "actx-hollywood2": {"crop_t": 6, "batch_size": 36, "conjugates": "around"},
    "actx-actionthread": {"crop_t": 10, "batch_size": 36, "conjugates": "pairs"},
    "actx-hacs30": {"conjugates": "pairs"},
    "refatomnet-refava": {"lr": 1e-4, "batch_size": 128, "epochs": 40},
}
ACTX_OPTIONS = {"rho": 30.0, "alpha": 1.0, "beta": 1.0}


@pytest.mark.parametrize("name", list(protocols.PROTOCOLS))
def test_preset_values_are_the_papers(name):
    preset = protocols.get(name)
    for key, value in PAPER[name].items():
        assert preset.train[key].value == value, key
        assert "not stated" not in preset.train[key].source, key
    if preset.head == "actx":
        assert {k: preset.options[k].value for k in ACTX_OPTIONS} == ACTX_OPTIONS
        assert preset.extract["crop"].value == "full"  # T x 8 x 11 maps
    else:
        assert preset.options["box_weight"].value == 5.0
    # every value names its source; every key is a real field
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    head_fields = {f.name for f in dataclasses.fields(head_config_class(preset.head))}
    assert set(preset.train) <= fields and set(preset.options) <= head_fields
    assert preset.head in HEADS and preset.dataset in DATASETS
    assert all(s.source for s in (*preset.train.values(), *preset.options.values()))
    assert preset.reported and preset.metric.value


def test_flags_override_a_preset_and_are_recorded():
    cfg = with_protocol("actx-hollywood2", head="actx", out="x", batch_size=8,
                        options={"rho": "20", "gamma": "5"})
    assert (cfg.crop_t, cfg.batch_size, cfg.conjugates) == (6, 8, "around")
    assert cfg.options["rho"] == "20" and cfg.options["alpha"] == "1.0"
    assert cfg.overrides == ("batch_size", "-o rho") and cfg.protocol == "actx-hollywood2"
    same = with_protocol("actx-hollywood2", head="actx", out="x", crop_t=6)
    assert same.overrides == ()  # given, but equal to the preset's value
    with pytest.raises(ValueError, match="is for head 'actx'"):
        with_protocol("actx-hollywood2", head="w3", out="x")
    with pytest.raises(ValueError, match="known: actx-hollywood2"):
        with_protocol("actx-kinetics", head="actx", out="x")


def test_a_run_records_its_protocol(tiny_store, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train-head", "actx", "--protocol", "actx-hollywood2",
                                  "--store", tiny_store, "--out", str(out), "--epochs", "1",
                                  "--batch-size", "8", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    # the sample store is not Hollywood2 and was extracted at 128 px: both are said
    assert "protocol actx-hollywood2 is for hollywood2" in r.output
    assert "short_side=128" in r.output
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"]["name"] == "actx-hollywood2"
    assert sorted(config["protocol"]["overrides"]) == ["batch_size", "epochs"]
    assert config["protocol"]["train"]["crop_t"] == 6
    assert config["train"]["crop_t"] == 6 and config["train"]["batch_size"] == 8
    assert config["head_config"]["rho"] == 30.0
    # the sample has a test split and no val: chosen on held-out train, reported on test
    assert config["selected_on"].startswith("train-holdout") and config["reported"] == "test"
    r = CliRunner().invoke(main, ["evaluate", str(out), "--device", "cpu"])
    assert r.exit_code == 0 and "selected on this split" not in r.output


def test_evaluate_warns_on_the_selection_split():
    from vidattn.pipeline.evaluate import selection_warning

    assert "selected on this split" in selection_warning({"selected_on": "val"}, "val")
    assert "selected on this split" in selection_warning({}, "val")  # older runs: val
    assert selection_warning({"selected_on": "val"}, "test") is None
    hacs = {"selected_on": "train-holdout (0.25 of train)", "reported": "val"}
    assert selection_warning(hacs, "val") is None  # HACS-30 reports val, chose elsewhere


def test_mfr_is_eq9_unless_asked_for_the_rms():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 1024, 3, 7, 7, generator=g), torch.randn(
        2, 1024, 3, 7, 7, generator=g)
    eq9 = mature_feature_loss(student, teacher)
    per_frame = (student - teacher).transpose(1, 2).flatten(2).norm(dim=2).mean()
    assert torch.allclose(eq9, per_frame)
    assert torch.allclose(mature_feature_loss(student, teacher, rms=True) * 224, eq9)
