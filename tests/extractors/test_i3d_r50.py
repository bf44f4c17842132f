"""I3D R50 (pytorchvideo ``i3d_r50`` / ``I3D_8x8_R50.pyth``): key layout, shapes, safe loading."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch

from vidattn.extractors.i3d_r50 import (
    CHANNELS,
    ENDPOINTS,
    I3DR50,
    MEAN,
    STD,
    R50Config,
    load_r50,
    out_steps,
    random_init,
    to_model_input,
)
from vidattn.safeload import sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")

# Numbers of pytorchvideo 0.1.5 ``create_resnet`` with the ``i3d_r50`` hub arguments
# (checked once against the real builder; they follow from the architecture alone).
N_TENSORS = 320  # 53 convs + 53 BatchNorms x 5 + proj weight/bias
N_PARAMS = 28_043_472
KEYS = [
    "blocks.0.conv.weight",
    "blocks.0.norm.running_mean",
    "blocks.1.res_blocks.0.branch1_conv.weight",
    "blocks.1.res_blocks.0.branch1_norm.num_batches_tracked",
    "blocks.1.res_blocks.0.branch2.conv_a.weight",
    "blocks.3.res_blocks.3.branch2.norm_b.weight",
    "blocks.4.res_blocks.5.branch2.conv_c.weight",
    "blocks.5.res_blocks.2.branch2.norm_c.running_var",
    "blocks.6.proj.weight",
    "blocks.6.proj.bias",
]
SHAPES = {
    "blocks.0.conv.weight": (64, 3, 5, 7, 7),
    "blocks.1.res_blocks.0.branch1_conv.weight": (256, 64, 1, 1, 1),
    "blocks.1.res_blocks.2.branch2.conv_a.weight": (64, 256, 3, 1, 1),
    "blocks.3.res_blocks.0.branch2.conv_a.weight": (128, 256, 3, 1, 1),
    "blocks.3.res_blocks.1.branch2.conv_a.weight": (128, 512, 1, 1, 1),
    "blocks.3.res_blocks.0.branch2.conv_b.weight": (128, 128, 1, 3, 3),
    "blocks.4.res_blocks.4.branch2.conv_a.weight": (256, 1024, 3, 1, 1),
    "blocks.5.res_blocks.0.branch2.conv_a.weight": (512, 1024, 1, 1, 1),
    "blocks.5.res_blocks.1.branch2.conv_a.weight": (512, 2048, 3, 1, 1),
    "blocks.5.res_blocks.0.branch1_conv.weight": (2048, 1024, 1, 1, 1),
    "blocks.6.proj.weight": (400, 2048),
}


@pytest.fixture(scope="module")
def ref() -> I3DR50:
    """Seeded weights with BN statistics off identity, so eps and every tensor matter."""
    model = random_init(I3DR50(), seed=5)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def ref_out(ref, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """(res5, logits) of ``ref`` on ``clip``, with one thread like the tests (bit-exact)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            fmap = ref(clip)
            return fmap, ref.logits_from_map(fmap)
    finally:
        torch.set_num_threads(before)


def _pyth(sd: dict) -> dict:
    """What SlowFast's save_checkpoint writes (``scaler_state`` only with AMP)."""
    return {
        "epoch": 196,
        "model_state": sd,
        "optimizer_state": {
            "state": {0: {"momentum_buffer": torch.zeros(3)}},
            "param_groups": [{"lr": 0.0, "momentum": 0.9, "weight_decay": 1e-4,
                              "nesterov": True, "params": [0]}],
        },
        "cfg": "MODEL:\n  ARCH: i3d\n  NUM_CLASSES: 400\n",
    }


def test_key_layout_matches_pytorchvideo():
    model = I3DR50()
    sd = model.state_dict()
    assert len(sd) == N_TENSORS
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS
    assert all(k in sd for k in KEYS)
    assert {k: tuple(sd[k].shape) for k in SHAPES} == SHAPES
    # the temporal pool is its own parameter-free block; no branch1 after a stage's block 0
    assert not any(k.startswith("blocks.2.") for k in sd)
    assert "blocks.1.res_blocks.1.branch1_conv.weight" not in sd
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bns) == 53 and {(m.eps, m.momentum) for m in bns} == {(1e-5, 0.1)}
    assert model.in_channels == 3 and model.weights_source == "untrained"
    assert model.weights_sha256 == "" and R50Config() == R50Config(400, 1e-5)


def test_endpoint_shapes_and_partial_run(ref, clip):
    with torch.no_grad():
        out = ref.features(clip, ENDPOINTS)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 256, 8, 16, 16),
        "res3": (1, 512, 4, 8, 8),
        "res4": (1, 1024, 4, 4, 4),
        "res5": (1, 2048, 4, 2, 2),
    }
    assert all(out[k].shape[1] == CHANNELS[k] for k in ENDPOINTS)
    calls = []
    hook = ref.blocks[4].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            only = ref.features(clip, ("res3",))
    finally:
        hook.remove()
    assert list(only) == ["res3"] and not calls  # res4/res5 never ran
    torch.testing.assert_close(only["res3"], out["res3"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="endpoints"):
        ref.features(clip, ("Mixed_5c",))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        ref.features(clip[:, :2], ("res5",))


@pytest.mark.parametrize("n,steps", [(8, 4), (16, 8), (13, 6), (2, 1)])
def test_out_steps(n, steps):
    assert out_steps(n) == steps


def test_out_steps_follow_the_model(ref):
    x = torch.randn(1, 3, 13, 33, 47)
    with torch.no_grad():
        fmap = ref(x)
    assert tuple(fmap.shape) == (1, 2048, out_steps(13), 2, 2)  # ceil(33/32), ceil(47/32)
    with pytest.raises(ValueError, match="at least 2 frames"):
        out_steps(1)
    with pytest.raises(ValueError, match="at least 2 frames"):
        ref(torch.zeros(1, 3, 1, 32, 32))


def test_classify_is_the_linear_head_on_pooled_maps(ref, clip):
    with torch.no_grad():
        logits = ref.classify(clip)
        fmap = ref(clip)  # (1, 2048, 4, 2, 2): the 4x7x7 window clamps to the whole map
        by_hand = ref.blocks[6].proj(fmap.mean(dim=(2, 3, 4)))
    assert logits.shape == (1, 400)
    torch.testing.assert_close(logits, by_hand, rtol=1e-5, atol=1e-6)
    assert (logits < 0).any()  # pre-activation logits, not softmax probabilities


def test_random_init_is_seeded_and_not_degenerate(clip):
    a, b = random_init(I3DR50(), 3), random_init(I3DR50(), 3)
    c = random_init(I3DR50(), 4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.conv.weight"], sc["blocks.0.conv.weight"])
    assert a.weights_source == "random(seed=3)" and a.weights_sha256 == ""
    with torch.no_grad():
        fmap = a.eval()(clip)
    assert torch.isfinite(fmap).all() and fmap.abs().max() > 0 and fmap.std() > 1e-3
    assert load_r50("random").weights_source == "random(seed=0)"


@pytest.mark.parametrize("form", ["pyth", "module", "bare", "no_counters"])
def test_checkpoint_round_trip(tmp_path, ref, ref_out, clip, form):
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    if form == "module":
        sd = {"module." + k: v for k, v in sd.items()}
    if form == "no_counters":
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "I3D_8x8_R50.pyth"
    torch.save(sd if form == "bare" else _pyth(sd), path)
    model = load_r50(str(path))
    assert not model.training
    assert model.weights_source == f"pytorchvideo-r50:{path}"
    assert model.weights_sha256 == sha256_file(path) and len(model.weights_sha256) == 64
    with torch.no_grad():
        fmap = model(clip)
        torch.testing.assert_close(fmap, ref_out[0], rtol=0, atol=0)
        torch.testing.assert_close(model.logits_from_map(fmap), ref_out[1], rtol=0, atol=0)


def test_head_sizes_itself(tmp_path, clip):
    ref = random_init(I3DR50(R50Config(num_classes=157)), 2).eval()
    path = tmp_path / "charades.pyth"
    torch.save(_pyth(ref.state_dict()), path)
    model = load_r50(str(path))
    assert model.cfg.num_classes == 157
    with torch.no_grad():
        torch.testing.assert_close(model.classify(clip), ref.classify(clip), rtol=0, atol=0)


def test_wrong_layouts_are_named(tmp_path, ref):
    inception = tmp_path / "i3d_rgb_imagenet.pt"
    torch.save({"Conv3d_1a_7x7.conv3d.weight": torch.zeros(64, 3, 7, 7, 7),
                "Conv3d_1a_7x7.bn.running_mean": torch.zeros(64)}, inception)
    with pytest.raises(ValueError, match="pytorchvideo-r50") as e:
        load_r50(str(inception))
    msg = str(e.value)
    assert str(inception) in msg and "\n" not in msg
    # 320 tensors less the 53 BatchNorm counters, which may be absent from any checkpoint
    assert "267 missing" in msg and "2 unexpected" in msg and "Conv3d_1a_7x7" in msg

    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("blocks.5.res_blocks.2.")}
    short = tmp_path / "short.pyth"
    torch.save(_pyth(sd), short)
    with pytest.raises(ValueError, match="pytorchvideo-r50") as e:
        load_r50(str(short))
    assert str(short) in str(e.value) and "15 missing" in str(e.value)
    assert "blocks.5.res_blocks.2.branch2.conv_a.weight" in str(e.value)

    sd = dict(ref.state_dict())
    sd["blocks.0.conv.weight"] = torch.zeros(64, 3, 3, 7, 7)  # a Slow-R50-like stem
    bad = tmp_path / "slow.pyth"
    torch.save(_pyth(sd), bad)
    with pytest.raises(ValueError, match=r"blocks\.0\.conv\.weight.*\(64, 3, 3, 7, 7\).*"
                                         r"\(64, 3, 5, 7, 7\)") as e:
        load_r50(str(bad))
    assert str(bad) in str(e.value)


def test_damaged_files_raise_value_error(tmp_path, ref):
    good = tmp_path / "good.pyth"
    torch.save({"model_state": {"blocks.6.proj.bias": torch.zeros(400)}}, good)
    truncated = tmp_path / "truncated.pyth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pyth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="not a safe torch checkpoint") as e:
            load_r50(str(path))
        assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="no packaged"):
        load_r50(None)
    with pytest.raises(FileNotFoundError):
        load_r50(str(tmp_path / "absent.pyth"))


class _Sneaky(collections.OrderedDict):
    """An arbitrary class: only full unpickling could rebuild it."""


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_arbitrary_pickles_are_refused(tmp_path, ref):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pyth"
    torch.save({"model_state": {"x": _Payload(marker)}}, evil)
    odd = tmp_path / "odd.pyth"
    torch.save({"model_state": _Sneaky(ref.state_dict())}, odd)
    for path in (evil, odd):
        with pytest.raises(ValueError, match="not a safe torch checkpoint") as e:
            load_r50(str(path))
        assert str(path) in str(e.value)
    assert not marker.exists()


def test_to_model_input_normalises():
    frames = np.zeros((2, 4, 5, 3), np.uint8)
    frames[0, 1, 2] = (0, 115, 255)
    x = to_model_input(frames)
    assert x.shape == (3, 2, 4, 5) and x.dtype == np.float32 and x.flags.c_contiguous
    assert MEAN == (0.45,) * 3 and STD == (0.225,) * 3
    np.testing.assert_allclose(x[:, 0, 1, 2], [-2.0, (115 / 255 - 0.45) / 0.225, 0.55 / 0.225],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(x[:, 1, 0, 0], -2.0, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(frames.astype(np.float32))
