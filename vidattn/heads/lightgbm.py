"""LightGBM on pooled features: gradient-boosted trees over [mean, max] of the map.

Not a neural head: each video's (T, H, W, D) map is pooled to a 2D vector (the mean and the
max over t, h, w), and LightGBM fits a multiclass model (single-label) or one binary model
per class (multi-label), with early stopping on the validation split.  The model is saved in
LightGBM's own text format (``model.txt``, or ``model-<k>.txt`` per class), readable by any
LightGBM.

It presents the head contract to evaluation: ``forward(fmap)`` (B, D, T, H, W) returns
"logits" whose softmax (sigmoid, multi-label) are the booster's probabilities, so
``evaluate``/``compare``/``score`` treat it like every other head.  It has no attention maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TASK = "classify"  # map -> labels (vidattn/tasks/classify.py)
TRAINER = "lightgbm"  # fitted by LightGBM on pooled maps, not by the torch fit loop


@dataclass(frozen=True)
class Config:
    in_channels: int = 1024
    num_classes: int = 4
    multilabel: bool = False
    num_leaves: int = 15  # small trees: datasets of these papers have 10^2-10^4 clips
    learning_rate: float = 0.05
    n_estimators: int = 500  # upper bound; early stopping picks the number used
    early_stopping_rounds: int = 30
    min_child_samples: int = 5
    feature_fraction: float = 0.5  # 2048 correlated features: subsample for diversity
    seed: int = 0


def pooled(fmap: np.ndarray | torch.Tensor) -> np.ndarray:
    """(B, D, T, H, W) -> (B, 2D): [mean over t,h,w | max over t,h,w], float32."""
    x = torch.as_tensor(fmap).float().flatten(2)
    return torch.cat([x.mean(2), x.amax(2)], 1).numpy()


class LightGBMHead:
    """A fitted booster (or one per class) behind the head interface."""

    uses_conjugates = False
    map_names: tuple[str, ...] = ()

    def __init__(self, cfg: Config, boosters: list | None = None):
        self.cfg = cfg
        self.boosters = boosters or []

    # the torch-module calls evaluation makes; a booster has no device or mode
    def eval(self):
        return self

    def to(self, device):
        return self

    def parameters(self):
        return iter(())

    def n_params(self) -> int:
        """Tree nodes, the closest analogue of a parameter count."""
        return int(sum(b.num_trees() * (2 * self.cfg.num_leaves - 1) for b in self.boosters))

    def __call__(self, fmap) -> dict[str, torch.Tensor]:
        return self.forward(fmap)

    def forward(self, fmap) -> dict[str, torch.Tensor]:
        if not self.boosters:
            raise RuntimeError("lightgbm head is not fitted")
        x = pooled(fmap.cpu() if isinstance(fmap, torch.Tensor) else fmap)
        if self.cfg.multilabel:
            p = np.stack([b.predict(x) for b in self.boosters], 1)
            p = np.clip(p, 1e-7, 1 - 1e-7)
            logits = np.log(p) - np.log1p(-p)  # sigmoid(logit(p)) = p
        else:
            p = np.clip(self.boosters[0].predict(x), 1e-12, 1.0)
            logits = np.log(p)  # softmax(log p) = p
        return {"logits": torch.from_numpy(np.asarray(logits, np.float32))}

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None,
            y_val: np.ndarray | None) -> list[dict]:
        """x: (N, 2D) pooled features; y: (N,) indices or (N, K) multi-hot.

        Returns per-iteration validation losses, for the curves plot.
        """
        import lightgbm as lgb

        c = self.cfg
        base = {"learning_rate": c.learning_rate, "num_leaves": c.num_leaves,
                "min_child_samples": c.min_child_samples, "feature_fraction": c.feature_fraction,
                "seed": c.seed, "deterministic": True, "num_threads": 0, "verbose": -1}
        col = np.ascontiguousarray  # LightGBM copies (and warns about) strided label views
        targets = ([(col(y_train[:, k]), None if y_val is None else col(y_val[:, k]))
                    for k in range(c.num_classes)] if c.multilabel else [(y_train, y_val)])
        params = ({**base, "objective": "binary"} if c.multilabel else
                  {**base, "objective": "multiclass", "num_class": c.num_classes})
        history: list[dict] = []
        self.boosters = []
        for yt, yv in targets:
            evals: dict = {}
            train_set = lgb.Dataset(x_train, label=yt)
            valid = [lgb.Dataset(x_val, label=yv, reference=train_set)] if yv is not None else []
            callbacks = [lgb.record_evaluation(evals)]
            if valid:
                callbacks.append(lgb.early_stopping(c.early_stopping_rounds, verbose=False))
            booster = lgb.train(params, train_set, num_boost_round=c.n_estimators,
                                valid_sets=valid, callbacks=callbacks)
            self.boosters.append(booster)
            if evals:
                curve = next(iter(next(iter(evals.values())).values()))
                for i, v in enumerate(curve):
                    if i >= len(history):
                        history.append({"epoch": i + 1, "val_loss": 0.0})
                    history[i]["val_loss"] += float(v) / len(targets)
        return history

    def save(self, run_dir: Path) -> None:
        names = ([f"model-{k}.txt" for k in range(len(self.boosters))]
                 if self.cfg.multilabel else ["model.txt"])
        for booster, name in zip(self.boosters, names):
            booster.save_model(str(run_dir / name), num_iteration=booster.best_iteration or None)

    @classmethod
    def load(cls, cfg: Config, run_dir: Path) -> LightGBMHead:
        import lightgbm as lgb

        names = ([f"model-{k}.txt" for k in range(cfg.num_classes)]
                 if cfg.multilabel else ["model.txt"])
        missing = [n for n in names if not (run_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{run_dir}: lightgbm run is missing {missing}")
        return cls(cfg, [lgb.Booster(model_file=str(run_dir / n)) for n in names])


def build(cfg: Config) -> LightGBMHead:
    return LightGBMHead(cfg)


def pool_list(maps: list[torch.Tensor]) -> np.ndarray:
    """Channels-first maps (D, T, H, W) of any sizes -> (N, 2D) pooled features."""
    out = [pooled(m[None]) for m in maps]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
