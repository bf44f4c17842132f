"""The one fit loop, for the heads of every task, and LightGBM's documented branch.

Epochs over random temporal crops (:func:`vidattn.data.dataset.epoch_draws`: every draw is
made here, in the main process, so a run is the same with any number of loader workers,
streamed or in memory); after each epoch the task scores the validation split and names the
key to maximise; the weights of the best epoch are kept and left in the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vidattn.data.dataset import StoreDataset, epoch_draws, shape_batches
from vidattn.progress import bar as progress

PREFETCH = 2  # batches each reader process keeps ready


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    workers: int = 0  # DataLoader worker processes (0: read in this process)
    mfr_weight: float = 1.0
    mfr_rms: bool = False  # W3's MFR divided by sqrt(D*H*W) instead of eq. 9 as written


@dataclass
class Predictions:
    """A head's output on whole maps: scores (N, K) probabilities (softmax, or sigmoid for
    multi-label), boxes (N, 4) for tasks that predict one; rows as ``ids``."""

    ids: list[str]
    scores: np.ndarray
    boxes: np.ndarray | None = None


def loader(ds: StoreDataset, batches, workers: int) -> DataLoader:
    """Batches of ``ds`` in the given order (lists of keys), read by ``workers`` processes.

    Reader processes hand over float16 batches (half the bytes through shared memory, half
    the memory in flight); :func:`to_device` makes them float32.  Two batches in flight per
    worker bound the memory streaming needs.
    """
    collate = partial(ds.collate, dtype=torch.float16) if workers else ds.collate
    return DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                      prefetch_factor=PREFETCH if workers else None)


def eval_batches(ds: StoreDataset, workers: int, batch_size: int = 16) -> DataLoader:
    """Whole maps, batched by shape."""
    return loader(ds, shape_batches(ds, batch_size), workers)


def to_device(batch: dict, device: str) -> dict:
    """Tensors to ``device``; float16 ones (maps from reader processes) as float32."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            v = v.float() if v.dtype == torch.float16 else v
        out[k] = v
    return out


@dataclass
class FitResult:
    history: list[dict]
    selected: int  # the kept epoch (1-based)
    interrupted: bool = False  # SIGINT: the best epoch so far is kept


@dataclass
class _Best:
    key: tuple | None = None
    epoch: int = 0
    state: dict | None = None


def optimizer(head: torch.nn.Module, cfg: FitConfig) -> torch.optim.AdamW:
    """AdamW over the head's trainable parameters; torch's fused kernel where it has one
    (float parameters on the CPU or CUDA): same update, one pass over all tensors instead of
    a Python loop over each (RefAtomNet's 223: 57 -> 16 ms a step on 2 cores)."""
    params = [p for p in head.parameters() if p.requires_grad]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                 for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             fused=fused or None)


def fit(head, task, train: StoreDataset, val: StoreDataset, cfg: FitConfig, device: str,
        rng: np.random.Generator, teacher=None, name: str = "head") -> FitResult:
    """Train ``head`` on ``train``; select on ``val``; leave the kept weights in ``head``.

    ``task.loss`` gives each batch's loss; ``task.predict``/``summarize``/``val_record``
    the validation figures; ``task.selection_key(record)`` what the best epoch maximises.
    Without validation rows the epoch with the lowest training loss is kept.  A
    KeyboardInterrupt (SIGINT) after at least one whole epoch ends training with the best
    epoch so far (``interrupted``); before that it propagates.
    """
    opt = optimizer(head, cfg)
    history: list[dict] = []
    best = _Best()
    try:
        _epochs(head, task, train, val, cfg, device, rng, teacher, name, opt, history, best)
        interrupted = False
    except KeyboardInterrupt:
        if best.state is None:
            raise
        interrupted = True
    head.load_state_dict(best.state)
    return FitResult(history, best.epoch, interrupted)


def _epochs(head, task, train, val, cfg, device, rng, teacher, name, opt, history: list,
            best: _Best) -> None:
    """Run the epochs, appending each one's record and keeping the best weights in ``best``."""
    bar = progress(range(cfg.epochs), desc=f"train {name}", unit="epoch")
    for epoch in bar:
        head.train()
        sums: dict[str, float] = {}
        for batch in loader(train, epoch_draws(train, cfg.batch_size, rng), cfg.workers):
            batch = to_device(batch, device)
            loss, parts = task.loss(head, batch, teacher, cfg.mfr_weight, cfg.mfr_rms)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(batch["index"])
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * n
        record = {"epoch": epoch + 1, **{k: v / len(train) for k, v in sums.items()}}
        if len(val):
            record.update(task.val_record(task.summarize(
                task.predict(head, val, device, cfg.workers), val)))
        key = (*task.selection_key(record), -record["loss"])
        if best.key is None or key > best.key:
            state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            best.key, best.epoch, best.state = key, epoch + 1, state
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}",
                        **{k: f"{v:.3f}" for k, v in record.items() if k.startswith("val_")})


def pooled_features(ds: StoreDataset, workers: int) -> np.ndarray:
    """(N, 2D) [mean | max] of every whole map of ``ds``, in row order, read once."""
    from vidattn.heads.lightgbm import pooled

    out = np.zeros((len(ds), 2 * ds.channels), np.float32)
    for batch in eval_batches(ds, workers):
        out[batch["index"].numpy()] = pooled(batch["fmap"])
    return out


def fit_lightgbm(head, train: StoreDataset, val: StoreDataset, workers: int = 0):
    """Boosting with early stopping on val -> (history, selected iteration)."""
    x_val = pooled_features(val, workers) if len(val) else None
    history = head.fit(pooled_features(train, workers), train.targets, x_val,
                       val.targets if len(val) else None)
    best = max((b.best_iteration or b.num_trees()) for b in head.boosters)
    return history, best


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Training losses per epoch, and the validation metrics on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in [k for k in history[0] if k.startswith("L_") or k in ("loss", "val_loss")]:
        ax.plot(epochs, [h[key] for h in history], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    shown = [k for k in history[0] if k.startswith("val_") and k != "val_loss"]
    if shown:
        ax2 = ax.twinx()
        for key, style in zip(shown, ("k--", "k:", "k-.")):
            ax2.plot(epochs, [h[key] for h in history], style, label=key.replace("_", " "))
        ax2.set_ylabel("validation")
        ax2.set_ylim(0, 1.02)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper center")
    ax.set_title(f"{title}: training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
