"""``vidattn train-head``: train a head on cached maps in a plain loop.

Reads the store's train split (and conjugates, for heads that use them) into memory,
trains on random temporal crops, keeps the epoch with the best validation mAP, and
evaluates it on the test split with whole maps.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidattn.heads.common import mature_feature_loss
from vidattn.metrics import mean_ap
from vidattn.options import parse_options
from vidattn.pipeline import data
from vidattn.pipeline.runs import (
    build_head,
    load_run,
    pick_device,
    predict,
    save_json,
    save_weights,
)
from vidattn.progress import bar as progress
from vidattn.registry import head_config_class, head_trainer
from vidattn.stores import open_store
from vidattn.stores.schema import ARRAYS


@dataclass(frozen=True)
class TrainConfig:
    head: str = "actx"
    store: str = "stores/sample"
    out: str = "runs/actx"
    stream: str = "rgb"
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    crop_t: int = 4  # temporal crop length in feature steps (x8 frames)
    val_fraction: float = 0.25  # held out of train when the manifest has no val split
    seed: int = 0
    device: str = "auto"
    options: dict = field(default_factory=dict)  # head Config overrides, key -> str
    teacher: str | None = None  # run dir of a trained head of the same kind: W3's MFR, eq. 9
    mfr_weight: float = 1.0
    det_min_score: float = 0.5  # referring heads: person queries below it are masked


def split_ids(manifest, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Labelled clip ids per split (actions, and background clips that carry a class, as in
    HACS-30); a val split is carved out of train (stratified) if absent."""
    actions = manifest[(manifest.role != "conjugate") & (manifest.labels.map(len) > 0)]
    ids = {
        s: actions.loc[actions.split == s, "video_id"].tolist() for s in ("train", "val", "test")
    }
    if not ids["val"] and val_fraction > 0:
        rng = np.random.default_rng(seed)
        train = actions[actions.split == "train"]
        first = train.labels.map(lambda x: int(x[0]) if len(x) else -1)
        val = []
        for _, group in train.groupby(first):
            g = group.video_id.tolist()
            n = int(round(len(g) * val_fraction))
            val += [g[i] for i in sorted(rng.permutation(len(g))[:n])]
        ids["val"] = [v for v in ids["train"] if v in set(val)]
        ids["train"] = [v for v in ids["train"] if v not in set(val)]
    return ids


def _subset(out: dict, mask: torch.Tensor) -> dict:
    return {k: v[mask] for k, v in out.items()}


def train_step(head, batch, targets, conj, has_conj, opt, teacher=None,
               mfr_weight: float = 1.0) -> dict[str, float]:
    """One optimisation step; samples without a conjugate get the classification loss only.

    With a ``teacher`` (a frozen run of the same head), the student's attended map also
    regresses onto the teacher's: W3's mature-feature-guided regularisation.
    """
    head.train()
    out = head(batch)
    parts: dict[str, float] = {}
    if conj is not None and has_conj.all():
        loss, parts = head.loss(out, batch, targets, conj)
    elif conj is not None and has_conj.any():
        m = has_conj
        l1, p1 = head.loss(_subset(out, m), batch[m], targets[m], conj)
        l2, _ = head.loss(_subset(out, ~m), batch[~m], targets[~m])
        frac = m.float().mean()
        loss, parts = frac * l1 + (1 - frac) * l2, p1
    else:
        loss, parts = head.loss(out, batch, targets)
    if teacher is not None:
        with torch.no_grad():
            target_map = teacher(batch)["attended"]
        l_fm = mature_feature_loss(out["attended"], target_map)
        loss = loss + mfr_weight * l_fm
        parts = {**parts, "L_fm": l_fm.item()}
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.item(), **parts}


def evaluate_split(head, split: data.Split, multilabel: bool, num_classes: int, device: str):
    scores = predict(head, split.maps, multilabel, device)
    return scores, mean_ap(scores, data.one_hot(split.targets, num_classes))


def load_teacher(cfg: TrainConfig, device: str):
    """A frozen teacher run for MFR: same head kind, and a head that exposes "attended"."""
    if cfg.teacher is None:
        return None
    teacher, tconf = load_run(cfg.teacher, device)
    if tconf["head"] != cfg.head:
        raise ValueError(f"{cfg.teacher}: teacher is a {tconf['head']!r} run; MFR needs the "
                         f"same architecture as the student ({cfg.head!r})")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def fit_torch(cfg: TrainConfig, head, train: data.Split, val: data.Split, multilabel: bool,
              num_classes: int, device: str, rng: np.random.Generator):
    """The training loop; leaves the best-validation weights in ``head``.

    Returns (history, selected epoch, the (H, W) training batches were cropped to).
    """
    uses_conj = bool(getattr(head, "uses_conjugates", False))
    teacher = load_teacher(cfg, device)
    if teacher is not None:
        with torch.no_grad():  # eval mode: the probe must not draw dropout randomness
            has_attended = "attended" in head.eval()(data.to_tensor(train.maps[:1], device))
        if not has_attended:
            raise ValueError(f"head {cfg.head!r} has no attended map for MFR (--teacher)")
    hw = data.common_hw(train)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, best, best_state = [], None, None
    bar = progress(range(cfg.epochs), desc=f"train {cfg.head}", unit="epoch")
    for epoch in bar:
        perm = rng.permutation(len(train))
        sums: dict[str, float] = {}
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            batch = data.batch([train.maps[j] for j in idx], cfg.crop_t, hw, rng, device)
            targets = torch.from_numpy(train.targets[idx]).to(device)
            conj, has_conj = None, torch.zeros(len(idx), dtype=torch.bool)
            if uses_conj:
                has_conj = torch.tensor([bool(train.conjugates[j]) for j in idx])
                picks = [train.conj_maps[int(rng.choice(train.conjugates[j]))]
                         for j in idx if train.conjugates[j]]
                if picks:
                    conj = data.batch(picks, cfg.crop_t, hw, rng, device)
            step = train_step(head, batch, targets, conj, has_conj.to(device), opt, teacher,
                              cfg.mfr_weight)
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        record = {"epoch": epoch + 1, **{k: v / len(perm) for k, v in sums.items()}}
        if len(val):
            _, record["val_mAP"] = evaluate_split(head, val, multilabel, num_classes, device)
        history.append(record)
        key = (record.get("val_mAP", 0.0), -record["loss"])
        if best is None or key > best[0]:
            best = (key, epoch + 1)
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        bar.set_postfix(loss=f"{record['loss']:.3f}", val_mAP=f"{record.get('val_mAP', 0):.3f}")
    head.load_state_dict(best_state)
    return history, best[1], hw


def fit_lightgbm(head, train: data.Split, val: data.Split):
    """Boosting with early stopping on val -> (history, selected iteration)."""
    from vidattn.heads.lightgbm import pool_list

    x_val = pool_list(val.maps) if len(val) else None
    history = head.fit(pool_list(train.maps), train.targets, x_val,
                       val.targets if len(val) else None)
    best = max((b.best_iteration or b.num_trees()) for b in head.boosters)
    return history, best


def run(cfg: TrainConfig) -> dict:
    """Train, select, test; write the run directory; return the metrics dict."""
    trainer = head_trainer(cfg.head)
    if trainer == "referring":  # RefAtomNet: three streams in, box and actions out
        from vidattn.pipeline import train_ref

        return train_ref.run(cfg)
    t0 = time.time()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    store = open_store(cfg.store)
    manifest = store.manifest()
    classes = store.classes
    multilabel = data.is_multilabel(store)
    if cfg.stream not in ARRAYS:
        raise ValueError(f"unknown stream {cfg.stream!r}; the store's arrays: "
                         f"{', '.join(ARRAYS)}")
    head_cfg = parse_options(
        head_config_class(cfg.head), cfg.options, num_classes=len(classes),
        multilabel=multilabel, in_channels=ARRAYS[cfg.stream].channels,
    )
    head = build_head(cfg.head, head_cfg).to(device)
    uses_conj = bool(getattr(head, "uses_conjugates", False))
    ids = split_ids(manifest, cfg.val_fraction, cfg.seed)
    train = data.load_split(store, ids["train"], cfg.stream, multilabel, uses_conj, "read train")
    val = data.load_split(store, ids["val"], cfg.stream, multilabel, False, "read val")
    test = data.load_split(store, ids["test"], cfg.stream, multilabel, False, "read test")
    if len(train) == 0:
        raise RuntimeError(f"{cfg.store}: no extracted {cfg.stream} maps in the train split")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if trainer == "lightgbm":
        history, selected = fit_lightgbm(head, train, val)
        hw = data.common_hw(train)
        head.save(out)
        n_params = head.n_params()
    else:
        history, selected, hw = fit_torch(cfg, head, train, val, multilabel, len(classes),
                                          device, rng)
        save_weights(out, head)
        n_params = sum(p.numel() for p in head.parameters())
    metrics: dict = {"history": history, "selected_epoch": selected, "n_train": len(train),
                     "n_val": len(val), "n_test": len(test), "n_params": n_params}
    if len(test):
        from vidattn.pipeline.evaluate import summarize

        scores = predict(head, test.maps, multilabel, device)
        metrics["test"] = summarize(scores, test.targets, classes, multilabel)
    metrics["seconds"] = round(time.time() - t0, 2)
    # the head's own (effective) config: variants such as actx-nosatt or cbam set fields
    config = {"head": cfg.head, "head_config": dataclasses.asdict(head.cfg),
              "train": dataclasses.asdict(cfg), "store": store.url, "classes": classes,
              "stream": cfg.stream, "multilabel": multilabel, "spatial": list(hw),
              "splits": {k: len(v) for k, v in ids.items()}}
    save_json(out, config, metrics)
    if history:
        plot_curves(history, out / "curves.png", cfg.head)
    return metrics


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in [k for k in history[0] if k.startswith("L_") or k in ("loss", "val_loss")]:
        ax.plot(epochs, [h[key] for h in history], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if "val_mAP" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(epochs, [h["val_mAP"] for h in history], "k--", label="val mAP")
        ax2.set_ylabel("val mAP")
        ax2.set_ylim(0, 1.02)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper center")
    ax.set_title(f"{title}: training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
