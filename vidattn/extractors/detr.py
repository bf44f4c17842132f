"""Frozen DETR object detector on keyframes, through transformers' ``DetrForObjectDetection``.

Two public checkpoint layouts load (key mapping in :mod:`vidattn.extractors.detr_weights`):

1. A Hugging Face directory: ``config.json`` (``model_type: detr``) + ``model.safetensors`` or
   ``pytorch_model.bin`` (a path to that weights file inside such a directory works too).

   - ``"hf-timm"``: the hub's ``facebook/detr-resnet-50`` (and -101) layout, whose config says
     ``use_timm_backbone: true, backbone: "resnet50"`` and whose backbone keys are timm ResNet
     names (``model.backbone.conv_encoder.model.layer1.0.conv1.weight``).  timm cannot be
     installed here, so the model is built with a transformers ``ResNetConfig`` backbone
     (same architecture: v1.5 bottlenecks, stride on the 3x3 conv) whose depths / widths are
     read off the checkpoint's tensors, and the timm keys are renamed to it.
   - ``"hf"``: a config with a transformers backbone (``backbone_config.model_type: resnet``,
     e.g. written by ``save_pretrained``): built from the config as it is.

   Both accept the legacy 4.x names (``conv_encoder``, ``out_proj``, ``fc1``) of the hub files.
2. ``"original"``: facebookresearch's ``detr-r50-*.pth``, a dict whose ``"model"`` is the state
   dict (``backbone.0.body.*``, ``transformer.*`` with packed ``in_proj``, ``class_embed``,
   ``bbox_embed``).  Hyper-parameters come from the tensor shapes; heads from
   ``checkpoint["args"].nheads`` when present, else DETR's 8; labels from
   ``vidattn/data/coco_detr_labels.txt`` (91 COCO ids, "N/A" for the unused ones).  DC5
   (dilated) checkpoints are refused: transformers' ResNet has no dilation.

Weights are read by :func:`vidattn.safeload.load_state` (safetensors or weights-only torch;
an arbitrary pickle needs ``trust_checkpoint``).  The model is built with random weights and
then loaded strictly: any missing, unexpected or mis-shaped key after conversion is a one-line
``ValueError`` naming the file, never a silently random detector.

Pre-processing is transformers' PIL ``DetrImageProcessorPil`` (the fast one needs
torchvision): bilinear resize of the shortest edge to ``size`` with the longest capped at
``max_size``, rescale to [0, 1], ImageNet mean/std; no padding (all frames of a call share
one size, so ``batch_size`` frames go through one forward pass without a pixel mask).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from vidattn.extractors import detr_weights as W
from vidattn.safeload import UntrustedCheckpointError, load_state, sha256_file

LAYOUTS = ("a Hugging Face DETR directory (config.json + model.safetensors or pytorch_model.bin, "
           "as facebook/detr-resnet-50) or an original facebookresearch DETR .pth "
           "({'model': state_dict})")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
DEFAULT_HEADS = 8  # every released facebookresearch DETR uses 8 attention heads


@dataclass(frozen=True)
class DetrConfig:
    checkpoint: str            # HF directory or original .pth
    size: int = 800            # shortest image edge fed to DETR (DETR's training scale)
    max_size: int = 1333       # longest edge cap
    device: str = "cpu"
    amp: bool = True           # bf16 autocast on CUDA only
    batch_size: int = 4
    trust_checkpoint: bool = False


def coco_labels() -> list[str]:
    """DETR's COCO label map: 91 names, index = class id, "N/A" for ids COCO does not use."""
    text = resources.files("vidattn").joinpath("data/coco_detr_labels.txt").read_text()
    return text.splitlines()


def _not_detr(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a DETR checkpoint ({why}); expected {LAYOUTS}")


def _hf_dir(path: Path) -> Path | None:
    """The HF directory ``path`` is or whose weights file it is; None for anything else."""
    if path.is_dir():
        return path
    if path.name in HF_WEIGHTS and (path.parent / "config.json").is_file():
        return path.parent
    return None


def _label_names(id2label: dict, num_labels: int) -> list[str]:
    """Names by id; generic ``LABEL_i`` names of a 91-class model are DETR's COCO ids."""
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(num_labels)]
    if num_labels == 91 and all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return coco_labels()
    return names


def _is_timm(cfg: dict) -> bool:
    """Whether an HF DETR config asks for a timm backbone (the 4.x flag or the 5.x sub-config)."""
    bb = cfg.get("backbone_config")
    if isinstance(bb, dict):
        return bb.get("model_type") == "timm_backbone"
    # 5.x builds a timm backbone when neither a backbone_config nor the flag says otherwise
    return bool(cfg.get("use_timm_backbone", True))


def _load_hf(d: Path, trust: bool):
    """(transformers DetrConfig, converted state dict, layout, weights file) of an HF dir."""
    from transformers import DetrConfig as HFDetrConfig
    from transformers import ResNetConfig

    cfg_path = d / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise _not_detr(d, f"no readable config.json: {type(e).__name__}") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "detr":
        kind = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise _not_detr(d, f"config.json model_type is {kind!r}")
    weights = next((d / n for n in HF_WEIGHTS if (d / n).is_file()), None)
    if weights is None:
        raise _not_detr(d, f"no {' or '.join(HF_WEIGHTS)}")
    timm = _is_timm(cfg)
    sd = W.hf_to_current(load_state(weights, trust))
    if not timm:
        return HFDetrConfig.from_dict(cfg), sd, "hf", weights
    bb = cfg.get("backbone_config") if isinstance(cfg.get("backbone_config"), dict) else {}
    name = bb.get("backbone") or cfg.get("backbone") or "resnet50"
    if cfg.get("dilation") or bb.get("output_stride") not in (None, 32):
        raise ValueError(f"{d}: dilated (DC5) DETR is not supported: transformers' ResNet "
                         "backbone has no dilation")
    try:
        if not str(name).startswith("resnet"):
            raise KeyError(name)
        resnet = W.resnet_config_from_timm(sd, W.BACKBONE)
    except KeyError as e:
        raise ValueError(f"{weights}: timm backbone {name!r} is not a plain ResNet this loader "
                         f"converts (no {e.args[0]})") from None
    kept = {k: v for k, v in cfg.items() if k not in (
        "use_timm_backbone", "backbone", "use_pretrained_backbone", "backbone_kwargs",
        "backbone_config", "dilation")}
    kept["backbone_config"] = ResNetConfig(**resnet).to_dict()
    return HFDetrConfig.from_dict(kept), W.rename_timm_backbone(sd), "hf-timm", weights


def _load_original(path: Path, trust: bool):
    """(transformers DetrConfig, converted state dict, "original", path) of a DETR .pth."""
    from transformers import DetrConfig as HFDetrConfig
    from transformers import ResNetConfig

    try:
        # the training script stores its argparse Namespace next to the weights: a plain
        # attribute bag, safe to admit to the weights-only unpickler
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = load_state(path, trust)
    except UntrustedCheckpointError:
        raise
    except ValueError as e:
        raise _not_detr(path, " ".join(str(e).split())) from None
    sd = ckpt.get("model", ckpt)
    if not isinstance(sd, dict) or "query_embed.weight" not in sd or "class_embed.weight" not in sd:
        raise _not_detr(path, "no query_embed / class_embed weights")
    args = ckpt.get("args")
    if getattr(args, "dilation", False) or (args is None and "dc5" in path.name.lower()):
        raise ValueError(f"{path}: dilated (DC5) DETR is not supported: transformers' ResNet "
                         "backbone has no dilation")
    try:
        hp = W.original_hyperparameters(sd)
        resnet = W.resnet_config_from_timm(sd, W.ORIGINAL_BACKBONE)
    except KeyError as e:
        raise ValueError(f"{path}: DETR checkpoint lacks {e.args[0]}") from None
    n = hp["num_labels"]
    labels = coco_labels() if n == 91 else [f"class_{i}" for i in range(n)]
    heads = int(getattr(args, "nheads", DEFAULT_HEADS))
    config = HFDetrConfig(
        backbone_config=ResNetConfig(**resnet), encoder_attention_heads=heads,
        decoder_attention_heads=heads, id2label=dict(enumerate(labels)), **hp)
    return config, W.original_to_hf(sd), "original", path


def _strict_load(model: torch.nn.Module, sd: dict, path: Path) -> None:
    """Load ``sd`` into ``model``; any key or shape difference is a one-line ValueError."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        raise ValueError(f"{path}: DETR weights do not fit the model after key conversion: "
                         f"{len(missing)} missing ({few(missing)}), "
                         f"{len(unexpected)} unexpected ({few(unexpected)})")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(sd[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{path}: {len(bad)} DETR weights have the wrong shape, e.g. {k}: "
                         f"{tuple(sd[k].shape)} in the file, {tuple(expected[k].shape)} expected")
    model.load_state_dict(sd, strict=True)


def build(cfg: DetrConfig) -> Detector:
    """Load ``cfg.checkpoint`` (either layout) into a frozen, eval-mode :class:`Detector`."""
    from transformers import DetrForObjectDetection, DetrImageProcessorPil

    path = Path(cfg.checkpoint).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: DETR checkpoint not found")
    d = _hf_dir(path)
    config, sd, layout, weights = _load_hf(d, cfg.trust_checkpoint) if d is not None \
        else _load_original(path, cfg.trust_checkpoint)
    model = DetrForObjectDetection(config)
    _strict_load(model, sd, weights)
    model.requires_grad_(False).eval().to(cfg.device)
    processor = DetrImageProcessorPil(
        size={"shortest_edge": cfg.size, "longest_edge": cfg.max_size}, do_pad=False)
    labels = _label_names(config.id2label, config.num_labels)
    return Detector(cfg, model, processor, labels, layout, path, weights)


class Detector:
    """A loaded DETR; call it on (K, H, W, 3) uint8 RGB keyframes."""

    def __init__(self, cfg: DetrConfig, model, processor, label_names: list[str], layout: str,
                 checkpoint: Path, weights: Path):
        self.cfg = cfg
        self.model = model
        self.processor = processor
        self.label_names = label_names
        self.num_queries = int(model.config.num_queries)
        self.layout = layout
        self.checkpoint = checkpoint
        self.weights = weights
        self._sha256: str | None = None

    def _autocast(self):
        if self.cfg.amp and torch.device(self.cfg.device).type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """frames (K, H, W, 3) uint8 RGB keyframes (any H, W) -> (K, N_o, 10) float32 per query:
        [cx, cy, w, h, x1, y1, x2, y2, class_id, score], boxes normalised to the input frame.

        (cx, cy, w, h) is DETR's sigmoid box as it is (already in [0, 1]); (x1, y1, x2, y2)
        = centre -+ half size, clipped to [0, 1].  class_id = argmax over the real classes
        (no-object excluded), score = its probability in the softmax over all num_labels + 1
        logits (DETR's post-processing).  All N_o queries are kept, in query order.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"DETR expects (K, H, W, 3) uint8 RGB frames, got {frames.shape} "
                             f"{frames.dtype}")
        out = np.zeros((len(frames), self.num_queries, 10), np.float32)
        step = max(1, int(self.cfg.batch_size))
        for start in range(0, len(frames), step):
            chunk = list(frames[start:start + step])
            # frames of one call share H, W: one resized size, so one unpadded batch
            pixels = self.processor(images=chunk, return_tensors="pt",
                                    input_data_format="channels_last")["pixel_values"]
            with torch.inference_mode(), self._autocast():
                res = self.model(pixel_values=pixels.to(self.cfg.device))
            out[start:start + len(chunk)] = detections(res.logits, res.pred_boxes)
        return out

    def provenance(self) -> dict:
        """JSON-able description of the detector, with the weights file's sha256."""
        if self._sha256 is None:  # hashing 160 MB takes a while: only when asked, once
            self._sha256 = sha256_file(self.weights)
        return {"detector": "detr", "checkpoint": str(self.checkpoint), "layout": self.layout,
                "weights_sha256": self._sha256, "size": self.cfg.size,
                "max_size": self.cfg.max_size, "num_queries": self.num_queries,
                "num_labels": len(self.label_names)}


def detections(logits: torch.Tensor, boxes: torch.Tensor) -> np.ndarray:
    """DETR outputs -> (B, N_o, 10) float32 rows (see :meth:`Detector.__call__`).

    logits: (B, N_o, num_labels + 1), the last being no-object; boxes: (B, N_o, 4) sigmoid
    (cx, cy, w, h) relative to the (unpadded) input image.
    """
    probs = logits.float().softmax(-1)
    score, cls = probs[..., :-1].max(-1)
    boxes = boxes.float()
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1)
    rows = torch.cat([boxes, corners, cls.float()[..., None], score[..., None]], -1)
    return rows.cpu().numpy().astype(np.float32)
