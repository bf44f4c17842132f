"""The sample's known answer, on the default sample dataset (the slowest test file).

1. Under context shift, ActX beats average pooling.  The default sample's train split shows
   each class on its own background half of the time (chance: a quarter); the test split
   never does.  A head that pools the whole map learns the background and is misled on
   test; ActX, trained with the idle conjugates, attends to the moving actor.  Measured on a
   2-core CPU when this test was written (test mAP, seeds 0/1/2): ActX 0.68 / 0.49 / 0.60
   (mean 0.59), avgpool 0.43 / 0.37 / 0.34 (mean 0.38).
2. ActX's S puts more of its mass on the ground-truth actor boxes than attentional
   pooling's bottom-up map (pointing-game style share, reported by ``evaluate``).  Measured:
   ActX S 36% / 26% (seeds 0/1), attnpool bottom-up 20% / 18%, uniform attention 16%.
"""

from __future__ import annotations

import numpy as np
import pytest

from vidattn.pipeline.evaluate import EvaluateConfig
from vidattn.pipeline.evaluate import run as evaluate
from vidattn.pipeline.extract import ExtractConfig
from vidattn.pipeline.extract import run as extract
from vidattn.pipeline.train import TrainConfig
from vidattn.pipeline.train import run as train

SEEDS = (0, 1, 2)
# Mean test mAP over seeds must improve by at least this much: half the measured gap
# (0.21).  Seed-to-seed spread of one head is ~0.1 (24 test clips, 6 per class), so a
# 0.10 gain of the 3-seed mean is beyond noise yet leaves room for numeric drift.
MAP_MARGIN = 0.10
# Mean share of attention on the actor: ActX must beat attnpool's bottom-up map by 5 points
# (measured gap ~12 points) and uniform attention by as much.
LOC_MARGIN = 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[str]]:
    from vidattn.datasets.sample import ensure_sample

    tmp = tmp_path_factory.mktemp("known")
    root = ensure_sample(tmp / "sample")
    store = str(tmp / "store")
    assert not extract(ExtractConfig(root=str(root), store=store, device="cpu")).failures
    out: dict[str, list[str]] = {}
    for head in ("actx", "avgpool", "attnpool"):
        for seed in SEEDS:
            run_dir = str(tmp / f"{head}{seed}")
            train(TrainConfig(head=head, store=store, out=run_dir, seed=seed, device="cpu"))
            out.setdefault(head, []).append(run_dir)
    return out


def _evaluate(run_dirs: list[str]) -> list[dict]:
    return [evaluate(EvaluateConfig(r, device="cpu")) for r in run_dirs]


@pytest.mark.slow
def test_actx_beats_avgpool_under_context_shift(runs):
    actx = [r["mAP"] for r in _evaluate(runs["actx"])]
    avg = [r["mAP"] for r in _evaluate(runs["avgpool"])]
    print(f"test mAP over seeds {SEEDS}: actx {actx} avgpool {avg}")
    assert np.mean(actx) >= np.mean(avg) + MAP_MARGIN, (actx, avg)
    # and not by luck of one seed: ActX wins on the majority of seeds
    assert sum(a > b for a, b in zip(actx, avg)) >= 2, (actx, avg)


@pytest.mark.slow
def test_actx_attends_to_the_actor_more_than_attnpool(runs):
    actx = [r["localization"] for r in _evaluate(runs["actx"])]
    attn = [r["localization"] for r in _evaluate(runs["attnpool"])]
    assert {a["map"] for a in actx} == {"S"} and {a["map"] for a in attn} == {"bottom_up"}
    s_actx = np.mean([a["mass_share"] for a in actx])
    s_attn = np.mean([a["mass_share"] for a in attn])
    uniform = actx[0]["area"]
    print(f"attention on the actor: actx {s_actx:.3f} attnpool {s_attn:.3f} "
          f"uniform {uniform:.3f}")
    assert s_actx >= s_attn + LOC_MARGIN
    assert s_actx >= uniform + LOC_MARGIN
