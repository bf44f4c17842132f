"""A tiny random DETR saved in the public checkpoint layouts, for the DETR tests.

The tiny model (d_model 32, one encoder and one decoder layer, a ResNet bottleneck backbone
with depths [1, 2, 1, 1], 100 queries, 91 labels + no-object) is saved (a) as the hub's
facebook/detr-resnet-50 layout (timm backbone names, 4.x legacy names, use_timm_backbone),
(b) by ``save_pretrained`` and (c) as a facebookresearch ``{"model": state_dict}`` .pth; the
inverse key mappings below are written independently of the loader's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from vidattn.extractors import detr_weights as W
from vidattn.extractors.detr import coco_labels


def tiny_model():
    torch.manual_seed(0)
    rc = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32, 64, 128],
                                   depths=[1, 2, 1, 1], layer_type="bottleneck",
                                   out_features=["stage4"])
    cfg = transformers.DetrConfig(backbone_config=rc, d_model=32, encoder_layers=1,
                                  decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                  num_queries=100, id2label=dict(enumerate(coco_labels())))
    model = transformers.DetrForObjectDetection(cfg).eval()
    with torch.no_grad():  # frozen BN defaults are the identity: make every tensor matter
        for k, v in model.state_dict().items():
            if "running_var" in k:
                v.uniform_(0.5, 2.0)
            elif "normalization" in k or "layernorm" in k or "layer_norm" in k:
                v.normal_(0.0 if k.endswith("bias") or "mean" in k else 1.0, 0.1)
    return model


# ------------------------------------------------ inverse mappings (transformers -> public)
def to_timm(key: str) -> str:
    key = key.replace("embedder.embedder.convolution.", "conv1.")
    key = key.replace("embedder.embedder.normalization.", "bn1.")
    m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)", key)
    if not m:
        return key
    head = f"layer{int(m.group(1)) + 1}.{m.group(2)}."
    rest = m.group(3).replace("shortcut.convolution.", "downsample.0.")
    rest = rest.replace("shortcut.normalization.", "downsample.1.")
    rest = re.sub(r"layer\.(\d)\.convolution\.", lambda g: f"conv{int(g.group(1)) + 1}.", rest)
    rest = re.sub(r"layer\.(\d)\.normalization\.", lambda g: f"bn{int(g.group(1)) + 1}.", rest)
    return head + rest


def hub_layout(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith(W.BACKBONE):
            k = "model.backbone.conv_encoder.model." + to_timm(k[len(W.BACKBONE):])
        k = k.replace(".o_proj.", ".out_proj.").replace(".mlp.fc", ".fc")
        out[k] = v.contiguous()
    return out


_ENC_INV = {"self_attn.o_proj": "self_attn.out_proj", "mlp.fc1": "linear1", "mlp.fc2": "linear2",
            "self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"}
_DEC_INV = {**_ENC_INV, "encoder_attn.o_proj": "multihead_attn.out_proj",
            "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"}


def original_layout(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith(W.BACKBONE):
            out["backbone.0.body." + to_timm(k[len(W.BACKBONE):])] = v
            continue
        m = re.match(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m:
            side, i, mod, p = m.groups()
            pre = f"transformer.{side}.layers.{i}."
            attn = re.match(r"(self_attn|encoder_attn)\.([qkv])_proj$", mod)
            if attn:
                if attn.group(2) == "q":  # pack q, k, v as nn.MultiheadAttention does
                    base = f"model.{side}.layers.{i}.{attn.group(1)}."
                    name = "self_attn" if attn.group(1) == "self_attn" else "multihead_attn"
                    out[f"{pre}{name}.in_proj_{p}"] = torch.cat(
                        [sd[f"{base}{c}_proj.{p}"] for c in "qkv"])
                continue
            table = _ENC_INV if side == "encoder" else _DEC_INV
            out[f"{pre}{table[mod]}.{p}"] = v
            continue
        for new, old in (("model.input_projection", "input_proj"),
                         ("model.query_position_embeddings", "query_embed"),
                         ("model.decoder.layernorm", "transformer.decoder.norm"),
                         ("class_labels_classifier", "class_embed"),
                         ("bbox_predictor", "bbox_embed")):
            if k.startswith(new + "."):
                out[old + k[len(new):]] = v
                break
        else:
            raise AssertionError(k)
    return out


def hub_config(model) -> dict:
    c = model.config
    return {"model_type": "detr", "architectures": ["DetrForObjectDetection"],
            "use_timm_backbone": True, "backbone": "resnet50", "use_pretrained_backbone": True,
            "backbone_config": None, "dilation": False, "num_channels": 3,
            "d_model": c.d_model, "encoder_layers": 1, "decoder_layers": 1,
            "num_hidden_layers": 1, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
            "encoder_attention_heads": 8, "decoder_attention_heads": 8, "num_queries": 100,
            "max_position_embeddings": 1024, "scale_embedding": False,
            "position_embedding_type": "sine", "transformers_version": "4.26.0.dev0",
            "id2label": {str(i): n for i, n in enumerate(coco_labels())}}


def write_checkpoints(root: Path) -> dict:
    """The tiny model in the three layouts under ``root``: {"hub", "saved", "original"}
    paths, plus "sd" (its state dict) and "model"."""
    root.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    hub = root / "hub"
    hub.mkdir()
    save_file(hub_layout(sd), str(hub / "model.safetensors"))
    (hub / "config.json").write_text(json.dumps(hub_config(model)))
    model.save_pretrained(root / "saved")
    torch.save({"model": original_layout(sd)}, root / "detr-r50-tiny.pth")
    return {"hub": hub, "saved": root / "saved", "original": root / "detr-r50-tiny.pth",
            "root": root, "sd": sd, "model": model}
