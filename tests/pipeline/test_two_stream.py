"""RGB + flow in one store: aligned maps, flow added to an RGB store, late fusion."""

from __future__ import annotations

import json
import shutil

import numpy as np
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
