"""A run directory: what training writes and what evaluate/explain read back.

RUN_DIR/
  config.json       head name, head config, training config, store URL, classes, stream
  model.safetensors the selected (best validation) head weights
  metrics.json      per-epoch history, selected epoch, test metrics
  curves.png        training loss and validation mAP per epoch
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vidattn.registry import HEADS, head_config_class, head_trainer, resolve


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return device


def build_head(name: str, cfg) -> torch.nn.Module:
    return resolve(HEADS, name, "head")(cfg)


def save_weights(run_dir: Path, head: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(run_dir / "model.safetensors"))


def save_json(run_dir: Path, config: dict, metrics: dict) -> None:
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def load_run(run_dir: str | Path, device: str = "cpu"):
    """-> (head in eval mode, config dict).  Weights via safetensors only."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not a vidattn run directory (no config.json)")
    config = json.loads(cfg_path.read_text())
    head_cfg = head_config_class(config["head"])(**config["head_config"])
    if head_trainer(config["head"]) == "lightgbm":
        from vidattn.heads.lightgbm import LightGBMHead

        return LightGBMHead.load(head_cfg, run_dir), config
    head = build_head(config["head"], head_cfg)
    head.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return head.to(device).eval(), config


@torch.no_grad()
def predict(head, maps: list[torch.Tensor], multilabel: bool, device: str) -> np.ndarray:
    """Whole (D, T, H, W) maps, one video at a time (lengths differ) -> (N, K) scores."""
    from vidattn.pipeline.data import to_tensor

    head.eval()
    out = []
    for m in maps:
        logits = head(to_tensor([m], device))["logits"]
        out.append((logits.sigmoid() if multilabel else logits.softmax(-1)).cpu().numpy()[0])
    return np.stack(out) if out else np.zeros((0, 0), np.float32)
