"""RGB + flow in one store: aligned maps, flow added to an RGB store, late fusion."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from vidattn.cli import main
from vidattn.stores import open_store


def test_flow_is_added_to_an_rgb_store_and_fused(tiny_sample, tiny_store, tmp_path):
    store = str(tmp_path / "store")
    shutil.copytree(tiny_store, store)
    rgb_index = open_store(store).index("rgb")
    r = CliRunner().invoke(main, ["extract", "--root", str(tiny_sample), "--store", store,
                                  "--part-size", "4", "--streams", "rgb,flow",
                                  "--i3d-flow", "random", "--flow-method", "dis",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    s = open_store(store)
    # RGB parts were done already: untouched; flow filled for every video
    assert s.index("rgb").equals(rgb_index)
    assert sorted(s.video_ids("flow")) == sorted(s.video_ids("rgb"))
    for vid in s.video_ids("rgb")[:4]:
        rgb, flow = s.read(vid, "rgb"), s.read(vid, "flow")
        assert rgb.shape == flow.shape and np.isfinite(flow).all()
        assert not np.allclose(rgb, flow)
    prov = s.provenance("flow")
    assert prov["weights"].startswith("random") and prov["stream"] == "flow"
    assert prov["preprocessing"]["flow_method"] == "dis"
    assert prov["preprocessing"]["flow_bound"] == 20.0

    runs = {}
    for stream in ("rgb", "flow"):
        out = tmp_path / stream
        r = CliRunner().invoke(main, ["train-head", "avgpool", "--store", store, "--out",
                                      str(out), "--stream", stream, "--epochs", "2",
                                      "--crop-t", "2", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        runs[stream] = out
    r = CliRunner().invoke(main, ["evaluate", str(runs["rgb"]), str(runs["flow"]),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    fused = json.loads((runs["rgb"] / "eval-test-fusion.json").read_text())
    assert fused["head"] == "avgpool(rgb)+avgpool(flow)" and fused["n"] == 4


def test_flow_with_other_settings_is_refused(tiny_sample, tiny_store, tmp_path):
    store = str(tmp_path / "store")
    shutil.copytree(tiny_store, store)
    args = ["extract", "--root", str(tiny_sample), "--store", store, "--part-size", "4",
            "--streams", "flow", "--i3d-flow", "random", "--device", "cpu", "--limit", "4"]
    assert CliRunner().invoke(main, [*args, "--flow-method", "dis"]).exit_code == 0
    r = CliRunner().invoke(main, [*args, "--flow-method", "tvl1"])
    assert r.exit_code == 1 and "flow_method" in r.output


def test_flow_with_the_torch_tvl1(tiny_sample, tmp_path):
    """--flow tvl1-torch fills the flow stream and records the method it used."""
    store = str(tmp_path / "store")
    r = CliRunner().invoke(main, ["extract", "--root", str(tiny_sample), "--store", store,
                                  "--streams", "flow", "--flow", "tvl1-torch", "--i3d-flow",
                                  "random", "--device", "cpu", "--limit", "1",
                                  "--short-side", "64"])
    assert r.exit_code == 0, r.output
    s = open_store(store)
    (vid,) = s.video_ids("flow")
    fmap = s.read(vid, "flow")
    assert fmap.shape[:3] == (2, 2, 2) and np.isfinite(fmap).all()
    assert s.provenance("flow")["preprocessing"]["flow_method"] == "tvl1-torch"


def test_extra_endpoint_and_r50_arrays_fill_the_store_and_train(tiny_sample, tmp_path):
    """--endpoints Mixed_4f stores a second array a head can train on; --backbone r50 writes
    rgb_r50 with its own provenance."""
    store = str(tmp_path / "store")
    base = ["extract", "--root", str(tiny_sample), "--store", store, "--device", "cpu",
            "--short-side", "64", "--part-size", "16"]
    r = CliRunner().invoke(main, [*base, "--i3d-rgb", "random", "--endpoints", "Mixed_4f"])
    assert r.exit_code == 0, r.output
    s = open_store(store)
    vid = s.video_ids("rgb")[0]
    rgb, m4f = s.read(vid, "rgb"), s.read(vid, "rgb_mixed_4f")
    assert rgb.shape == (2, 2, 2, 1024) and m4f.shape == (4, 4, 4, 832)
    assert s.provenance("rgb_mixed_4f")["endpoint"] == "Mixed_4f"
    out = tmp_path / "run4f"
    r = CliRunner().invoke(main, ["train-head", "avgpool", "--store", store, "--out", str(out),
                                  "--stream", "rgb_mixed_4f", "--epochs", "2", "--device",
                                  "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["head_config"]["in_channels"] == 832

    r = CliRunner().invoke(main, [*base, "--backbone", "r50", "--i3d-rgb", "random",
                                  "--limit", "2"])
    assert r.exit_code == 0, r.output
    s = open_store(store)
    assert s.read(s.video_ids("rgb_r50")[0], "rgb_r50").shape == (8, 2, 2, 2048)
    assert s.provenance("rgb_r50")["extractor"] == "i3d-r50"


def test_flow_workers_reach_the_flow_and_leave_the_maps_alone(tiny_sample, tmp_path,
                                                             monkeypatch):
    """--flow-workers is how many processes OpenCV's flow takes, passed to every
    compute_flow call; it is not a setting of the maps, so a store extracted with one
    count is resumed with another."""
    import vidattn.extractors.flow as flow_mod
    from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig

    asked = []
    real = flow_mod.compute_flow

    def recorded(frames, method=None, device="cpu", workers=None, batch_size=32):
        asked.append(workers)
        return real(frames, method, device, workers=1, batch_size=batch_size)

    monkeypatch.setattr(flow_mod, "compute_flow", recorded)
    store = str(tmp_path / "store")
    args = ["extract", "--root", str(tiny_sample), "--store", store, "--streams", "flow",
            "--flow-method", "dis", "--i3d-flow", "random", "--device", "cpu",
            "--short-side", "64", "--part-size", "1"]
    r = CliRunner().invoke(main, [*args, "--limit", "1", "--flow-workers", "3"])
    assert r.exit_code == 0, r.output
    assert asked and set(asked) == {3}
    asked.clear()
    r = CliRunner().invoke(main, [*args, "--limit", "2"])  # default: None, the budget
    assert r.exit_code == 0, r.output
    assert asked and set(asked) == {None}
    assert len(open_store(store).video_ids("flow")) == 2
    r = CliRunner().invoke(main, [*args, "--flow-workers", "0"])
    assert r.exit_code == 2 and "--flow-workers" in r.output
    with pytest.raises(ValueError, match="flow_workers must be an int >= 1"):
        I3DExtractor(I3DExtractorConfig(streams=("flow",), flow_weights="random",
                                        flow_method="dis", flow_workers=True))
