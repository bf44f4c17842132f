"""``vidattn train-head``: train a head on cached maps and write its run directory.

The head's task (vidattn.tasks) is looked up once; the rest is the same for every head:
the split's clips as a :class:`~vidattn.data.dataset.StoreDataset`, the one fit loop
(random temporal crops, best validation epoch kept), the test split scored on whole maps.

Maps are read into memory when every split fits ``max_memory`` (``loader="auto"``),
otherwise streamed from the store one crop at a time by ``workers`` DataLoader processes;
both paths give the same batches, so the same run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidattn import tasks
from vidattn.cpus import usable_cores
from vidattn.data.dataset import protocol_ids
from vidattn.data.maps import StoreMaps, entries, nbytes
from vidattn.options import parse_options
from vidattn.registry import head_config_class, head_train_defaults, head_trainer
from vidattn.stores import open_store
from vidattn.stores.files import naming
from vidattn.stores.schema import ARRAYS
from vidattn.tasks.fit import PREFETCH, FitConfig, fit, fit_lightgbm, plot_curves
from vidattn.tasks.rundir import (
    RunDir,
    build_head,
    check_out,
    commit,
    pick_device,
    save_weights,
    staging,
)

LOADERS = ("auto", "memory", "stream")
# TrainConfig fields a head may set for itself (TRAIN in its module), and their values
# for heads that do not
HEAD_DEFAULTABLE = {"lr": 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    head: str = "actx"
    store: str = "stores/sample"
    out: str = "runs/actx"
    stream: str = "rgb"
    epochs: int = 40
    batch_size: int = 16
    lr: float | None = None  # None: the head's own (its module's TRAIN), else 1e-3
    weight_decay: float = 1e-4
    crop_t: int = 4  # temporal crop length in feature steps
    val_fraction: float = 0.25  # held out of train when the manifest has no val split
    seed: int = 0
    device: str = "auto"
    options: dict = field(default_factory=dict)  # head Config overrides, key -> str
    teacher: str | None = None  # run dir of a trained head of the same kind: W3's MFR, eq. 9
    mfr_weight: float = 1.0
    mfr_rms: bool = False  # MFR as an RMS (norm / sqrt(D*H*W)) instead of eq. 9's norm
    det_min_score: float = 0.5  # referring heads: person queries below it are masked
    loader: str = "auto"  # auto | memory | stream
    max_memory: str | None = None  # budget for maps held in memory (default: half the RAM)
    workers: int | None = None  # DataLoader processes when streaming (default: min(4, cores))
    overwrite: bool = False  # replace a finished run in ``out``
    # Conjugates of heads that use them: "pairs" (pairs.parquet), "around" (the clip's own
    # steps before/after each crop), "auto": as the dataset declares it at extraction
    conjugates: str = "auto"
    protocol: str | None = None  # the preset these values came from (vidattn.protocols)
    overrides: tuple[str, ...] = ()  # fields given explicitly over the preset's values


def with_protocol(name: str | None, **given) -> TrainConfig:
    """A TrainConfig from preset ``name`` (None: none) under the fields ``given``
    explicitly: the preset's train values and head options first, then every given field
    (head options ``given["options"]`` key by key).  Overrides are recorded."""
    if name is None:
        return TrainConfig(**given)
    from vidattn import protocols

    preset = protocols.get(name)
    head = given.get("head", preset.head)
    if head != preset.head:
        raise ValueError(f"protocol {name!r} is for head {preset.head!r}, not {head!r}")
    values = {k: s.value for k, s in preset.train.items()}
    options = {k: str(s.value) for k, s in preset.options.items()}
    user_options = dict(given.pop("options", {}) or {})
    overrides = [k for k in given if k in values and given[k] != values[k]]
    overrides += [f"-o {k}" for k in user_options if k in options
                  and user_options[k] != options[k]]
    return TrainConfig(**{**values, **given, "head": head, "protocol": name,
                          "options": {**options, **user_options},
                          "overrides": tuple(overrides)})


def with_head_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the fields left None filled: the head's own value (its module's TRAIN,
    e.g. RefAtomNet's paper lr 1e-4), else vidattn's (HEAD_DEFAULTABLE)."""
    own = head_train_defaults(cfg.head)
    if set(own) - set(HEAD_DEFAULTABLE):
        raise ValueError(f"head {cfg.head!r} declares training values vidattn does not take "
                         f"from a head: {sorted(set(own) - set(HEAD_DEFAULTABLE))}")
    filled = {k: own.get(k, v) for k, v in HEAD_DEFAULTABLE.items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **filled)


def parse_size(text: str | int | None) -> int:
    """"8GiB", "500M", "2e9" or an int -> bytes; None -> half of this machine's memory."""
    if text is None:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", str(text))
    if not m:
        raise ValueError(f"--max-memory: cannot read {text!r} as a size (e.g. 8GiB, 500M)")
    base = 1024 if m.group(3) or m.group(2) else 1000
    power = " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * base**power)


def choose_loader(cfg: TrainConfig, store, ids: dict[str, list[str]],
                  conjugates: bool) -> dict:
    """Memory or streaming, and how many reader processes: what the run directory records.

    Maps are held when all of them fit the budget.  Streaming holds none, only batches in
    flight: about ``batch bytes x (3 + workers x (PREFETCH + 2))`` (each worker builds one,
    queues PREFETCH; the main process has one as received and as float32).  Unless
    ``workers`` is given, it starts from min(4, cores) and takes fewer while that exceeds
    the budget (at least one).
    """
    if cfg.loader not in LOADERS:
        raise ValueError(f"--loader must be one of {', '.join(LOADERS)}, got {cfg.loader!r}")
    budget = parse_size(cfg.max_memory)
    wanted = [v for split in ids.values() for v in split]
    pairs = store.pairs()  # conjugates are read too, by the heads that use them
    wanted += list(pairs.loc[pairs.video_id.isin(set(ids["train"])), "conjugate_id"])
    maps = StoreMaps(store.url, cfg.stream, entries(store, cfg.stream, wanted),
                     ARRAYS[cfg.stream].channels)
    need = nbytes(maps, wanted)
    mode = cfg.loader if cfg.loader != "auto" else ("memory" if need <= budget else "stream")
    cells = max((e.h * e.w for e in maps.where.values()), default=0)
    batch = 2 * maps.channels * cfg.crop_t * cells * cfg.batch_size * (2 if conjugates else 1)

    def in_flight(w: int) -> int:
        return batch * (3 + w * (PREFETCH + 2)) if w else batch * 2

    workers = cfg.workers
    if workers is None:
        workers = 0
        if mode == "stream":
            workers = min(4, usable_cores())  # the allocation's cores, not the node's
            while workers > 1 and in_flight(workers) > budget:
                workers -= 1
    return {"mode": mode, "workers": workers, "maps_bytes": int(need), "budget_bytes": budget,
            "batch_bytes": int(batch), "in_flight_bytes": int(in_flight(workers))}


def load_teacher(cfg: TrainConfig, device: str):
    """A frozen teacher run for MFR: same head kind, and a head that exposes "attended"."""
    if cfg.teacher is None:
        return None
    run = RunDir.open(cfg.teacher)
    if run.head_name != cfg.head:
        raise ValueError(f"{cfg.teacher}: teacher is a {run.head_name!r} run; MFR needs the "
                         f"same architecture as the student ({cfg.head!r})")
    teacher = run.load_head(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class TrainingWarning(UserWarning):
    """Training ran, but what it can mean is limited (printed by the CLI, kept in
    metrics.json under "warnings")."""


def check_data(task, head, train, val, test, store_url: str) -> list[str]:
    """Refuse data that cannot train anything; -> warnings for data that limits what the
    run means (each also issued as a :class:`TrainingWarning`)."""

    def present(ds) -> set[int]:
        t = ds.targets
        return set(np.flatnonzero((t > 0.5).any(0))) if t.ndim == 2 else set(t[t >= 0].tolist())

    classes = train.classes
    seen = present(train)
    if len(seen) < 2:
        names = ", ".join(classes[k] for k in sorted(seen)) or "none"
        raise ValueError(f"{store_url}: the train split has {len(seen)} class ({names}); "
                         f"a classifier needs at least 2 to learn anything")
    out = []
    unseen = sorted(present(test) - seen)
    if unseen:
        out.append(f"test classes never seen in training: {', '.join(classes[k] for k in unseen)}"
                   f" (their AP measures nothing learnt)")
    if not len(val):
        out.append("no validation rows: the epoch with the lowest training loss is kept")
    if getattr(head, "uses_conjugates", False):
        n = sum(1 for c in train.conjugates if c)
        if n == 0:
            out.append(f"{task.NAME} head uses conjugates but no train clip has one in "
                       f"{store_url} (no pairs.parquet rows): it trains on L_c alone; "
                       f"run vidattn mine-conjugates first")
        elif n < len(train):
            out.append(f"{len(train) - n} of {len(train)} train clips have no conjugate: "
                       f"they train on L_c alone")
    for message in out:
        warnings.warn(message, TrainingWarning, stacklevel=3)
    return out


def conjugate_mode(cfg: TrainConfig, store) -> str:
    """"pairs" or "around" for a head that uses conjugates (``cfg.conjugates``; auto: as
    the store's dataset declares it, pairs for stores that declare nothing)."""
    if cfg.conjugates not in ("auto", "pairs", "around"):
        raise ValueError(f"conjugates must be auto, pairs or around, got {cfg.conjugates!r}")
    if cfg.conjugates != "auto":
        return cfg.conjugates
    return store.group.attrs.get("dataset", {}).get("conjugates") or "pairs"


def check_protocol(cfg: TrainConfig, store) -> list[str]:
    """Warnings where the store's maps differ from what the preset's paper used."""
    if cfg.protocol is None:
        return []
    from vidattn import protocols

    preset = protocols.get(cfg.protocol)
    out = []
    dataset = store.group.attrs.get("dataset", {}).get("name")
    if dataset not in (None, preset.dataset):
        out.append(f"protocol {preset.name} is for {preset.dataset}; this store holds "
                   f"{dataset}")
    prep = (store.provenance(cfg.stream) or {}).get("preprocessing", {})
    for key, setting in preset.extract.items():
        want = None if setting.value == "full" else setting.value
        if key in prep and prep[key] != want:
            out.append(f"protocol {preset.name}: the store's maps were extracted with {key}="
                       f"{prep[key]}, the paper's with {setting.value} ({setting.source})")
    for message in out:
        warnings.warn(message, TrainingWarning, stacklevel=2)
    return out


def run(cfg: TrainConfig) -> dict:
    """Train, select, test; write the run directory (into a hidden directory renamed into
    place at the end); return the metrics dict.  ``cfg.out`` holding a run is refused
    unless ``cfg.overwrite``.  A SIGINT after the first epoch keeps the best epoch so far:
    the run is written with "interrupted": true (and no test metrics)."""
    t0 = time.time()
    cfg = with_head_defaults(cfg)
    task = tasks.for_head(cfg.head)
    check_out(cfg.out, cfg.overwrite)  # before any work
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    store = open_store(cfg.store)
    if cfg.stream not in ARRAYS:
        raise ValueError(f"unknown stream {cfg.stream!r}; the store's arrays: "
                         f"{', '.join(ARRAYS)}")
    head_cfg = parse_options(head_config_class(cfg.head), cfg.options,
                             **task.head_fields(store, cfg.stream))
    head = build_head(cfg.head, head_cfg).to(device)
    ids, roles = protocol_ids(store.manifest(), cfg.val_fraction, cfg.seed)
    conjugates = conjugate_mode(cfg, store) if getattr(head, "uses_conjugates", False) else False
    how = choose_loader(cfg, store, ids, bool(conjugates))
    common = {"in_memory": how["mode"] == "memory", "min_score": cfg.det_min_score}
    train = task.dataset(store, ids["train"], cfg.stream, crop_t=cfg.crop_t, desc="read train",
                         conjugates=conjugates, **common)
    val = task.dataset(store, ids["val"], cfg.stream, desc="read val", **common)
    test = task.dataset(store, ids["test"], cfg.stream, desc="read test", **common)
    if len(train) == 0:
        raise RuntimeError(f"{cfg.store}: no train rows with extracted {cfg.stream} maps"
                           + (" and referring streams" if task.NAME == "refer" else ""))
    found = check_data(task, head, train, val, test, store.url) + check_protocol(cfg, store)
    out = staging(cfg.out, cfg.overwrite)
    try:
        metrics = _train_and_write(cfg, task, head, store, ids, how, (train, val, test), device,
                                   rng, out, {"warnings": found, "t0": t0, "roles": roles,
                                              "conjugates": conjugates})
        commit(out, cfg.out)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # gone already once committed
    return metrics


def _train_and_write(cfg: TrainConfig, task, head, store, ids, how, splits, device: str, rng,
                     out: Path, extra: dict) -> dict:
    """Fit, test and write the run into ``out`` -> metrics.  extra: the data warnings and
    the run's start time."""
    train, val, test = splits
    interrupted = False
    if head_trainer(cfg.head) == "lightgbm":  # trees on pooled maps: LightGBM's own loop
        history, selected = fit_lightgbm(head, train, val, how["workers"])
        with naming(out / "model.txt"):
            head.save(out)
        n_params = head.n_params()
    else:
        teacher = load_teacher(cfg, device)
        if teacher is not None:
            with torch.no_grad():  # eval mode: the probe must not draw dropout randomness
                probe = train.collate([train[0]])["fmap"][:1].to(device)
                if "attended" not in head.eval()(probe):
                    raise ValueError(f"head {cfg.head!r} has no attended map for MFR (--teacher)")
        fit_cfg = FitConfig(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, how["workers"],
                            cfg.mfr_weight, cfg.mfr_rms)
        result = fit(head, task, train, val, fit_cfg, device, rng, teacher, cfg.head)
        history, selected, interrupted = result.history, result.selected, result.interrupted
        save_weights(out, head)
        n_params = sum(p.numel() for p in head.parameters())
    metrics: dict = {"history": history, "selected_epoch": selected, "n_train": len(train),
                     "n_val": len(val), "n_test": len(test), "n_params": n_params,
                     **extra["roles"]}
    if interrupted:  # the best epoch so far, not tested: evaluate says so
        metrics.update(interrupted=True, epochs_run=len(history))
    elif len(test):
        metrics["test"] = task.summarize(task.predict(head, test, device, how["workers"]), test)
    metrics.update(warnings=extra["warnings"], seconds=round(time.time() - extra["t0"], 2))
    # the head's own (effective) config: variants such as actx-nosatt or cbam set fields
    config = {"task": task.NAME, "head": cfg.head, "head_config": dataclasses.asdict(head.cfg),
              "train": dataclasses.asdict(cfg), "store": store.url, "classes": store.classes,
              "stream": cfg.stream, "multilabel": train.multilabel,
              "spatial": list(train.hw or ()), "loader": how,
              "splits": {k: len(v) for k, v in ids.items()}, **extra["roles"],
              "conjugates": extra["conjugates"] or None, **task.run_fields(store, train)}
    if cfg.protocol is not None:
        from vidattn import protocols

        config["protocol"] = {"name": cfg.protocol, "overrides": list(cfg.overrides),
                              **protocols.get(cfg.protocol).values()}
    if interrupted:
        config["interrupted"] = True
    RunDir.write(out, config, metrics)
    if history:
        with naming(out / "curves.png"):
            plot_curves(history, out / "curves.png", cfg.head)
    return metrics
