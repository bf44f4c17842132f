"""pytorchvideo hub backbones (``--backbone pytorchvideo:NAME``).

The tests that build pytorchvideo's models need the optional extra: ``make
test-pytorchvideo`` runs this file in a venv of its own (torch 2.14.1, torchvision 0.29.1,
pytorchvideo 0.1.5), and ``.ci/run`` calls it.  In the default venv they skip, saying so.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vidattn.extractors.hub import MODELS, hub_model, load_hub
from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig, array_name
from vidattn.extractors.windows import WindowedMaps, pad_to_unit
from vidattn.stores.schema import ARRAYS

pytestmark = pytest.mark.usefixtures("one_thread")
HAVE_PTV = importlib.util.find_spec("pytorchvideo") is not None
needs_ptv = pytest.mark.skipif(
    not HAVE_PTV, reason="pytorchvideo is not installed here (the optional extra): "
                         "`make test-pytorchvideo` runs these in .venv-ptv")


def test_every_hub_array_is_declared_with_its_stride():
    for name, spec in MODELS.items():
        backbone = f"pytorchvideo:{name}"
        assert spec.unit == spec.strides[spec.main] and spec.fps == 30 / spec.sampling
        for endpoint, step in spec.strides.items():
            array = ARRAYS[array_name("rgb", backbone, endpoint)]
            assert array.frames_per_step == step and array.cell == 32
            assert spec.unit % step == 0
        window, margin = spec.windows
        # X3D runs clip by clip (window = the trained clip); the others with context
        assert (margin == 0 and window * spec.unit == spec.clip) if name.startswith("x3d") \
            else margin * spec.unit >= 9


def test_bad_requests_are_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown pytorchvideo backbone 'x3d_q'.*x3d_m"):
        hub_model("pytorchvideo:x3d_q")
    with pytest.raises(ValueError, match="no weights ship.*--ptv-rgb"):
        load_hub("pytorchvideo:x3d_m", None)
    for kw, msg in ((dict(streams=("rgb", "flow")), "no flow stream"),
                    (dict(endpoints=("res4",)), "last stage only")):
        with pytest.raises(ValueError, match=msg):
            I3DExtractor(I3DExtractorConfig(rgb_weights="random",
                                            backbone="pytorchvideo:x3d_m", **kw))
    with pytest.raises(ValueError, match="backbone must be one of"):
        I3DExtractor(I3DExtractorConfig(rgb_weights="random", backbone="x3d"))


@pytest.mark.skipif(HAVE_PTV, reason="pytorchvideo is installed: nothing to refuse")
def test_without_the_extra_the_install_is_named():
    with pytest.raises(ImportError, match=r"vidattn\[pytorchvideo\]"):
        load_hub("pytorchvideo:x3d_m", "random")


def test_checkpoint_flags_belong_to_their_backbone(tmp_path):
    from vidattn.pipeline.extract import ExtractConfig, decode_config, extractor_config

    cfg = ExtractConfig(backbone="pytorchvideo:x3d_m", i3d_rgb="random")
    with pytest.raises(ValueError, match="--ptv-rgb, not --i3d-rgb"):
        extractor_config(cfg, "cpu")
    with pytest.raises(ValueError, match="--ptv-rgb is the checkpoint"):
        extractor_config(ExtractConfig(ptv_rgb="random"), "cpu")
    # a hub model is fed at its trained rate unless --fps says otherwise
    assert decode_config(ExtractConfig(backbone="pytorchvideo:x3d_m"), "folder").fps == 6.0
    assert decode_config(ExtractConfig(backbone="pytorchvideo:x3d_m", fps=12.0),
                         "folder").fps == 12.0


# ---- with pytorchvideo installed ------------------------------------------------------


def _scrambled(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and BN statistic random, so each tensor of a layout matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 1:  # BN weight/bias, running mean, linear bias
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if "weight" in name
                                                                   else 0.0))
            else:  # He-normal (fan-in), so 16 residual blocks stay in range
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
    return model.eval()


@needs_ptv
def test_vidattn_r50_is_pytorchvideo_i3d_r50(tmp_path):
    """vidattn's own I3D R50 and pytorchvideo's hub i3d_r50, from one .pyth of random
    weights: the same res5 map and the same logits."""
    from pytorchvideo.models import hub

    from vidattn.extractors.i3d_r50 import load_r50

    ptv = _scrambled(hub.i3d_r50(pretrained=False), seed=3)
    path = tmp_path / "I3D_8x8_R50.pyth"
    torch.save({"model_state": ptv.state_dict(), "epoch": 1}, path)
    ours = load_r50(str(path))
    x = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_map = x
        for block in ptv.blocks[:6]:
            want_map = block(want_map)
        want_logits = ptv(x)
        got_map = ours(x)
        got_logits = ours.logits_from_map(got_map)
        hub_map = load_hub("pytorchvideo:i3d_r50", str(path))(x)
    assert got_map.shape == want_map.shape == (1, 2048, 4, 7, 7)
    assert want_map.abs().max() > 0.1 and want_logits.std() > 1e-3  # not a degenerate net
    scale = want_map.abs().max()
    assert (got_map - want_map).abs().max() <= 1e-5 * scale
    assert (got_logits - want_logits).abs().max() <= 1e-5 * want_logits.abs().max()
    assert torch.equal(hub_map, want_map)  # the hub path is pytorchvideo's own module


@needs_ptv
def test_a_checkpoint_of_another_model_is_named(tmp_path):
    from pytorchvideo.models import hub

    path = tmp_path / "SLOW_8x8_R50.pyth"
    torch.save({"model_state": hub.slow_r50(pretrained=False).state_dict()}, path)
    with pytest.raises(ValueError, match=r"SLOW_8x8_R50.pyth: not a x3d_m checkpoint"):
        load_hub("pytorchvideo:x3d_m", str(path))
    model = load_hub("pytorchvideo:slow_r50", str(path))  # its own checkpoint loads
    assert model.weights_source.endswith("SLOW_8x8_R50.pyth") and model.weights_sha256


def _linearised(model: torch.nn.Module) -> torch.nn.Module:
    """ReLUs -> identity, max pools -> average pools of the same shape: the same receptive
    field, but no dead unit or max can hide a frame's influence from the gradient."""
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ReLU):
            setattr(model, name, torch.nn.Identity())
        elif isinstance(child, torch.nn.MaxPool3d):
            setattr(model, name, torch.nn.AvgPool3d(child.kernel_size, child.stride,
                                                    child.padding))
        else:
            _linearised(child)
    return model


@needs_ptv
@pytest.mark.parametrize("name", [n for n, m in MODELS.items() if m.margin is not None])
def test_window_context_covers_the_receptive_field(name):
    """The input frames an output step depends on (non-zero gradient) lie within the
    window's context: ``margin`` steps of ``unit`` frames each side of the step."""
    spec = MODELS[name]
    # float64: a path through 30+ layers of small weights underflows float32 to zero
    model = _linearised(load_hub(f"pytorchvideo:{name}", "random")).double()
    reach = spec.margin * spec.unit
    n = 2 * reach + 6 * spec.unit  # room for a receptive field wider than the margin
    x = torch.randn(1, 3, n, 32, 32, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64, requires_grad=True)
    out = model.features(x)
    for endpoint, step in spec.strides.items():
        mid = out[endpoint].shape[2] // 2
        grad, = torch.autograd.grad(out[endpoint][:, :, mid].sum(), x, retain_graph=True)
        used = (grad.abs().sum(dim=(0, 1, 3, 4)) > 0).nonzero().flatten()
        first, last = mid * step, mid * step + step - 1  # the frames of the step itself
        left, right = first - int(used.min()), int(used.max()) - last
        assert 0 < max(left, right) <= reach, (name, endpoint, left, right, reach)
        assert used.min() > 0 and used.max() < n - 1  # the field was measured whole


def _single_pass(model, frames: np.ndarray, unit: int) -> dict[str, np.ndarray]:
    from vidattn.extractors.i3d_r50 import to_model_input

    n = pad_to_unit(len(frames), unit)
    padded = np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), 0)])
    with torch.no_grad():
        out = model.features(torch.from_numpy(to_model_input(padded))[None])
    return {e: v[0].permute(1, 2, 3, 0).numpy() for e, v in out.items()}


@needs_ptv
@pytest.mark.parametrize("name", list(MODELS))
def test_hub_maps_have_the_documented_shapes_and_windows_are_exact(name):
    """Each backbone's arrays have T = ceil(N / frames per step), 1/32 cells and the schema's
    channels; the windowed maps equal one pass (X3D: one pass per trained clip)."""
    spec = MODELS[name]
    backbone = f"pytorchvideo:{name}"
    window = spec.windows[0] if spec.margin is None else 4  # small windows: many of them
    # several windows beyond the context each side, and not a multiple of the unit
    n = spec.unit * (3 * window + 2 * spec.windows[1]) + 3
    frames = np.random.default_rng(1).integers(0, 256, (n, 64, 96, 3), dtype=np.uint8)
    ex = I3DExtractor(I3DExtractorConfig(rgb_weights="random", backbone=backbone,
                                         window_steps=window))
    maps = ex(frames)  # float16, as stored
    assert list(maps) == [array_name("rgb", backbone, e) for e in spec.strides]
    net = ex.nets["rgb"]
    model = net.model
    # the same windows kept in float32, so that a context shortfall cannot hide in rounding
    exact = WindowedMaps(net, net.unit, net.strides, *ex._window_steps(), dtype=torch.float32)
    exact.push(frames)
    exact = exact.finish()
    if spec.margin is None:  # clip by clip
        parts = [_single_pass(model, frames[i:i + spec.clip], spec.unit)
                 for i in range(0, n, spec.clip)]
        want = {e: np.concatenate([p[e] for p in parts]) for e in spec.strides}
    else:
        want = _single_pass(model, frames, spec.unit)
    for endpoint, step in spec.strides.items():
        array = array_name("rgb", backbone, endpoint)
        got = maps[array].astype(np.float32)
        assert got.shape == (pad_to_unit(n, spec.unit) // step, 2, 3, ARRAYS[array].channels)
        scale = np.abs(want[endpoint]).max()
        assert scale > 0.05, f"{name} {endpoint}: a silent network proves nothing"
        assert np.abs(exact[endpoint] - want[endpoint]).max() <= 1e-5 * scale, (name, endpoint)
        assert np.abs(got - want[endpoint]).max() <= 2e-3 * scale  # float16: 2^-11 relative
    prov = ex.provenance({"fps": spec.fps}, list(maps)[0])
    assert prov["extractor"] == backbone and prov["weights"] == "random(seed=0)"
    assert prov["preprocessing"].get("clip_frames") == (spec.clip if spec.margin is None
                                                         else None)


@needs_ptv
def test_extract_writes_a_hub_array_from_a_pyth(tiny_sample, tmp_path):
    """`vidattn extract --backbone pytorchvideo:x3d_s --ptv-rgb X3D_S.pyth` end to end."""
    from pytorchvideo.models import hub

    from vidattn.cli import main
    from vidattn.stores import open_store

    path = tmp_path / "X3D_S.pyth"
    torch.save({"model_state": _scrambled(hub.x3d_s(pretrained=False), 4).state_dict()}, path)
    store = str(tmp_path / "store")
    r = CliRunner().invoke(main, ["extract", "--root", str(tiny_sample), "--store", store,
                                  "--device", "cpu", "--limit", "2", "--backbone",
                                  "pytorchvideo:x3d_s", "--ptv-rgb", str(path)])
    assert r.exit_code == 0, r.output
    s = open_store(store)
    vid = s.video_ids("rgb_ptv_x3d_s")[0]
    fmap = s.read(vid, "rgb_ptv_x3d_s")
    n = int(s.index("rgb_ptv_x3d_s").set_index("video_id").n_frames[vid])
    assert fmap.shape[0] == n and fmap.shape[-1] == 192 and np.isfinite(fmap).all()
    prov = s.provenance("rgb_ptv_x3d_s")
    assert prov["preprocessing"]["fps"] == 5.0 and prov["preprocessing"]["clip_frames"] == 13
    assert prov["weights"].endswith("X3D_S.pyth") and len(prov["weights_sha256"]) == 64
    json.dumps(prov)  # provenance is plain JSON
