"""A run directory: what train-head writes, and the one reader every other command uses.

RUN_DIR/
  config.json          task, head name, head config, training config, store URL, classes,
                       stream (and the task's own fields, e.g. a referring run's text array)
  model.safetensors    the selected (best validation) head weights (LightGBM: model*.txt)
  metrics.json         per-epoch history, selected epoch, test metrics
  curves.png           training loss and validation metric per epoch
  eval-<split>[-fusion].json   written by ``vidattn evaluate``

Runs written before the task was recorded open too (``referring: true`` means refer).

train-head writes a run into a hidden directory beside RUN_DIR and renames it into place
when it is complete (:func:`staging`, :func:`commit`), so a finished run is never half
replaced; one stopped by SIGINT is written the same way with ``"interrupted": true`` in
both JSON files and the best weights so far.  Every file gets the same mode (0666 less the
umask), and a failed write names its file.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from vidattn.registry import HEADS, head_config_class, head_trainer, resolve
from vidattn.stores.files import naming


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return device


def build_head(name: str, cfg):
    return resolve(HEADS, name, "head")(cfg)


def file_mode() -> int:
    """0666 less the process umask: the mode open() gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_weights(run_dir: Path, head: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "model.safetensors"
    with naming(path):
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(path))
        os.chmod(path, file_mode())  # safetensors writes 0600; the other run files are not


def check_out(out: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``out`` that holds a run (a config.json) unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    cfg = out / "config.json"
    if cfg.is_file() and not overwrite:
        try:
            what = json.loads(cfg.read_text()).get("head", "a")
        except (OSError, ValueError):
            what = "a"
        raise FileExistsError(f"{out}: holds a finished {what} run; pass --overwrite to "
                              f"replace it, or choose another --out")


def staging(out: str | Path, overwrite: bool = False) -> Path:
    """A fresh hidden directory beside ``out`` to write a run into (:func:`check_out`
    first)."""
    check_out(out, overwrite)
    out = Path(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with naming(tmp):
        tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, out: str | Path) -> Path:
    """Rename the complete run ``tmp`` to ``out``; a run already there is moved aside
    first and removed after, so ``out`` holds one whole run at every moment but one rename."""
    out = Path(out)
    old = out.parent / f".{out.name}.replaced-{os.getpid()}" if out.exists() else None
    with naming(out):
        if old is not None:
            out.rename(old)
        tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


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
        for name, value in (("config.json", config), ("metrics.json", metrics)):
            with naming(path / name):
                (path / name).write_text(json.dumps(value, indent=2))
        return RunDir(path, config)

    @property
    def interrupted(self) -> bool:
        """Whether training was stopped (SIGINT) before its last epoch."""
        return bool(self.config.get("interrupted"))

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
        label = self.head_name + (" +MFR" if self.config.get("train", {}).get("teacher") else "")
        return label + (" (interrupted)" if self.interrupted else "")

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
        with naming(out):
            out.write_text(json.dumps(summary, indent=2))
        return out


def load_run(run_dir: str | Path, device: str = "cpu"):
    """-> (head in eval mode, config dict): the reader's two most used answers at once."""
    run = RunDir.open(run_dir)
    return run.load_head(device), run.config
