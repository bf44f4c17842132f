"""The referring known answer on a planted store (vidattn/datasets/planted_ref.py): the
action's signature sits only in the referred person's box, the sentence names its lane
and/or colour.  RefAtomNet (small: d=64, N=8, one block, to keep the test short) must
find the action well above the sentence-blind linear probe and the box well above the
training-set average box of the referred lane.  ``make bench`` (stage "planted") runs the
full-size head on a 6x larger store; its figures are in BENCHMARKS.md and the README.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

AUROC_MARGIN = 0.10  # measured gap (small head): see the test's printout and the README
MIOU_MARGIN = 0.10


@pytest.mark.slow
def test_refatomnet_finds_the_referred_person_and_action(tmp_path):
    from vidattn.datasets.planted_ref import PlantedConfig, lane_average_boxes, write_store
    from vidattn.heads.refatomnet import box_iou
    from vidattn.pipeline.evaluate import EvaluateConfig
    from vidattn.pipeline.evaluate import run as evaluate
    from vidattn.pipeline.train import TrainConfig
    from vidattn.pipeline.train import run as train
    from vidattn.stores import open_store
    from vidattn.tasks.yardsticks import probe_rows

    data = write_store(str(tmp_path / "s"), PlantedConfig(n_train=240, n_test=80))
    truth = data["rows"]
    gt = torch.tensor(np.stack(truth[truth.split == "test"].box.values), dtype=torch.float32)
    lane = box_iou(torch.from_numpy(lane_average_boxes(truth)), gt).mean().item()
    blind = next(r for r in probe_rows(open_store(str(tmp_path / "s")), "rgb", "test", 0.5)
                 if "sentence-blind" in r["method"])["AUROC"]
    train(TrainConfig(head="refatomnet", store=str(tmp_path / "s"), out=str(tmp_path / "r"),
                      epochs=12, device="cpu",
                      options={"dim": "64", "n_tokens": "8", "n_blocks": "1"}))
    res = evaluate(EvaluateConfig(str(tmp_path / "r"), device="cpu"))
    print(f"refatomnet AUROC {res['AUROC']:.3f} mIoU {res['mIoU']:.3f}; blind probe AUROC "
          f"{blind:.3f}; lane-average box mIoU {lane:.3f}")
    assert res["AUROC"] >= blind + AUROC_MARGIN
    assert res["mIoU"] >= lane + MIOU_MARGIN
