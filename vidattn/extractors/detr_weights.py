"""Key conversion for DETR checkpoints into transformers 5.x ``DetrForObjectDetection``.

Target names (transformers 5.23, ``DetrForObjectDetection(config).state_dict()``)::

    model.backbone.model.<ResNetBackbone keys>      (see the backbone table below)
    model.input_projection.{weight,bias}            1x1 conv, (d_model, C5, 1, 1)
    model.query_position_embeddings.weight          (num_queries, d_model)
    model.encoder.layers.N.self_attn.{q,k,v,o}_proj.*, self_attn_layer_norm.*,
                         mlp.fc1.*, mlp.fc2.*, final_layer_norm.*
    model.decoder.layers.N.self_attn.{q,k,v,o}_proj.*, self_attn_layer_norm.*,
                         encoder_attn.{q,k,v,o}_proj.*, encoder_attn_layer_norm.*,
                         mlp.fc1.*, mlp.fc2.*, final_layer_norm.*
    model.decoder.layernorm.*
    class_labels_classifier.{weight,bias}            (num_labels + 1, d_model)
    bbox_predictor.layers.{0,1,2}.*

Backbone (timm / torchvision ResNet names -> transformers ``ResNetBackbone`` names)::

    conv1.weight                  -> embedder.embedder.convolution.weight
    bn1.*                         -> embedder.embedder.normalization.*
    layerS.B.convI.weight         -> encoder.stages.{S-1}.layers.B.layer.{I-1}.convolution.weight
    layerS.B.bnI.*                -> encoder.stages.{S-1}.layers.B.layer.{I-1}.normalization.*
    layerS.B.downsample.0.weight  -> encoder.stages.{S-1}.layers.B.shortcut.convolution.weight
    layerS.B.downsample.1.*       -> encoder.stages.{S-1}.layers.B.shortcut.normalization.*

Any number of blocks per stage is handled (the depths are read off the keys).

Hugging Face checkpoints written by transformers 4.x (the hub's ``facebook/detr-resnet-50``)
and by ``save_pretrained`` in 5.x use the legacy names ``model.backbone.conv_encoder.``,
``*.out_proj.`` and ``layers.N.fc1/fc2``; :func:`hf_to_current` renames them.

The original facebookresearch layout (:func:`original_to_hf`) packs q, k, v of every attention
into ``in_proj_weight`` (3*d_model, d_model) / ``in_proj_bias`` (3*d_model,) in that order;
its encoder layer is ``norm1`` (after attention) / ``norm2`` (after the FFN), its decoder
layer ``norm1`` (self-attention) / ``norm2`` (cross-attention ``multihead_attn``) / ``norm3``
(FFN), matching transformers' post-norm layers one to one.
"""

from __future__ import annotations

import re

import torch

BACKBONE = "model.backbone.model."
_TIMM_STEM = {"conv1.weight": "embedder.embedder.convolution.weight"}
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def is_timm_resnet_key(key: str) -> bool:
    """True for a timm / torchvision ResNet key (``conv1.*``, ``bn1.*``, ``layerS.*``, ``fc.*``)."""
    return key.startswith(("conv1.", "bn1.", "fc.")) or bool(_BLOCK.match(key))


def timm_resnet_key(key: str) -> str:
    """One timm / torchvision ResNet key -> the transformers ``ResNetBackbone`` key.

    Keys that are no part of a features-only backbone (``fc.*``) come back unchanged, so the
    final key check reports them as unexpected instead of dropping weights silently.
    """
    if key in _TIMM_STEM:
        return _TIMM_STEM[key]
    if key.startswith("bn1."):
        return "embedder.embedder.normalization." + key[len("bn1."):]
    m = _BLOCK.match(key)
    if not m:
        return key
    stage, block, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
    prefix = f"encoder.stages.{stage}.layers.{block}."
    if rest.startswith("downsample.0."):
        return prefix + "shortcut.convolution." + rest[len("downsample.0."):]
    if rest.startswith("downsample.1."):
        return prefix + "shortcut.normalization." + rest[len("downsample.1."):]
    conv = re.match(r"^(conv|bn)([1-3])\.(.+)$", rest)
    if not conv:
        return key
    kind = "convolution" if conv.group(1) == "conv" else "normalization"
    return f"{prefix}layer.{int(conv.group(2)) - 1}.{kind}.{conv.group(3)}"


def resnet_config_from_timm(sd: dict[str, torch.Tensor], prefix: str) -> dict:
    """``ResNetConfig`` kwargs for the timm / torchvision ResNet whose keys start with ``prefix``.

    Read off the tensors: ``embedding_size`` = conv1 output channels; ``depths`` = blocks per
    ``layerS``; ``hidden_sizes`` = each stage's output channels (conv3 of a bottleneck, conv2
    of a basic block); ``layer_type`` = bottleneck when ``layer1.0.conv3`` exists.  The
    backbone feeds DETR its last stage only (``out_features=["stage4"]``).
    """
    bottleneck = f"{prefix}layer1.0.conv3.weight" in sd
    last_conv = "conv3" if bottleneck else "conv2"
    depths, hidden = [], []
    for stage in range(1, 5):
        blocks = {int(m.group(2)) for k in sd if k.startswith(prefix)
                  for m in [_BLOCK.match(k[len(prefix):])] if m and m.group(1) == str(stage)}
        key = f"{prefix}layer{stage}.0.{last_conv}.weight"
        if not blocks or key not in sd:
            raise KeyError(f"{prefix}layer{stage}.0.{last_conv}.weight")
        depths.append(max(blocks) + 1)
        hidden.append(int(sd[key].shape[0]))
    return {
        "embedding_size": int(sd[f"{prefix}conv1.weight"].shape[0]),
        "hidden_sizes": hidden,
        "depths": depths,
        "layer_type": "bottleneck" if bottleneck else "basic",
        "hidden_act": "relu",
        # timm / torchvision ResNet v1.5: stride on the 3x3 conv, none in the first stage
        "downsample_in_bottleneck": False,
        "downsample_in_first_stage": False,
        "out_features": ["stage4"],
    }


def hf_to_current(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF DETR state dict in any transformers naming -> transformers 5.23 names.

    Backbone keys keep their own names under ``model.backbone.model.``: timm ones (hub
    ``facebook/detr-resnet-50``, ``use_timm_backbone: true``) still need
    :func:`rename_timm_backbone`, after :func:`resnet_config_from_timm` has read them.
    ``num_batches_tracked`` buffers are dropped (frozen batch norm has none).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("model.backbone.conv_encoder.", "model.backbone.", 1)
        key = key.replace(".out_proj.", ".o_proj.")
        key = re.sub(r"(layers\.\d+)\.fc([12])\.", r"\1.mlp.fc\2.", key)
        out[key] = value
    return out


def rename_timm_backbone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.backbone.model.<timm ResNet key>`` -> ``...model.<ResNetBackbone key>``."""
    return {BACKBONE + timm_resnet_key(k[len(BACKBONE):]) if k.startswith(BACKBONE) else k: v
            for k, v in sd.items()}


# original name (after the layer prefix) -> transformers name, for encoder and decoder layers
_ENC = {"self_attn.out_proj": "self_attn.o_proj", "linear1": "mlp.fc1", "linear2": "mlp.fc2",
        "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
_DEC = {"self_attn.out_proj": "self_attn.o_proj", "multihead_attn.out_proj": "encoder_attn.o_proj",
        "linear1": "mlp.fc1", "linear2": "mlp.fc2", "norm1": "self_attn_layer_norm",
        "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm"}
_TOP = {"input_proj": "model.input_projection", "query_embed": "model.query_position_embeddings",
        "transformer.decoder.norm": "model.decoder.layernorm",
        "class_embed": "class_labels_classifier", "bbox_embed": "bbox_predictor"}
ORIGINAL_BACKBONE = "backbone.0.body."
_LAYER = re.compile(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")


def _split_in_proj(out: dict, prefix: str, kind: str, value: torch.Tensor) -> None:
    """Packed (3*d, ...) in_proj ``kind`` (weight|bias) -> ``prefix.{q,k,v}_proj.kind``."""
    q, k, v = value.chunk(3, dim=0)
    for name, part in zip("qkv", (q, k, v)):
        out[f"{prefix}.{name}_proj.{kind}"] = part.clone()


def original_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """facebookresearch DETR ``checkpoint["model"]`` -> transformers 5.23 names.

    Keys that match no rule keep their name, so the key check after conversion reports
    them (e.g. a pre-norm model's ``transformer.encoder.norm``) instead of dropping them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(ORIGINAL_BACKBONE):
            out[BACKBONE + timm_resnet_key(key[len(ORIGINAL_BACKBONE):])] = value
            continue
        m = _LAYER.match(key)
        if m:
            side, idx, rest = m.groups()
            prefix = f"model.{side}.layers.{idx}"
            table = _ENC if side == "encoder" else _DEC
            attn = re.match(r"^(self_attn|multihead_attn)\.in_proj_(weight|bias)$", rest)
            if attn:
                target = "self_attn" if attn.group(1) == "self_attn" else "encoder_attn"
                _split_in_proj(out, f"{prefix}.{target}", attn.group(2), value)
                continue
            module, _, param = rest.rpartition(".")
            out[f"{prefix}.{table.get(module, module)}.{param}"] = value
            continue
        module, _, param = key.rpartition(".")
        for old, new in _TOP.items():
            if module == old or module.startswith(old + "."):
                module = new + module[len(old):]
                break
        out[f"{module}.{param}"] = value
    return out


def original_hyperparameters(sd: dict[str, torch.Tensor]) -> dict:
    """DetrConfig fields read off an original state dict's shapes (heads are not in them)."""
    def count(side: str) -> int:
        idx = {int(m.group(2)) for k in sd for m in [_LAYER.match(k)] if m and m.group(1) == side}
        return max(idx) + 1 if idx else 0

    queries, d_model = sd["query_embed.weight"].shape
    return {
        "d_model": int(d_model),
        "num_queries": int(queries),
        "encoder_layers": count("encoder"),
        "decoder_layers": count("decoder"),
        "encoder_ffn_dim": int(sd["transformer.encoder.layers.0.linear1.weight"].shape[0]),
        "decoder_ffn_dim": int(sd["transformer.decoder.layers.0.linear1.weight"].shape[0]),
        "num_labels": int(sd["class_embed.weight"].shape[0]) - 1,
    }
