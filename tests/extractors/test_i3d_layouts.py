"""video_features / hassony2 I3D checkpoints (i3d_rgb.pt, i3d_flow.pt) load as they are."""

from __future__ import annotations

import pytest
import torch

from vidattn.extractors.i3d import I3D, I3DConfig, random_init
from vidattn.extractors.i3d_weights import load_i3d, rename_hassony2

pytestmark = pytest.mark.usefixtures("one_thread")

TO_HASSONY2 = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1",
               "b2a": "branch_2.0", "b2b": "branch_2.1", "b3b": "branch_3.1"}


def hassony2_name(key: str) -> str:
    """pytorch-i3d name -> the hassony2 name of the same tensor (the inverse mapping,
    written independently of the loader's so a wrong rule cannot hide itself)."""
    key = key.replace(".bn.", ".batch3d.")
    if key.startswith("logits."):
        return "conv3d_0c_1x1." + key.removeprefix("logits.")
    head, rest = key.split(".", 1)
    if head.startswith("Conv3d_"):
        return "conv3d_" + head.removeprefix("Conv3d_") + "." + rest
    branch, rest = rest.split(".", 1)
    return "mixed_" + head.removeprefix("Mixed_") + "." + TO_HASSONY2[branch] + "." + rest


def _save(tmp_path, modality: str, seed: int, num_classes: int = 400):
    model = random_init(I3D(I3DConfig(modality=modality, num_classes=num_classes)), seed)
    with torch.no_grad():  # BN statistics off their identity defaults, so eps matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_var.uniform_(1e-4, 1e-3)
                m.weight.uniform_(0.5, 1.5)
    sd = {hassony2_name(k): v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / f"i3d_{modality}.pt"
    torch.save(sd, path)
    return model, sd, path


def test_names_map_back_exactly():
    keys = I3D().state_dict().keys()
    assert all(rename_hassony2(hassony2_name(k)) == k for k in keys)
    assert hassony2_name("Mixed_3b.b1a.conv3d.weight") == "mixed_3b.branch_1.0.conv3d.weight"
    assert hassony2_name("Conv3d_1a_7x7.bn.running_var") == "conv3d_1a_7x7.batch3d.running_var"


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_video_features_checkpoint_loads_with_its_eps(tmp_path, modality):
    ref, sd, path = _save(tmp_path, modality, seed=7)
    model = load_i3d(str(path), modality)
    assert model.weights_source.startswith("hassony2:")
    assert model.cfg.bn_eps == 1e-5  # PyTorch's default, which that layout was trained with
    loaded = model.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded[k], v), k
    # same numbers as a model built by hand with eps 1e-5; eps 1e-3 would differ
    x = torch.rand(1, 3 if modality == "rgb" else 2, 8, 64, 64) * 2 - 1
    ref_eps = I3D(I3DConfig(modality=modality, bn_eps=1e-5))
    ref_eps.load_state_dict(ref.state_dict())
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, ref_eps.eval()(x), atol=1e-5)
        assert not torch.allclose(out, ref.eval()(x), atol=1e-5)


def test_video_features_checkpoint_with_an_unknown_key_is_refused(tmp_path):
    _, sd, path = _save(tmp_path, "rgb", seed=1)
    sd["mixed_3b.branch_9.conv3d.weight"] = torch.zeros(1)
    del sd["mixed_4c.branch_2.1.conv3d.weight"]
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        load_i3d(str(path))
    msg = str(e.value)
    assert "Mixed_4c.b2b.conv3d.weight" in msg and "mixed_3b.branch_9.conv3d.weight" in msg


def test_an_r50_checkpoint_given_as_inception_points_to_the_r50(tmp_path):
    """A pytorchvideo .pyth handed to the Inception loader: the error names the file, the
    layouts expected, and the option that loads it."""
    from vidattn.extractors.i3d_r50 import I3DR50
    from vidattn.extractors.i3d_r50 import random_init as r50_init

    path = tmp_path / "I3D_8x8_R50.pyth"
    torch.save({"epoch": 196, "model_state": r50_init(I3DR50()).state_dict()}, path)
    with pytest.raises(ValueError) as e:
        load_i3d(str(path))
    msg = str(e.value)
    assert str(path) in msg and "pytorch-i3d" in msg and "--backbone r50" in msg
    assert "\n" not in msg


def test_a_built_model_owns_contiguous_float32_copies_of_the_checkpoint(tmp_path):
    from pathlib import Path

    from vidattn.extractors.i3d_weights import build_from_state

    ref = random_init(I3D(), 3)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    stem = "Conv3d_1a_7x7.conv3d.weight"  # a float64 tensor with permuted strides
    sd[stem] = sd[stem].double().permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0)
    assert not sd[stem].is_contiguous()
    model = build_from_state(sd, "rgb", Path("x.pt"))
    state = model.state_dict()
    assert state.keys() == ref.state_dict().keys()  # the step counters too
    for k, v in state.items():
        assert v.device.type == "cpu" and v.is_contiguous(), k  # nothing left on meta
        assert torch.equal(v, ref.state_dict()[k].to(v.dtype)), k
    assert all(p.requires_grad for p in model.parameters())
    sd["Mixed_5c.b0.conv3d.weight"].zero_()  # the caller's dict is not the model's memory
    assert state["Mixed_5c.b0.conv3d.weight"].abs().sum() > 0
