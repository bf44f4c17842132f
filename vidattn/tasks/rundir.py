"""A run directory: what train-head writes, and the one reader every other command uses.

RUN_DIR/
  config.json          task, head name, head config, training config, store URL, classes,
                       stream (and the task's own fields, e.g. a referring run's text array)
  model.safetensors    the selected (best validation) head weights (LightGBM: model*.txt)
  metrics.json         per-epoch history, selected epoch, test metrics
  curves.png           training loss and validation metric per epoch
  eval-<split>[-fusion].json   written by ``vidattn evaluate``

Runs written before the task was recorded open too (``referring: true`` means refer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vidattn.registry import HEADS, head_config_class, head_trainer, resolve


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return device


def build_head(name: str, cfg):
    return resolve(HEADS, name, "head")(cfg)


def save_weights(run_dir: Path, head: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(run_dir / "model.safetensors"))


@dataclass
class RunDir:
    """An existing run directory: ``config`` and ``metrics`` as written by train-head."""

    path: Path
    config: dict

    @classmethod
    def open(cls, run_dir: str | Path) -> RunDir:
        path = Path(run_dir)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: not a vidattn run directory (no config.json)")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
        return cls(path, config)

    @staticmethod
    def write(run_dir: str | Path, config: dict, metrics: dict) -> RunDir:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        (path / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return RunDir(path, config)

    @property
    def task(self):
        from vidattn import tasks

        return tasks.for_run(self.config)

    @property
    def metrics(self) -> dict:
        p = self.path / "metrics.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    @property
    def head_name(self) -> str:
        return self.config["head"]

    @property
    def label(self) -> str:
        """The method as tables name it: the head, "+MFR" when trained with a teacher."""
        return self.head_name + (" +MFR" if self.config.get("train", {}).get("teacher") else "")

    def load_head(self, device: str = "cpu"):
        """The head in eval mode.  Weights via safetensors only (LightGBM: its text files)."""
        from safetensors.torch import load_file

        head_cfg = head_config_class(self.head_name)(**self.config["head_config"])
        if head_trainer(self.head_name) == "lightgbm":
            from vidattn.heads.lightgbm import LightGBMHead

            return LightGBMHead.load(head_cfg, self.path)
        head = build_head(self.head_name, head_cfg)
        weights = self.path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: the run has no weights")
        head.load_state_dict(load_file(str(weights)))
        return head.to(device).eval()

    def eval_path(self, split: str, fusion: bool = False) -> Path:
        return self.path / f"eval-{split}{'-fusion' if fusion else ''}.json"

    def write_eval(self, split: str, summary: dict, fusion: bool = False) -> Path:
        out = self.eval_path(split, fusion)
        out.write_text(json.dumps(summary, indent=2))
        return out


def load_run(run_dir: str | Path, device: str = "cpu"):
    """-> (head in eval mode, config dict): the reader's two most used answers at once."""
    run = RunDir.open(run_dir)
    return run.load_head(device), run.config
