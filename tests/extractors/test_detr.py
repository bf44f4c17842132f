"""DETR detector: three checkpoint layouts of one tiny random model load to the same outputs.

The tiny model (d_model 32, one encoder and one decoder layer, a ResNet bottleneck backbone
with depths [1, 2, 1, 1], 100 queries, 91 labels + no-object) is saved (a) as the hub's
facebook/detr-resnet-50 layout (timm backbone names, 4.x legacy names, use_timm_backbone),
(b) by ``save_pretrained`` and (c) as a facebookresearch ``{"model": state_dict}`` .pth; the
inverse key mappings (tests/detr_checkpoints.py) are written independently of the loader's.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from detr_checkpoints import hub_layout, to_timm, write_checkpoints
from safetensors.torch import save_file

from vidattn.extractors import detr_weights as W
from vidattn.extractors.detr import DetrConfig, build, coco_labels
from vidattn.safeload import UntrustedCheckpointError, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")


class Payload:
    """An arbitrary object: a pickle holding it must not load without trust."""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp("detr"))


def _frames(k=3, h=48, w=64, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (k, h, w, 3), dtype=np.uint8)


def _det(path, **kw):
    return build(DetrConfig(checkpoint=str(path), size=64, max_size=128, batch_size=2, **kw))


def test_layouts_load_to_identical_outputs(ckpts):
    frames = _frames()
    dets = {name: _det(ckpts[name]) for name in ("hub", "saved", "original")}
    assert {n: d.layout for n, d in dets.items()} == {
        "hub": "hf-timm", "saved": "hf", "original": "original"}
    outs = {n: d(frames) for n, d in dets.items()}
    assert np.array_equal(outs["hub"], outs["saved"])
    assert np.array_equal(outs["hub"], outs["original"])
    for d in dets.values():
        assert d.label_names == coco_labels() and d.num_queries == 100
    # the weights file inside an HF dir names the same checkpoint
    assert np.array_equal(_det(ckpts["hub"] / "model.safetensors")(frames), outs["hub"])
    # hub dirs that ship pytorch_model.bin (weights-only torch) instead of safetensors
    bin_dir = ckpts["root"] / "hub-bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((ckpts["hub"] / "config.json").read_text())
    torch.save(hub_layout(ckpts["sd"]), bin_dir / "pytorch_model.bin")
    assert np.array_equal(_det(bin_dir)(frames), outs["hub"])


def test_output_shapes_and_ranges(ckpts):
    det = _det(ckpts["saved"])
    frames = _frames()
    out = det(frames)
    assert out.shape == (3, 100, 10) and out.dtype == np.float32
    cx, cy, w, h, x1, y1, x2, y2, cls, score = np.moveaxis(out, -1, 0)
    assert (out[..., :8] >= 0).all() and (out[..., :8] <= 1).all()
    assert (x1 <= x2).all() and (y1 <= y2).all()
    inside = (cx - w / 2 > 0) & (cx + w / 2 < 1)
    assert inside.any()
    np.testing.assert_allclose(cx[inside], ((x1 + x2) / 2)[inside], atol=1e-6)
    np.testing.assert_allclose(w[inside], (x2 - x1)[inside], atol=1e-6)
    assert (cls == np.round(cls)).all() and cls.min() >= 0 and cls.max() < 91
    assert (score >= 0).all() and (score <= 1).all()
    # the same rows from the model's own outputs, one frame alone (batching changes nothing)
    px = det.processor(images=[frames[1]], return_tensors="pt")["pixel_values"]
    res = det.model(pixel_values=px)
    probs = res.logits.softmax(-1)[0]
    np.testing.assert_allclose(score[1], probs[:, :-1].max(-1).values.detach(), atol=1e-5)
    np.testing.assert_allclose(out[1, :, :4], res.pred_boxes[0].detach(), atol=1e-5)
    np.testing.assert_allclose(det(frames[1:2])[0], out[1], atol=1e-5)
    assert det(frames[:0]).shape == (0, 100, 10)
    with pytest.raises(ValueError, match="uint8"):
        det(frames.astype(np.float32))


def test_provenance(ckpts):
    det = _det(ckpts["original"])
    p = det.provenance()
    json.dumps(p)
    assert p == {"detector": "detr", "checkpoint": str(ckpts["original"].resolve()),
                 "layout": "original", "weights_sha256": sha256_file(ckpts["original"]),
                 "size": 64, "max_size": 128, "num_queries": 100, "num_labels": 91}
    assert _det(ckpts["hub"]).provenance()["weights_sha256"] == sha256_file(
        ckpts["hub"] / "model.safetensors")


def test_backbone_keys_match_a_reference_resnet(ckpts):
    """Timm-named weights run through a plain ResNet-50-style forward = the loaded backbone."""
    F = torch.nn.functional
    sd = {to_timm(k[len(W.BACKBONE):]): v for k, v in ckpts["sd"].items()
          if k.startswith(W.BACKBONE)}

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"],
                            sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)

    x = torch.randn(1, 3, 64, 64)
    y = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")),
                     3, 2, 1)
    for s, depth in enumerate([1, 2, 1, 1], start=1):
        for b in range(depth):
            p, stride = f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1
            z = F.relu(bn(F.conv2d(y, sd[p + ".conv1.weight"]), p + ".bn1"))
            z = F.relu(bn(F.conv2d(z, sd[p + ".conv2.weight"], stride=stride, padding=1),
                          p + ".bn2"))
            z = bn(F.conv2d(z, sd[p + ".conv3.weight"]), p + ".bn3")
            if p + ".downsample.0.weight" in sd:
                y = bn(F.conv2d(y, sd[p + ".downsample.0.weight"], stride=stride),
                       p + ".downsample.1")
            y = F.relu(y + z)
    det = _det(ckpts["hub"])
    with torch.no_grad():
        got = det.model.model.backbone.model(x).feature_maps[-1]
    torch.testing.assert_close(got, y, atol=1e-5, rtol=1e-5)


def test_packed_in_proj_matches_torch_multihead_attention(ckpts):
    """q, k, v split of the original in_proj = nn.MultiheadAttention (what DETR trained with)."""
    orig = torch.load(ckpts["original"], weights_only=True)["model"]
    mha = torch.nn.MultiheadAttention(32, 8).eval()
    pre = "transformer.decoder.layers.0.multihead_attn."
    mha.load_state_dict({k[len(pre):]: v for k, v in orig.items() if k.startswith(pre)})
    attn = _det(ckpts["original"]).model.model.decoder.layers[0].encoder_attn
    q, kv = torch.randn(1, 5, 32), torch.randn(1, 7, 32)
    with torch.no_grad():
        want = mha(q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1))[0].transpose(0, 1)
        got = attn(hidden_states=q, key_value_states=kv)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_original_with_training_args(ckpts, tmp_path):
    """The training script's argparse Namespace loads weights-only; its nheads is used."""
    path = tmp_path / "detr-r50-args.pth"
    model = torch.load(ckpts["original"], weights_only=True)["model"]
    torch.save({"model": model, "args": argparse.Namespace(nheads=8, dilation=False)}, path)
    assert np.array_equal(_det(path)(_frames(1)), _det(ckpts["original"])(_frames(1)))
    torch.save({"model": model, "args": argparse.Namespace(nheads=8, dilation=True)}, path)
    with pytest.raises(ValueError, match="DC5"):
        _det(path)


def _one_line_error(exc_info, *parts):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert str(p) in msg, msg


def test_missing_key_fails_naming_the_file(ckpts, tmp_path):
    orig = torch.load(ckpts["original"], weights_only=True)["model"]
    del orig["transformer.encoder.layers.0.linear2.bias"]
    path = tmp_path / "detr-missing.pth"
    torch.save({"model": orig}, path)
    with pytest.raises(ValueError) as e:
        _det(path)
    _one_line_error(e, path, "missing", "model.encoder.layers.0.mlp.fc2.bias")

    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text((ckpts["hub"] / "config.json").read_text())
    sd = hub_layout(ckpts["sd"])
    sd["class_labels_classifier.extra"] = sd.pop("class_labels_classifier.bias")
    save_file(sd, str(hub / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        _det(hub)
    _one_line_error(e, hub / "model.safetensors", "class_labels_classifier.bias",
                    "class_labels_classifier.extra")


def test_arbitrary_pickle_refused_without_trust(ckpts, tmp_path):
    path = tmp_path / "detr-evil.pth"
    orig = torch.load(ckpts["original"], weights_only=True)["model"]
    torch.save({"model": orig, "extra": Payload()}, path)
    with pytest.raises(UntrustedCheckpointError) as e:
        _det(path)
    _one_line_error(e, path, "Payload")
    assert _det(path, trust_checkpoint=True).layout == "original"


def test_non_detr_paths_get_a_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, other)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (text, other, bert, empty):
        with pytest.raises(ValueError) as e:
            _det(path)
        _one_line_error(e, path, "not a DETR checkpoint", "Hugging Face DETR directory",
                        "original facebookresearch DETR .pth")
    with pytest.raises(FileNotFoundError):
        _det(tmp_path / "absent.pth")
