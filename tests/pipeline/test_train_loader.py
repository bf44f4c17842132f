"""train-head from a store larger than its memory budget: streamed crops, the same run."""

from __future__ import annotations

import json

import pytest

from vidattn.pipeline.train import TrainConfig, parse_size, run


def test_parse_size():
    assert parse_size("8GiB") == 8 * 2**30 and parse_size("500M") == 500 * 2**20
    assert parse_size("2e9") == 2_000_000_000 and parse_size(123) == 123
    assert parse_size(None) > 0  # half of this machine's memory
    with pytest.raises(ValueError, match="--max-memory"):
        parse_size("lots")


def test_streamed_and_in_memory_training_agree(tiny_store, tmp_path):
    common = {"head": "actx", "store": tiny_store, "epochs": 3, "crop_t": 2, "device": "cpu",
              "seed": 3}
    held = run(TrainConfig(out=str(tmp_path / "mem"), loader="memory", **common))
    # a budget far below the maps: auto streams, with two reader processes
    streamed = run(TrainConfig(out=str(tmp_path / "stream"), max_memory="1MiB", workers=2,
                               **common))
    config = json.loads((tmp_path / "stream" / "config.json").read_text())
    assert config["loader"]["mode"] == "stream" and config["loader"]["workers"] == 2
    assert config["loader"]["maps_bytes"] > config["loader"]["budget_bytes"] == 2**20
    assert json.loads((tmp_path / "mem" / "config.json").read_text())["loader"]["mode"] == "memory"
    assert abs(held["test"]["mAP"] - streamed["test"]["mAP"]) <= 0.01
    # the same draws and the same values: the losses agree to float rounding
    for a, b in zip(held["history"], streamed["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_unknown_loader_is_refused(tiny_store, tmp_path):
    with pytest.raises(ValueError, match="--loader"):
        run(TrainConfig(head="avgpool", store=tiny_store, out=str(tmp_path / "x"),
                        loader="disk", epochs=1, device="cpu"))
