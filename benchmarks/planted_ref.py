"""The referring known-answer benchmark (``make bench``, stage "planted"): RefAtomNet on a
planted store (vidattn/datasets/planted_ref.py), beside the baselines it must beat.

Each referring head is trained by the command's own path (``pipeline.train.run``, the
head's defaults; ``EPOCHS`` bounds the time) and tested on the planted test split.  Beside
it: the sentence-blind linear probe and the box-oracle probe (compare's yardsticks), and
the training-set average box of each lane, given the referred person's true lane (a box
baseline that knows more than a sentence naming only a colour says).  mIoU is also given
per kind of sentence: by lane, by colour, by both.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

EPOCHS = 10
HEADS = ("refatomnet",)  # refatomnet-paper: README "Referring" (0.45 mIoU, 12 epochs)


def bench_planted(rows: list, device: str, heads=HEADS, epochs: int = EPOCHS) -> None:
    from vidattn.datasets.planted_ref import PlantedConfig, lane_average_boxes, write_store
    from vidattn.heads.refatomnet import box_iou
    from vidattn.pipeline.train import TrainConfig
    from vidattn.pipeline.train import run as train
    from vidattn.stores import open_store
    from vidattn.tasks.yardsticks import probe_rows

    tmp = Path(tempfile.mkdtemp())
    try:
        cfg = PlantedConfig()
        t0 = time.perf_counter()
        data = write_store(str(tmp / "store"), cfg)
        truth = data["rows"]
        test = truth[truth.split == "test"].reset_index(drop=True)
        what = (f"planted referring store ({cfg.n_train} + {cfg.n_test} scenes, "
                f"{len(truth)} rows, {cfg.steps}x{cfg.height}x{cfg.width}x{cfg.channels})")
        rows.append((what, f"{time.perf_counter() - t0:.1f} s", "written, no decoding"))
        gt = torch.tensor(np.stack(test.box.values), dtype=torch.float32)
        lane = box_iou(torch.from_numpy(lane_average_boxes(truth)).float(), gt)
        rows.append(("planted baseline: train-set average box of the true lane", "",
                     f"mIoU {lane.mean():.3f}" + _by_kind(lane.numpy(), test.kind.values)))
        for r in probe_rows(open_store(str(tmp / "store")), "rgb", "test", 0.5):
            rows.append((f"planted baseline: {r['method']}", "",
                         f"mAP {r['mAP']:.3f}, AUROC {r['AUROC']:.3f}"))
        for head in heads:
            out = tmp / head
            t0 = time.perf_counter()
            train(TrainConfig(head=head, store=str(tmp / "store"), out=str(out),
                              epochs=epochs, device=device))
            sec = time.perf_counter() - t0
            res, iou = _test(out, device, test)
            rows.append((f"planted: train {head} ({epochs} epochs, its defaults) and test",
                         f"{sec:.0f} s",
                         f"mIoU {res['mIoU']:.3f}{_by_kind(iou, test.kind.values)}, "
                         f"mAP {res['mAP']:.3f}, AUROC {res['AUROC']:.3f}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _test(run_dir: Path, device: str, test) -> tuple[dict, np.ndarray]:
    """The run's test summary (what ``vidattn evaluate`` computes: tasks.refer.summarize)
    and each test row's IoU in ``test``'s order, from one prediction pass."""
    from vidattn.data.dataset import labelled_ids
    from vidattn.heads.refatomnet import box_iou
    from vidattn.stores import open_store
    from vidattn.tasks import refer
    from vidattn.tasks.rundir import RunDir

    run = RunDir.open(str(run_dir))
    store = open_store(run.config["store"])
    ds = refer.dataset(store, labelled_ids(store.manifest(), "test"), run.config["stream"],
                       in_memory=True, min_score=run.config["det_min_score"])
    pred = refer.predict(run.load_head(device), ds, device)
    iou = box_iou(torch.from_numpy(pred.boxes), torch.from_numpy(ds.refer.boxes)).numpy()
    where = dict(zip(ds.ids, iou))
    return refer.summarize(pred, ds), np.array([where[v] for v in test.video_id])


def _by_kind(iou: np.ndarray, kinds: np.ndarray) -> str:
    parts = [f"{k} {iou[kinds == k].mean():.3f}" for k in ("position", "colour", "both")]
    return f" (by lane, colour, both: {', '.join(parts)})"
